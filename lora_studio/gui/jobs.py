"""The work pages hand to background tasks: plain functions, run off the GUI thread, no widgets.

They import torch/transformers lazily (inside the functions) so nothing heavy happens before the
window is on screen, and they cache what is slow to build and safe to share (resolved model
folders, tokenizers) so a dataset preview after an edit takes milliseconds, not seconds.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lora_studio.core.config import DataSection
from lora_studio.core.errors import DatasetError, LoraStudioError

_LOCK = threading.Lock()  # one model resolution/conversion at a time (the first one converts GGUF)
_IMPORT_LOCK = threading.Lock()
_TOKENIZERS: dict[tuple[str, bool], Any] = {}

#: How many located dataset problems the Data page lists (the rest are counted).
MAX_ERRORS = 200


def ensure_libraries() -> None:
    """Import torch and transformers' main classes once, one thread at a time.

    transformers resolves its attributes lazily; two threads resolving them at the same moment can
    see a half-initialised module ("cannot import name 'AutoConfig'"). Every job calls this first.
    """
    global _frozen
    from lora_studio.core.models import silence_kernels_notice

    silence_kernels_notice()  # peft imports bitsandbytes below, which may warn about `kernels`
    with _IMPORT_LOCK:
        import torch  # noqa: F401
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer  # noqa: F401

        if not _frozen:
            _freeze_library_objects()
            _frozen = True


_frozen = False


def _freeze_library_objects() -> None:
    """Move what the libraries' import made (modules, classes, functions: most of the heap) out of
    the cycle collector's sight, once.

    The engine and export free a model held in reference cycles with ``gc.collect()`` in their
    worker thread; a full collection holds the GIL for as long as it walks every tracked object —
    300 ms with torch, transformers and peft loaded — and the window froze that long at the end of
    every run (``bench/gui_responsiveness.py``: 290 ms → 3 ms). Frozen objects are never collected;
    the import-time objects live for the whole process anyway. No collection first: it would itself
    hold the GIL that long, and the little garbage of start-up is not worth it.
    """
    import gc

    import peft  # noqa: F401
    from transformers import Trainer  # noqa: F401

    gc.freeze()


@dataclass
class ModelFacts:
    info: Any  # core.models.ModelInfo
    linear_modules: list[str]


def model_facts(source: str, *, trust_remote_code: bool = False, allow_pickle: bool = False) -> ModelFacts:
    """Model info from the config alone, plus the linear layer names LoRA can target."""
    from lora_studio.core.models import load_config, meta_model, model_info
    from lora_studio.core.train import linear_module_names

    ensure_libraries()
    with _LOCK:
        info = model_info(source, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)
    config = load_config(Path(info.path), trust_remote_code=trust_remote_code)
    names = sorted(linear_module_names(meta_model(config, trust_remote_code=trust_remote_code)))
    return ModelFacts(info, names)


def tokenizer_for(source: str, *, trust_remote_code: bool = False) -> Any:
    from lora_studio.core.models import load_tokenizer, resolve_model

    ensure_libraries()
    with _LOCK:
        path = resolve_model(source).path
        key = (str(path), trust_remote_code)
        if key not in _TOKENIZERS:
            _TOKENIZERS[key] = load_tokenizer(path, trust_remote_code=trust_remote_code)
        return _TOKENIZERS[key]


def cached_hub_models() -> list[str]:
    """Hub ids of models already in the local Hugging Face cache (LoRA Studio never downloads)."""
    try:
        from huggingface_hub import scan_cache_dir

        info = scan_cache_dir()
    except Exception:  # no cache folder yet, or an unreadable one: nothing to offer
        return []
    return sorted(repo.repo_id for repo in info.repos if repo.repo_type == "model")


def device_summary() -> Any:
    from lora_studio.core.train import device_summary as summary

    ensure_libraries()
    return summary()


@dataclass
class DataOverview:
    """Everything the Data page shows about one data section with one tokenizer."""

    stats: Any = None  # core.data.DatasetStats
    examples: list[Any] = field(default_factory=list)  # core.data.PreviewExample
    error: LoraStudioError | None = None  # what stops training on this data
    problems: list[DatasetError] = field(default_factory=list)  # every located record problem
    problem_count: int = 0
    evidence: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    format: str = ""
    records: int = 0
    columns: list[str] = field(default_factory=list)
    preference: Any = None  # core.data.preference_preview.PreferenceInspection for preference data
    speakers: dict[str, dict[str, Any]] = field(default_factory=dict)  # names with no known role
    labels: dict[str, int] = field(default_factory=dict)  # records labelled true / false


def data_overview(
    data: DataSection,
    model_source: str,
    *,
    seed: int = 42,
    trust_remote_code: bool = False,
    cancel: threading.Event | None = None,
    preview_count: int = 8,
    method: str = "sft",
) -> DataOverview:
    """Tokenize the dataset as training would (stats + preview), or list where it is broken."""
    from lora_studio.core.data import (
        load_conversations,
        prepare_dataset,
        preview_conversations,
        scan_conversations,
    )
    from lora_studio.core.data.preference_preview import inspect_preferences, is_preference_data

    overview = DataOverview(columns=_columns(data))
    tokenizer = tokenizer_for(model_source, trust_remote_code=trust_remote_code)
    if is_preference_data(data, method):  # pairs or KTO labels: prepared as the preference run will
        try:
            found = inspect_preferences(
                data, tokenizer, method, seed=seed, preview_count=preview_count, cancel=cancel
            )
        except DatasetError as exc:  # the file as a whole (missing, broken, not preference data)
            overview.error, overview.problems, overview.problem_count = exc, [exc], 1
            return overview
        overview.preference, overview.error = found, found.error
        overview.stats = found.stats  # also with record problems: what skipping them would leave
        overview.problems, overview.problem_count = found.errors[:MAX_ERRORS], len(found.errors)
        if found.error is not None and not any(_same(found.error, p) for p in overview.problems):
            overview.problems.insert(0, found.error)
            overview.problem_count += 1
        overview.evidence = found.report.evidence
        overview.warnings = found.stats.warnings if found.stats else found.report.warnings
        overview.format, overview.records = f"preference ({found.report.format})", found.report.records
        return overview
    try:
        prepared = prepare_dataset(data, tokenizer, seed=seed, cancel=cancel)
        overview.stats = prepared.stats
        overview.problems = list(prepared.skipped[:MAX_ERRORS])
        overview.problem_count = len(prepared.skipped)
        overview.evidence, overview.warnings = prepared.stats.evidence, prepared.stats.warnings
        overview.format, overview.records = prepared.stats.format, prepared.stats.records
        conversations, report = load_conversations(data, cancel=cancel)
        overview.speakers, overview.labels = report.speakers, report.labels
        overview.examples = preview_conversations(conversations, data, tokenizer, preview_count)
    except DatasetError as exc:
        overview.error = exc
        try:  # carry on past the first problem to list all of them, with their locations
            _, report = scan_conversations(data, cancel=cancel, stop_at_first=False)
        except DatasetError:
            report = None
        if report is not None:
            overview.problems = list(report.skipped[:MAX_ERRORS])
            overview.problem_count = len(report.skipped)
            overview.evidence, overview.warnings = report.evidence, report.warnings
            overview.format, overview.records = report.format, report.records
            overview.speakers, overview.labels = report.speakers, report.labels
        if not overview.problems or not any(_same(exc, p) for p in overview.problems):
            overview.problems.insert(0, exc)
            overview.problem_count += 1
    return overview


def _same(a: DatasetError, b: DatasetError) -> bool:
    return (a.file, a.line, a.record, a.reason) == (b.file, b.line, b.record, b.reason)


def _columns(data: DataSection) -> list[str]:
    """Field names of the first record (for column mapping); [] when the file cannot be read."""
    from lora_studio.core.data import open_source, resolve_paths

    try:
        source = open_source(resolve_paths(data.path)[0], txt_split=data.txt_split)
        if source.columns:
            return list(source.columns)
        for item in source.records:
            if not isinstance(item, DatasetError):
                return list(item.data)
    except (LoraStudioError, OSError, IndexError):
        pass
    return []


def record_context(error: DatasetError, around: int = 3) -> str:
    """The offending record's lines from its file, the bad line marked (for the error list)."""
    if not error.file or error.line is None:
        return ""
    try:
        with open(error.file, encoding="utf-8", errors="replace") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return ""
    first = max(1, error.line - around)
    last = min(len(lines), error.line + around)
    out = []
    for number in range(first, last + 1):
        text = lines[number - 1]
        if len(text) > 2000:
            text = text[:2000] + " …"
        marker = "▶" if number == error.line else " "
        out.append(f"{marker} {number:>5}  {text}")
    return "\n".join(out)


def gpu_catalog() -> list[tuple[str, int]]:
    """(name, memory in bytes) for the memory panel's GPU list."""
    from lora_studio.core.estimate import load_gpu_catalog

    return [(gpu.name, gpu.memory_bytes) for gpu in load_gpu_catalog()]


def model_catalog() -> list[str]:
    """Names of catalog models (estimation only: their weights are not on this machine)."""
    from lora_studio.core.estimate import load_model_catalog

    return [model.name for model in load_model_catalog()]
