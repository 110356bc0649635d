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
QUANTS = ("f16", "bf16", "q8_0")
DEFAULT_SHARD_BYTES = 2 * 1024**3
STAGING_PREFIX = ".lora-studio-export-"


class ExportError(LoraStudioError):
    """An export cannot start or did not finish; says what was (not) written."""


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
