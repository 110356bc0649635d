"""Export a fine-tune: PEFT adapter, merged model, GGUF (model and LoRA adapter), Ollama Modelfile.

``export(source, formats, out_dir, ...)`` is the one entry point for the GUI's Export page, the CLI
and the tests. It plans first (every refusal — an existing target, an unsupported architecture,
too little disk — comes before anything is written), loads the base model and adapter once in
fp32, remembers their logits on a probe prompt, writes each format into a staging folder inside
``out_dir`` and renames it into place, then reloads every export with a reader other than the
writer and compares (``export_verify``). Progress arrives as :class:`ExportProgress` events; a
cancel request or a failure leaves no partial file or folder that looks complete.

Layout of ``out_dir``: ``adapter/``, ``merged/``, ``<name>-<quant>.gguf``, ``<name>-lora-f32.gguf``
and ``Modelfile`` (beside the GGUF it names).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from lora_studio.core.errors import ModelSourceError
from lora_studio.core.export.files import DTYPE_BYTES, TOKENIZER_FILES
from lora_studio.core.export.types import (
    DEFAULT_QUANT,
    DEFAULT_SHARD_BYTES,
    DTYPES,
    FORMATS,
    QUANTS,
    ExportError,
    ExportPlan,
    ExportSource,
    GGUFChoice,
    TargetsExistError,
)
from lora_studio.core.faults import FaultSpec, parse_faults

_DISK_MARGIN = 64 * 1024**2
_LIBRARIES_RAM = 600 * 1024**2  # torch + transformers + tokenizers, resident once imported


# -- sources ------------------------------------------------------------------------------------


def resolve_source(path: str | os.PathLike[str], *, model: str | None = None) -> ExportSource:
    """A run folder (its adapter, else its latest checkpoint), a checkpoint, or any PEFT adapter folder.

    The base model comes from the run's config.toml, else from adapter_config.json; ``model``
    overrides both (for adapters trained elsewhere or a base that moved).
    """
    from lora_studio.core.chat import resolve_adapter
    from lora_studio.core.config import RunConfig

    folder = Path(path).expanduser()
    adapter = resolve_adapter(folder)
    run_dir = next(
        (d for d in (folder, adapter.parent, adapter.parent.parent) if (d / "config.toml").is_file()), None
    )
    match = re.fullmatch(r"checkpoint-(\d+)", adapter.name)
    step = int(match.group(1)) if match else None
    config = RunConfig.load(run_dir / "config.toml") if run_dir else None
    try:
        settings = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ExportError(f"{adapter}: adapter_config.json cannot be read ({exc})") from None
    base = model or (config.model.source if config else settings.get("base_model_name_or_path"))
    if not base:
        raise ExportError(f"{adapter}: the base model is not recorded", hint="name it with --model")
    name = run_dir.name if run_dir else (adapter.parent.name if adapter.name == "adapter" else adapter.name)
    if step is not None and run_dir is not None:
        name += f"-step{step}"
    return ExportSource(
        adapter_dir=adapter,
        base_model=str(base),
        name=re.sub(r"[^\w.-]+", "-", name).strip("-.") or "model",
        run_dir=run_dir,
        checkpoint_step=step,
        trust_remote_code=bool(config.model.trust_remote_code) if config else False,
    )


def parse_formats(formats: str | Iterable[str]) -> list[str]:
    """'gguf,modelfile' or ['adapter', 'gguf'] → the formats in canonical order, each once."""
    items = [formats] if isinstance(formats, str) else list(formats)
    names = {part.strip().lower() for item in items for part in str(item).split(",") if part.strip()}
    unknown = sorted(names - set(FORMATS))
    if unknown or not names:
        raise ExportError(
            f"unknown export format{'s' if len(unknown) > 1 else ''}: {', '.join(unknown) or '(none)'}",
            hint=f"choose from {', '.join(FORMATS)}",
        )
    return [f for f in FORMATS if f in names]


def parse_quants(quant: str | Iterable[str]) -> list[str]:
    items = [quant] if isinstance(quant, str) else list(quant)
    names = [part.strip().lower() for item in items for part in str(item).split(",") if part.strip()]
    unknown = [q for q in names if q not in QUANTS]
    if unknown or not names:
        raise ExportError(
            f"unknown GGUF type: {', '.join(unknown) or '(none)'}", hint=f"choose {', '.join(QUANTS)}"
        )
    return list(dict.fromkeys(names))


# -- planning -----------------------------------------------------------------------------------


def plan_export(
    source: str | os.PathLike[str] | ExportSource,
    formats: str | Iterable[str],
    out_dir: str | os.PathLike[str],
    *,
    model: str | None = None,
    dtype: str = "auto",
    quant: str | Iterable[str] = DEFAULT_QUANT,
    overwrite: bool = False,
    verify: bool = True,
    faults: FaultSpec = None,
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
) -> ExportPlan:
    """Check everything that can be checked without writing; raise a clear error for the first refusal."""
    from lora_studio.core.export import gguf as gg
    from lora_studio.core.export.gguf_vocab import check_tokenizer
    from lora_studio.core.models import load_config, resolve_model

    src = source if isinstance(source, ExportSource) else resolve_source(source, model=model)
    names, quants = parse_formats(formats), parse_quants(quant)
    if dtype not in DTYPES:
        raise ExportError(f"unknown dtype '{dtype}'", hint=f"choose {', '.join(DTYPES)}")
    try:
        base = resolve_model(src.base_model)
    except ModelSourceError as exc:
        raise ModelSourceError(
            f"base model of {src.adapter_dir}: {exc.message}", hint="name it with --model"
        ) from None
    config = load_config(base.path, trust_remote_code=src.trust_remote_code)
    if "gguf" in names:
        gg.check_gguf_support(config)
        check_tokenizer(run_tokenizer(src, base.path))
    if "gguf-adapter" in names:
        gg.check_gguf_support(config, what="GGUF adapter export")
        gg.check_adapter_settings(adapter_settings(src.adapter_dir))
    resolved_dtype = _resolve_dtype(dtype, config)
    out = Path(out_dir).expanduser().resolve()
    targets = _targets(out, names, quants, src.name)
    if (
        "modelfile" in names
        and "gguf" not in names
        and not targets["modelfile"][0].with_name(gguf_name(src.name, quants[0])).is_file()
    ):
        raise ExportError(
            "modelfile: an Ollama Modelfile sits beside a GGUF, and there is none in the output folder",
            hint="add --format gguf",
        )
    conflicts = [p for paths in targets.values() for p in paths if p.exists()]
    if conflicts and not overwrite:
        listed = ", ".join(p.name + ("/" if p.is_dir() else "") for p in conflicts)
        raise TargetsExistError(
            f"{out}: {listed} already exist{'s' if len(conflicts) == 1 else ''}",
            hint="choose another output folder, or pass --overwrite to replace them",
        )
    shapes = weight_shapes(base.path)
    choices: list[GGUFChoice] = []
    if model_supports_gguf(config):  # every type's size: the page shows them, the disk check adds them
        choices = gguf_choices(shapes, config, metadata_bytes=gguf_metadata_bytes(src, base.path, shapes))
    gguf_bytes = {c.quant: c.file_bytes for c in choices}
    needed = _disk_needed(src, names, quants, resolved_dtype, shapes, base.path, gguf_bytes)
    free = shutil.disk_usage(_existing_parent(out)).free
    injected = parse_faults(faults)
    if injected.get("low_disk"):
        free = min(free, needed // 10)
    if needed + _DISK_MARGIN > free:
        raise ExportError(
            f"Not enough disk space in {_existing_parent(out)}: this export needs {size_text(needed)}, "
            f"{size_text(free)} is free",
            hint="free some space or choose another output folder (--out)",
        )
    peak = _peak_memory(names, shapes, verify=verify, max_shard_bytes=max_shard_bytes)
    import psutil

    available = psutil.virtual_memory().available
    warnings = []
    if peak > available:
        warnings.append(
            f"estimated peak memory {size_text(peak)} is more than the {size_text(available)} available; "
            "the export may swap or fail"
        )
    if src.run_dir is not None and (src.run_dir / "config.toml").is_file():
        from lora_studio.core.config import RunConfig

        merging = {"merged", "gguf"} & set(names)  # the adapter alone, or as GGUF, merges nothing
        if merging and RunConfig.load(src.run_dir / "config.toml").model.quantization != "none":
            warnings.append(
                "QLoRA run: the base model is reloaded unquantized (fp32) and the adapter merged into "
                "those weights, never into 4-bit ones"
            )
    return ExportPlan(
        source=src,
        formats=names,
        out_dir=out,
        dtype=resolved_dtype,
        quants=quants,
        targets=targets,
        base_path=base.path,
        base_kind=base.kind,
        base_name=base.name,
        disk_needed=needed,
        disk_free=free,
        peak_memory=peak,
        memory_available=available,
        overwrite=overwrite,
        warnings=warnings,
        gguf_choices=choices,
    )


#: the context the "memory to run" figure assumes: what Ollama and LM Studio open a model with
RUN_CONTEXT = 4096
_RUNTIME_OVERHEAD = 80 * 1024**2  # llama.cpp's own buffers and the process, beyond weights and cache


def gguf_choices(
    shapes: dict[str, tuple[int, ...]], config: Any, *, context: int = RUN_CONTEXT, metadata_bytes: int = 0
) -> list[GGUFChoice]:
    """Size on disk and memory to run, for every GGUF type, from the tensor shapes alone.

    Memory to run is llama.cpp's: the weights (mapped from the file), an F16 KV cache for
    ``context`` tokens, its compute buffer (activations and attention scores for a 512-token
    batch, one row of logits), and a fixed overhead for the process. Checked against llama.cpp's
    peak RSS on the default model (4,096-token context, a 512-token batch, the untouched part of
    the KV cache added): Q4_K_M 361 MiB measured, 353 estimated; F16 511 measured, 511 estimated.
    ``metadata_bytes`` (the vocabulary and template) is added to the file size.
    """
    from lora_studio.core.export import gguf as gg
    from lora_studio.core.export.quant_mix import FILE_TYPES

    layers, heads = int(config.num_hidden_layers), int(config.num_attention_heads)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    head = gg.head_dim(config)
    kv_cache = 2 * layers * kv_heads * head * 2 * context
    batch = min(512, context)
    hidden, ff = int(config.hidden_size), int(config.intermediate_size)
    compute = 4 * batch * (4 * hidden + 2 * ff + heads * context) + 4 * int(config.vocab_size)
    choices = []
    for quant in QUANTS:
        planned = gg.plan_model_tensors(shapes, config, quant)
        weights = sum(t.nbytes for t in planned)
        storage: dict[str, int] = {}
        for tensor in planned:
            storage[tensor.qtype] = storage.get(tensor.qtype, 0) + 1
        stored = sum(numel(t.shape) for t in planned)
        choices.append(
            GGUFChoice(
                quant=quant,
                label=FILE_TYPES[quant][2],
                file_bytes=weights + metadata_bytes,
                run_bytes=weights + metadata_bytes + kv_cache + compute + _RUNTIME_OVERHEAD,
                context=context,
                bits_per_weight=round(8 * weights / max(stored, 1), 2),
                storage=dict(sorted(storage.items(), key=lambda kv: -kv[1])),
                note=_fallback_note(planned, quant),
            )
        )
    return choices


def gguf_choices_for(
    source: str | os.PathLike[str] | ExportSource, *, model: str | None = None
) -> list[GGUFChoice]:
    """Every GGUF type's size and memory for a run, checkpoint or adapter — [] when its base model
    cannot be written as GGUF. Reads configs and safetensors headers only (no weights), so the Export
    page can show sizes even when a plan is refused; may convert a GGUF base once (off the GUI thread)."""
    from lora_studio.core.models import load_config, resolve_model

    src = source if isinstance(source, ExportSource) else resolve_source(source, model=model)
    base = resolve_model(src.base_model)
    config = load_config(base.path, trust_remote_code=src.trust_remote_code)
    if not model_supports_gguf(config):
        return []
    shapes = weight_shapes(base.path)
    return gguf_choices(shapes, config, metadata_bytes=gguf_metadata_bytes(src, base.path, shapes))


def gguf_metadata_bytes(src: ExportSource, base_path: Path, shapes: dict[str, tuple[int, ...]]) -> int:
    """The GGUF header: the vocabulary (each token a length-prefixed string and a type), the BPE
    merges, the template and the tensor table — estimated from tokenizer.json (default model: 1.77
    MB estimated, 1.79 MB written)."""
    folder = src.adapter_dir if (src.adapter_dir / "tokenizer_config.json").is_file() else base_path
    total = 4096 + 96 * len(shapes)  # hyper-parameters, and one tensor-table entry per tensor
    if (folder / "chat_template.jinja").is_file():
        total += (folder / "chat_template.jinja").stat().st_size
    try:
        model = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))["model"]
    except (OSError, ValueError, KeyError):
        return total + sum((folder / n).stat().st_size for n in TOKENIZER_FILES if (folder / n).is_file())
    vocab = model.get("vocab") or {}
    tokens = vocab.keys() if isinstance(vocab, dict) else [str(t[0]) for t in vocab]  # BPE / unigram
    total += sum(12 + len(t.encode("utf-8")) for t in tokens)
    merges = model.get("merges") or []
    total += sum(8 + len((m if isinstance(m, str) else " ".join(m)).encode("utf-8")) for m in merges)
    return total


def _fallback_note(planned: list[Any], quant: str) -> str:
    """K-quants need rows that are a multiple of 256; llama.cpp stores other rows in a 32-element type."""
    from lora_studio.core.export.quant_mix import BLOCK_SIZE, FILE_TYPES

    default = FILE_TYPES[quant][1]
    if BLOCK_SIZE.get(default, 1) != 256:
        return ""
    matrices = [t for t in planned if len(t.shape) >= 2]
    odd = [t for t in matrices if t.shape[-1] % 256]
    if not odd:
        return ""
    widths = sorted({t.shape[-1] for t in odd})
    kinds = sorted({t.qtype for t in odd})
    return (
        f"{len(odd)} of {len(matrices)} matrices are stored as {' and '.join(kinds)}: this model's rows of "
        f"{', '.join(map(str, widths))} are not a multiple of 256, which K-quants need (llama.cpp does the same)"
    )


def model_supports_gguf(config: Any) -> bool:
    from lora_studio.core.export import gguf as gg
    from lora_studio.core.export.gguf_vocab import GGUFExportError

    try:
        gg.check_gguf_support(config)
    except GGUFExportError:
        return False
    return True


def _targets(out: Path, formats: list[str], quants: list[str], name: str) -> dict[str, list[Path]]:
    paths = {
        "adapter": [out / "adapter"],
        "merged": [out / "merged"],
        "gguf": [out / gguf_name(name, q) for q in quants],
        "gguf-adapter": [out / f"{name}-lora-f32.gguf"],
        "modelfile": [out / "Modelfile"],
    }
    return {f: paths[f] for f in formats}


def gguf_name(name: str, quant: str) -> str:
    return f"{name}-{quant}.gguf"


def _resolve_dtype(dtype: str, config: Any) -> str:
    if dtype != "auto":
        return dtype
    stored = str(getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or "")
    return {"torch.float32": "fp32", "float32": "fp32", "torch.float16": "fp16", "float16": "fp16"}.get(
        stored, "bf16"
    )


def weight_shapes(folder: Path) -> dict[str, tuple[int, ...]]:
    """Tensor shapes from the safetensors headers: sizes without reading a single weight."""
    shapes: dict[str, tuple[int, ...]] = {}
    for file in sorted(folder.glob("*.safetensors")):
        with open(file, "rb") as handle:
            header = json.loads(handle.read(int.from_bytes(handle.read(8), "little")))
        shapes.update({k: tuple(v["shape"]) for k, v in header.items() if k != "__metadata__"})
    return shapes


def numel(shape: Iterable[int]) -> int:
    total = 1
    for dim in shape:
        total *= int(dim)
    return total


def _disk_needed(
    src: ExportSource,
    formats: list[str],
    quants: list[str],
    dtype: str,
    shapes: dict[str, tuple[int, ...]],
    base_path: Path,
    gguf_bytes: dict[str, int],
) -> int:
    adapter = sum(f.stat().st_size for f in src.adapter_dir.iterdir() if f.is_file())
    tok_dir = src.adapter_dir if (src.adapter_dir / "tokenizer_config.json").is_file() else base_path
    tokenizer = sum((tok_dir / n).stat().st_size for n in TOKENIZER_FILES if (tok_dir / n).is_file())
    params = sum(numel(s) for s in shapes.values())
    needed = 0
    for fmt in formats:
        if fmt == "adapter":
            needed += adapter + tokenizer
        elif fmt == "merged":
            needed += params * DTYPE_BYTES[dtype] + tokenizer
        elif fmt == "gguf":
            needed += sum(gguf_bytes[q] for q in quants)
        elif fmt == "gguf-adapter":
            needed += 2 * adapter
    return needed


def _peak_memory(
    formats: list[str], shapes: dict[str, tuple[int, ...]], *, verify: bool, max_shard_bytes: int
) -> int:
    """Estimated peak RAM: the libraries, plus the larger of the writing and the verifying phase.

    Writing holds one fp32 copy of the model (merged in place) and one shard or converted tensor.
    Verifying holds one reloaded model at a time; transformers' GGUF loader also holds the
    dequantized tensors and the mapped file. Measured on the default model (all formats, three
    GGUF types): 2.05 GB peak RSS against 1.95 GB estimated.
    """
    params = sum(numel(s) for s in shapes.values())
    if not (verify or {"merged", "gguf"} & set(formats)):
        return 0
    fp32 = 4 * params
    largest = 4 * max((numel(s) for s in shapes.values()), default=0)
    writing = fp32 + max(min(max_shard_bytes, 2 * params), 2 * largest)
    verifying = 0
    if verify:
        verifying = (
            2 * fp32 + 2 * params if "gguf" in formats else fp32 + (2 * params if "merged" in formats else 0)
        )
    return _LIBRARIES_RAM + max(writing, verifying)


def _existing_parent(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def size_text(count: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if count < 1000 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1000
    return f"{count:.1f} TB"  # pragma: no cover


def adapter_settings(adapter_dir: Path) -> dict[str, Any]:
    return json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))


def run_tokenizer(src: ExportSource, base_path: Path) -> Any:
    """The tokenizer the run trained with: saved beside the adapter, else the base model's."""
    from lora_studio.core.models import load_tokenizer

    folder = src.adapter_dir if (src.adapter_dir / "tokenizer_config.json").is_file() else base_path
    return load_tokenizer(folder, trust_remote_code=src.trust_remote_code)
