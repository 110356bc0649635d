"""System check: can this machine train, and if not, what exactly to do about it.

Each check returns one line — ok, warning or problem — with the fix to apply. The CLI prints them
(``lora-studio doctor``) and the GUI shows the same lines in its System check dialog; a problem
means training cannot work here (the command's exit code is then non-zero).
"""

from __future__ import annotations

import platform
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from lora_studio.core.paths import cache_dir, runs_dir

OK, WARNING, PROBLEM = "ok", "warning", "problem"
GIB = 1024**3


@dataclass(frozen=True)
class Check:
    name: str
    status: str
    detail: str
    fix: str = ""

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def run_checks(progress: Callable[[Check], None] | None = None) -> list[Check]:
    """All checks in order; a check that crashes is itself reported, never raised."""
    results = []
    for check in (
        _python,
        _torch,
        _gpus,
        _bf16,
        _bitsandbytes,
        _libraries,
        _display,
        _disk,
        _default_model,
        _llama_cpp,
    ):
        try:
            found = check()
        except Exception as exc:  # a broken install must still produce a report
            found = [
                Check(
                    check.__name__.strip("_"),
                    PROBLEM,
                    f"check failed: {type(exc).__name__}: {exc}",
                    "reinstall the environment: make clean-venv && make run",
                )
            ]
        for item in found:
            results.append(item)
            if progress:
                progress(item)
    return results


def can_train(results: list[Check]) -> bool:
    return all(r.status != PROBLEM for r in results)


def _python() -> list[Check]:
    version = platform.python_version()
    return [Check("Python", OK, f"{version} ({sys.executable})")]


def _nvidia_driver() -> str | None:
    try:
        import pynvml

        pynvml.nvmlInit()
        version = pynvml.nvmlSystemGetDriverVersion()
        return version.decode() if isinstance(version, bytes) else str(version)
    except Exception:
        pass
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=20,
            )
            if out.returncode == 0 and out.stdout.strip():
                return out.stdout.strip().splitlines()[0]
        except (OSError, subprocess.TimeoutExpired):
            return None
    return None


def _torch() -> list[Check]:
    import torch

    build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU-only build"
    driver = _nvidia_driver()
    if driver and not torch.cuda.is_available():
        return [
            Check(
                "torch",
                PROBLEM if not torch.version.cuda else WARNING,
                f"{torch.__version__} ({build}) cannot use the NVIDIA GPU (driver {driver})",
                "reinstall a CUDA build: make clean-venv && make "
                "TORCH_INDEX='--index-url https://download.pytorch.org/whl/cu128' run "
                "(use cu126 for drivers older than 570)",
            )
        ]
    return [Check("torch", OK, f"{torch.__version__} ({build})")]


def _gpus() -> list[Check]:
    import torch

    if not torch.cuda.is_available():
        return [
            Check(
                "GPU",
                WARNING,
                "no CUDA GPU: training runs on the CPU (fine for small models, slow)",
                "for real models use a machine with an NVIDIA GPU and a CUDA build of torch",
            )
        ]
    driver = _nvidia_driver() or "unknown"
    checks = []
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        detail = (
            f"#{index} {props.name}, {props.total_memory / GIB:.1f} GB, compute capability "
            f"{props.major}.{props.minor}, driver {driver}"
        )
        if props.major < 7:
            checks.append(Check("GPU", WARNING, detail, "bitsandbytes 4-bit needs compute capability 7.0+"))
        else:
            checks.append(Check("GPU", OK, detail))
    return checks


def _bf16() -> list[Check]:
    import torch

    if torch.cuda.is_available():
        if torch.cuda.is_bf16_supported():
            return [Check("bf16", OK, "supported: 'auto' precision trains in bf16")]
        return [
            Check(
                "bf16",
                WARNING,
                "not supported by this GPU: 'auto' uses fp16 with loss scaling",
                "prefer fp32 adapters and a lower learning rate if the loss turns NaN",
            )
        ]
    return [Check("bf16", OK, "CPU: 'auto' precision trains in fp32")]


def _bitsandbytes() -> list[Check]:
    import torch

    from lora_studio.core.models import import_bitsandbytes

    try:
        bnb = import_bitsandbytes()
    except Exception as exc:
        return [
            Check(
                "bitsandbytes",
                PROBLEM,
                f"cannot be imported ({exc})",
                "quantized training (QLoRA) is unavailable; reinstall with pip install -U bitsandbytes",
            )
        ]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    results = []
    torch.manual_seed(0)
    weight = torch.randn(64, 64, dtype=dtype, device=device)
    x = torch.randn(4, 64, dtype=dtype, device=device)
    reference = x @ weight.t()
    for kind in ("nf4", "int8"):
        try:
            if kind == "nf4":
                layer = bnb.nn.Linear4bit(64, 64, bias=False, compute_dtype=dtype, quant_type="nf4")
                layer.weight = bnb.nn.Params4bit(weight.cpu(), requires_grad=False, quant_type="nf4")
            else:
                layer = bnb.nn.Linear8bitLt(64, 64, bias=False, has_fp16_weights=False, threshold=0.0)
                layer.weight = bnb.nn.Int8Params(weight.cpu(), requires_grad=False, has_fp16_weights=False)
            layer = layer.to(device)
            out = layer(x).float()
            error = (out - reference.float()).abs().mean() / reference.float().abs().mean()
            status = OK if error < 0.2 else PROBLEM
            detail = f"{bnb.__version__}: quantize + matmul on {device}, relative error {error:.3f}"
            if kind == "nf4" and device == "cpu":
                detail += _cpu_4bit_kernel()
            results.append(
                Check(
                    f"bitsandbytes {kind}",
                    status,
                    detail,
                    "" if status == OK else "results are wrong: update bitsandbytes",
                )
            )
        except Exception as exc:
            results.append(
                Check(
                    f"bitsandbytes {kind}",
                    PROBLEM,
                    f"quantize + matmul on {device} failed: {exc}",
                    "use quantization 'none', or reinstall bitsandbytes for this platform",
                )
            )
    return results


def _cpu_4bit_kernel() -> str:
    """What 4-bit inference runs on this CPU, and what the optional ``kernels`` package would add.

    bitsandbytes asks ``kernels`` at every import (and logs a warning the app drops when it is
    missing), so users ask whether to install it. It only matters on a CPU with AVX512-BF16, for
    4-bit inference (chat, samples, evaluation; training never takes that path): it downloads a
    torch-linked build of bitsandbytes' own fused 4-bit matmul from the Hugging Face Hub at each
    start, whose brgemm path is faster on many-token inputs (prompts). Not needed, so not a warning.
    """
    import importlib.util

    try:
        from bitsandbytes.functional import has_avx512bf16

        fused = bool(has_avx512bf16())
    except Exception:  # an older bitsandbytes: nothing to say
        return ""
    if not fused:
        return (
            "; no AVX512-BF16, so 4-bit inference dequantizes each layer; the optional `kernels` "
            "package would not change that"
        )
    if importlib.util.find_spec("kernels") is not None:
        return (
            "; AVX512-BF16 fused 4-bit kernel; `kernels` is installed, so bitsandbytes downloads its "
            "build of that kernel from the Hugging Face Hub at each start (its own when that fails: "
            "offline, or a CUDA build of torch)"
        )
    return (
        "; AVX512-BF16 fused 4-bit kernel for chat and evaluation. The optional `kernels` package "
        "(PyPI) would download a torch-linked build of it from the Hugging Face Hub at each start, "
        "faster on long prompts; not needed, training is unaffected"
    )


def _libraries() -> list[Check]:
    from importlib.metadata import PackageNotFoundError, version

    found = []
    for name in ("transformers", "peft", "accelerate", "datasets", "PySide6-Essentials"):
        try:
            found.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            return [
                Check(
                    "libraries", PROBLEM, f"{name} is not installed", "run `make run` to install everything"
                )
            ]
    return [Check("libraries", OK, ", ".join(found))]


def _display() -> list[Check]:
    """Whether the window can open here; a warning, never a problem: the command line trains without it."""
    from lora_studio.core.display_check import NO_DISPLAY, check_display

    found = check_display()
    if found.ok:
        return [Check("display", OK, found.detail)]
    if found.problem == NO_DISPLAY:
        return [Check("display", WARNING, f"{found.detail}: the window cannot open here", found.fix)]
    detail = f"{found.detail}: the window cannot open (the command line works)"
    return [Check("display", WARNING, detail, found.fix)]


def _disk() -> list[Check]:
    results = []
    for label, folder in (("cache folder", cache_dir()), ("runs folder", runs_dir())):
        probe = _existing_parent(folder)
        free = shutil.disk_usage(probe).free
        detail = f"{folder}: {free / GIB:.1f} GB free"
        if free < 1 * GIB:
            results.append(
                Check(label, PROBLEM, detail, "free disk space; checkpoints and models need gigabytes")
            )
        elif free < 10 * GIB:
            results.append(Check(label, WARNING, detail, "larger models and merged exports need 10+ GB"))
        else:
            results.append(Check(label, OK, detail))
    return results


def _existing_parent(path: Path) -> Path:
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


def _default_model() -> list[Check]:
    from lora_studio.core.errors import ModelSourceError
    from lora_studio.core.models import converted_gguf_folder, default_model_gguf

    try:
        gguf = default_model_gguf()
    except ModelSourceError as exc:
        return [Check("default model", PROBLEM, exc.message, exc.hint or "")]
    converted = converted_gguf_folder(gguf)
    if (converted / "lora_studio_source.json").is_file():
        return [Check("default model", OK, f"SmolLM2-135M-Instruct ready ({converted})")]
    return [
        Check(
            "default model",
            OK,
            f"SmolLM2-135M-Instruct installed ({gguf.name}); converted on first use (about 30 s, once)",
        )
    ]


def _llama_cpp() -> list[Check]:
    """The optional llama.cpp verifier: loaded in a child process, on the default model's GGUF."""
    import re

    from lora_studio.core import llamacpp

    if llamacpp.disabled():
        return [
            Check(
                "llama.cpp",
                OK,
                "turned off (LORA_STUDIO_LLAMA_CPP): GGUF exports are checked by transformers",
            )
        ]
    if not llamacpp.installed():
        return [
            Check(
                "llama.cpp",
                OK,
                "not installed (optional): GGUF exports are checked with transformers' GGUF reader",
                llamacpp.INSTALL_HINT,
            )
        ]
    from lora_studio.core.errors import ModelSourceError
    from lora_studio.core.models import default_model_gguf

    try:
        model: str | None = str(default_model_gguf())
    except ModelSourceError:  # no default model (its own line says so): import llama.cpp, load nothing
        model = None
    found = llamacpp.status(model)
    if not found.working:
        return [
            Check("llama.cpp", WARNING, found.line(), "GGUF exports fall back to transformers' GGUF reader")
        ]
    features = re.findall(r"(\w+) = 1", found.detail)
    what = "loaded the default model" if model else "imported"
    cpu = f"; CPU features {', '.join(features)}" if features else ""
    return [
        Check(
            "llama.cpp",
            OK,
            f"llama-cpp-python {found.version} {what}: GGUF exports are checked by llama.cpp{cpu}",
        )
    ]
