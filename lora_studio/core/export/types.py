"""The plain data of an export: formats, the source, progress events, the plan and the report.

Kept apart from ``export.py`` so the GUI can import these types (and show a plan, a progress bar
and a report) without the export machinery; nothing here imports a heavy library.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lora_studio.core.errors import LoraStudioError
from lora_studio.core.export.verify import Verification

FORMATS = ("adapter", "merged", "gguf", "gguf-adapter", "modelfile")
DTYPES = ("auto", "bf16", "fp16", "fp32")
#: GGUF file types, the usual choice first: llama.cpp's names, lower case (``quant_mix.FILE_TYPES``).
QUANTS = ("q4_k_m", "q5_k_m", "q6_k", "q8_0", "f16", "bf16", "q5_0", "q4_0")
DEFAULT_QUANT = "q4_k_m"
#: who checks GGUF files: llama.cpp when installed and working, else transformers ("auto")
VERIFIERS = ("auto", "llama.cpp", "transformers")
DEFAULT_SHARD_BYTES = 2 * 1024**3
STAGING_PREFIX = ".lora-studio-export-"


class ExportError(LoraStudioError):
    """An export cannot start or did not finish; says what was (not) written."""


class TargetsExistError(ExportError):
    """The output folder already holds what would be written: a refusal, not a failure — the GUI
    answers it with its Overwrite box, the CLI with ``--overwrite``."""


@dataclass(frozen=True)
class ExportSource:
    """What is exported: a PEFT adapter folder, the base model it belongs to, and its run (if any)."""

    adapter_dir: Path
    base_model: str
    name: str
    run_dir: Path | None = None
    checkpoint_step: int | None = None
    trust_remote_code: bool = False


@dataclass(frozen=True)
class ExportProgress:
    """One step of an export, for a progress bar and a log line."""

    stage: str  # "plan" | "load" | "merge" | "write" | "verify" | "done"
    message: str
    format: str | None = None
    done: int = 0
    total: int = 0

    @property
    def fraction(self) -> float | None:
        return self.done / self.total if self.total else None


@dataclass
class FormatResult:
    format: str
    path: str
    size_bytes: int
    seconds: float
    notes: list[str] = field(default_factory=list)
    verification: Verification | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["verification"] = self.verification.to_dict() if self.verification else None
        return data


@dataclass(frozen=True)
class GGUFChoice:
    """One GGUF file type as the Export page offers it: what it costs on disk and to run."""

    quant: str  # "q4_k_m"
    label: str  # "Q4_K_M"
    file_bytes: int
    run_bytes: int  # weights + KV cache for ``context`` tokens + llama.cpp's compute buffers
    context: int
    bits_per_weight: float
    storage: dict[str, int] = field(default_factory=dict)  # storage type → number of tensors
    note: str = ""  # e.g. how many matrices fall back to a 32-element type, and why

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ExportPlan:
    """Everything decided before writing: targets, sizes, memory; refusals are raised while planning."""

    source: ExportSource
    formats: list[str]
    out_dir: Path
    dtype: str
    quants: list[str]
    targets: dict[str, list[Path]]
    base_path: Path
    base_kind: str
    base_name: str
    disk_needed: int
    disk_free: int
    peak_memory: int
    memory_available: int
    overwrite: bool = False
    warnings: list[str] = field(default_factory=list)
    gguf_choices: list[GGUFChoice] = field(default_factory=list)  # every type, when GGUF is possible

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["source"] = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self.source).items()}
        data["targets"] = {k: [str(p) for p in v] for k, v in self.targets.items()}
        data["out_dir"], data["base_path"] = str(self.out_dir), str(self.base_path)
        return data


@dataclass
class ExportReport:
    status: str  # "completed" | "cancelled"
    plan: ExportPlan
    results: list[FormatResult]
    seconds: float
    warnings: list[str] = field(default_factory=list)

    @property
    def verified(self) -> bool | None:
        """True when every export was verified and passed; None when nothing was verified."""
        checks = [r.verification for r in self.results if r.verification is not None]
        return all(v.passed for v in checks) if checks else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "verified": self.verified,
            "seconds": round(self.seconds, 2),
            "plan": self.plan.to_dict(),
            "results": [r.to_dict() for r in self.results],
            "warnings": self.warnings,
        }
