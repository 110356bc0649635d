"""One memory sampler for the whole app: CUDA allocator, device totals (NVML when present), host RAM.

Sampling is cheap (no device synchronisation) and happens only at logging intervals. The CUDA
peak is reset after each sample, so ``cuda_peak`` is the peak *within* the last interval — what
a live plot of memory should show.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any

GIB = 1024**3


@dataclass(frozen=True)
class DeviceSummary:
    """What the status bar shows: the accelerator, or that there is none."""

    kind: str  # "cuda" | "cpu"
    name: str
    total_bytes: int | None
    compute_capability: str | None = None
    bf16: bool = False

    def describe(self) -> str:
        if self.kind == "cpu":
            return "CPU only"
        return f"{self.name} · {self.total_bytes / GIB:.1f} GB" if self.total_bytes else self.name

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def device_summary() -> DeviceSummary:
    import torch

    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        return DeviceSummary(
            kind="cuda",
            name=props.name,
            total_bytes=int(props.total_memory),
            compute_capability=f"{props.major}.{props.minor}",
            bf16=bool(torch.cuda.is_bf16_supported()),
        )
    import platform

    return DeviceSummary(kind="cpu", name=platform.processor() or platform.machine(), total_bytes=None)


class MemorySampler:
    """Samples memory as a flat dict of bytes (keys absent when not applicable)."""

    def __init__(self, device: str = "cpu") -> None:
        import psutil

        self._process = psutil.Process(os.getpid())
        self._psutil = psutil
        self._cuda = device.startswith("cuda")
        self._nvml_handle = None
        self.peak_rss = 0
        self.peak_cuda_reserved = 0
        if self._cuda:
            self._nvml_handle = _nvml_handle()

    def sample(self) -> dict[str, int]:
        rss = int(self._process.memory_info().rss)
        vm = self._psutil.virtual_memory()
        self.peak_rss = max(self.peak_rss, rss)
        out = {"rss": rss, "ram_used": int(vm.total - vm.available), "ram_total": int(vm.total)}
        if self._cuda:
            import torch

            out["cuda_allocated"] = int(torch.cuda.memory_allocated())
            out["cuda_reserved"] = int(torch.cuda.memory_reserved())
            out["cuda_peak"] = int(torch.cuda.max_memory_allocated())
            self.peak_cuda_reserved = max(self.peak_cuda_reserved, int(torch.cuda.max_memory_reserved()))
            torch.cuda.reset_peak_memory_stats()
            used_total = _nvml_used_total(self._nvml_handle)
            if used_total is None:
                free, total = torch.cuda.mem_get_info()
                used_total = (int(total - free), int(total))
            out["device_used"], out["device_total"] = used_total
        return out

    def peaks(self) -> dict[str, int]:
        peaks = {"rss": self.peak_rss}
        if self._cuda:
            peaks["cuda_reserved"] = self.peak_cuda_reserved
        return peaks


def _nvml_handle() -> Any:
    try:
        import pynvml

        pynvml.nvmlInit()
        import torch

        index = torch.cuda.current_device()
        return pynvml.nvmlDeviceGetHandleByIndex(index)
    except Exception:  # NVML missing or unusable: fall back to torch.cuda.mem_get_info
        return None


def _nvml_used_total(handle: Any) -> tuple[int, int] | None:
    if handle is None:
        return None
    try:
        import pynvml

        info = pynvml.nvmlDeviceGetMemoryInfo(handle)
        return int(info.used), int(info.total)
    except Exception:
        return None
