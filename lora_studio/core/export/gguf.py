"""GGUF writers: a merged model for llama.cpp / Ollama / LM Studio, and a LoRA adapter for llama.cpp.

Written with the ``gguf`` package, following llama.cpp's own converters (``convert_hf_to_gguf.py``
and ``convert_lora_to_gguf.py``): tensor names come from gguf's ``TensorNameMap``; llama's q/k
projection rows are permuted into GGUF's rotary layout (transformers' GGUF loader reverses that
on load, and a LoRA B matrix of q/k gets the same row permutation); norms stay F32. Tensors are
streamed: the header and tensor table are written first, then one tensor at a time is converted
and appended, so the file never needs a second copy of the model in memory.

Only architectures listed in ``GGUF_ARCHITECTURES`` are written; anything else gets a clear "not
supported for this architecture yet" (CONTRIBUTING.md says how to add one).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lora_studio.core.export.gguf_vocab import GGUFExportError, add_tokenizer_metadata

#: transformers ``model_type`` → gguf architecture name, for the architectures we write.
GGUF_ARCHITECTURES = {"llama": "llama"}
_PERMUTED = {"q_proj": "q", "k_proj": "k"}


@dataclass(frozen=True)
class PlannedTensor:
    """One tensor of a GGUF file: where it comes from, its GGUF name, shape and storage type."""

    source: str  # the Hugging Face state-dict key
    name: str
    shape: tuple[int, ...]
    qtype: str  # gguf.GGMLQuantizationType name: F32, F16, BF16, Q8_0, Q4_K, ...
    permute: str | None = None  # "q" or "k": rows reordered to GGUF's rotary layout

    @property
    def nbytes(self) -> int:
        import gguf

        block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[self.qtype]]
        return math.prod(self.shape) // block * size


# -- support checks -----------------------------------------------------------------------------


def check_gguf_support(config: Any, *, what: str = "GGUF export") -> str:
    """The gguf architecture name, or a clear error naming what is not supported yet."""
    model_type = str(getattr(config, "model_type", "") or "unknown")
    arch = GGUF_ARCHITECTURES.get(model_type)
    if arch is None:
        raise GGUFExportError(
            f"{what} is not supported for this architecture yet (model_type '{model_type}'; "
            f"supported: {', '.join(sorted(GGUF_ARCHITECTURES))})",
            hint="export 'merged' and convert it with llama.cpp's convert_hf_to_gguf.py",
        )
    rope = _rope_parameters(config)
    rope_type = rope.get("rope_type") or rope.get("type") or "default"
    if rope_type != "default":
        raise GGUFExportError(
            f"{what}: rope scaling '{rope_type}' is not supported yet",
            hint="export 'merged' and convert it with llama.cpp's convert_hf_to_gguf.py",
        )
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        raise GGUFExportError(f"{what}: llama models with bias terms are not supported yet")
    return arch


def _rope_parameters(config: Any) -> dict[str, Any]:
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    return dict(rope) if isinstance(rope, Mapping) else {}


def rope_theta(config: Any) -> float:
    return float(_rope_parameters(config).get("rope_theta") or getattr(config, "rope_theta", 10000.0))


def head_dim(config: Any) -> int:
    return int(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)


# -- the merged model ---------------------------------------------------------------------------


def plan_model_tensors(shapes: Mapping[str, tuple[int, ...]], config: Any, quant: str) -> list[PlannedTensor]:
    """Every tensor of the GGUF, in state-dict order, with the storage type llama-quantize would give it.

    Tied output weights are left out (as llama.cpp does); the per-tensor types of a file type such
    as Q4_K_M come from ``quant_mix`` (llama.cpp's own rules).
    """
    import gguf

    from lora_studio.core.export.quant_mix import ModelShape, tensor_types

    check_gguf_support(config)
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, int(config.num_hidden_layers))
    tied = bool(getattr(config, "tie_word_embeddings", False))
    named = []
    for key, shape in shapes.items():
        if tied and key == "lm_head.weight":
            continue
        if key.endswith("rotary_emb.inv_freq"):
            continue
        name = name_map.get_name(key, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise GGUFExportError(f"GGUF export: tensor '{key}' has no GGUF name for this architecture")
        named.append((key, name, tuple(shape)))
    heads = int(config.num_attention_heads)
    model = ModelShape(
        n_layer=int(config.num_hidden_layers),
        n_head=heads,
        n_head_kv=int(getattr(config, "num_key_value_heads", None) or heads),
        arch=check_gguf_support(config),
    )
    types = tensor_types([(name, shape) for _, name, shape in named], quant, model)
    planned = []
    for key, name, shape in named:
        module = key.rsplit(".", 2)[-2] if key.count(".") >= 2 else ""
        planned.append(PlannedTensor(key, name, shape, types[name], _PERMUTED.get(module)))
    return planned


def file_type(quant: str) -> int:
    from lora_studio.core.export.quant_mix import FILE_TYPES

    return FILE_TYPES[quant][0]


def write_model_gguf(
    path: Path,
    state: Mapping[str, Any],
    config: Any,
    tokenizer: Any,
    *,
    quant: str,
    name: str,
    tick: Callable[[int, int], None],
    source_gguf: Path | None = None,
) -> list[str]:
    """Write ``state`` (merged fp32 torch tensors) as one GGUF file; returns notes for the report."""
    import gguf
    import numpy as np

    arch = check_gguf_support(config)
    planned = plan_model_tensors({k: tuple(v.shape) for k, v in state.items()}, config, quant)
    writer = gguf.GGUFWriter(path, arch)
    notes = _model_metadata(writer, config, name, quant)
    notes += add_tokenizer_metadata(writer, tokenizer, config, source_gguf=source_gguf)
    heads, kv_heads = int(config.num_attention_heads), int(config.num_key_value_heads)
    try:
        for item in planned:
            dtype = gguf.GGMLQuantizationType[item.qtype]
            writer.add_tensor_info(item.name, item.shape, np.dtype(np.float32), item.nbytes, raw_dtype=dtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for done, item in enumerate(planned):
            array = state[item.source].detach().float().cpu().numpy()
            if item.permute == "q":
                array = permute_rotary(array, heads, heads)
            elif item.permute == "k":
                array = permute_rotary(array, heads, kv_heads)
            writer.write_tensor_data(_convert(array, item.qtype))
            tick(done + 1, len(planned))
    finally:
        writer.close()
    return notes


def _convert(array: Any, qtype: str) -> Any:
    """fp32 → the bytes of one storage type, as llama.cpp writes them (``kquants``; Q8_0/BF16 by gguf-py)."""
    import gguf
    import numpy as np

    from lora_studio.core.export.kquants import PORTED_TYPES, quantize_ported

    array = np.ascontiguousarray(array, dtype=np.float32)
    if qtype == "F32":
        return array
    if qtype == "F16":
        return array.astype(np.float16)
    if qtype in PORTED_TYPES:
        return quantize_ported(array, qtype)
    return gguf.quants.quantize(array, gguf.GGMLQuantizationType[qtype])


def permute_rotary(weights: Any, n_head: int, n_head_kv: int) -> Any:
    """llama.cpp's ``LlamaModel.permute``: q/k rows reordered for GGUF's rotary layout."""
    if n_head != n_head_kv:
        n_head = n_head_kv
    rows = weights.shape[0]
    return (
        weights.reshape(n_head, 2, rows // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def _model_metadata(writer: Any, config: Any, name: str, quant: str) -> list[str]:
    import gguf

    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    writer.add_vocab_size(int(config.vocab_size))
    writer.add_context_length(int(getattr(config, "max_position_embeddings", 2048) or 2048))
    writer.add_embedding_length(int(config.hidden_size))
    writer.add_block_count(int(config.num_hidden_layers))
    writer.add_feed_forward_length(int(config.intermediate_size))
    writer.add_head_count(int(config.num_attention_heads))
    writer.add_head_count_kv(int(getattr(config, "num_key_value_heads", None) or config.num_attention_heads))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_rope_freq_base(rope_theta(config))
    writer.add_rope_dimension_count(head_dim(config))
    writer.add_key_length(head_dim(config))
    writer.add_value_length(head_dim(config))
    writer.add_file_type(file_type(quant))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    return []


# -- the LoRA adapter ---------------------------------------------------------------------------


@dataclass(frozen=True)
class AdapterTensors:
    alpha: float
    pairs: list[tuple[str, str, Any, Any]]  # (hf module, gguf base name, A (r, in), B (out, r))
    notes: list[str]


def adapter_pairs(adapter_dir: Path, config: Any) -> AdapterTensors:
    """The adapter's A/B pairs under GGUF names, with any per-module scale folded into B.

    llama.cpp scales every pair by ``alpha / rank``; rsLoRA (``alpha / sqrt(r)``), ``rank_pattern``
    and ``alpha_pattern`` are expressed exactly by choosing alpha and scaling B where needed.
    """
    import gguf
    import torch
    from safetensors.torch import load_file

    check_gguf_support(config, what="GGUF adapter export")
    settings = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    check_adapter_settings(settings)
    weights = load_file(str(adapter_dir / "adapter_model.safetensors"), device="cpu")
    r, alpha = int(settings["r"]), float(settings["lora_alpha"])
    written_alpha = alpha * math.sqrt(r) if settings.get("use_rslora") else alpha
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, int(config.num_hidden_layers))
    heads, kv_heads = int(config.num_attention_heads), int(config.num_key_value_heads)
    modules = sorted({k.split(".lora_")[0] for k in weights if ".lora_A." in k or ".lora_B." in k})
    strays = [k for k in weights if ".lora_A." not in k and ".lora_B." not in k]
    if strays:
        raise GGUFExportError(
            f"GGUF adapter export: unexpected tensor '{strays[0]}' in the adapter",
            hint="export 'gguf' (the merged model) instead",
        )
    pairs = []
    for module in modules:
        a = weights[f"{module}.lora_A.weight"].float()
        b = weights[f"{module}.lora_B.weight"].float()
        hf_name = module.removeprefix("base_model.model.")
        target = name_map.get_name(hf_name + ".weight", try_suffixes=(".weight",))
        if target is None:
            raise GGUFExportError(f"GGUF adapter export: layer '{hf_name}' has no GGUF name")
        rank = int(a.shape[0])
        want = _pattern(settings.get("alpha_pattern"), hf_name, alpha) / (
            math.sqrt(rank) if settings.get("use_rslora") else rank
        )
        factor = want * rank / written_alpha
        if not math.isclose(factor, 1.0, rel_tol=1e-9):
            b = b * factor
        short = hf_name.rsplit(".", 1)[-1]
        if short == "q_proj":
            b = torch.from_numpy(permute_rotary(b.numpy(), heads, heads).copy())
        elif short == "k_proj":
            b = torch.from_numpy(permute_rotary(b.numpy(), heads, kv_heads).copy())
        pairs.append((hf_name, target, a.contiguous(), b.contiguous()))
    if not pairs:
        raise GGUFExportError(f"{adapter_dir}: the adapter holds no LoRA weights")
    notes = []
    if settings.get("use_rslora"):
        notes.append(f"rsLoRA: written with alpha = {written_alpha:g} so llama.cpp's alpha/r scale matches")
    return AdapterTensors(written_alpha, pairs, notes)


def check_adapter_settings(settings: Mapping[str, Any]) -> None:
    """Refuse what a llama.cpp LoRA adapter cannot express, before anything is written."""
    unsupported = [
        label
        for key, label in (
            ("use_dora", "DoRA"),
            ("lora_bias", "LoRA bias terms"),
            ("modules_to_save", "fully trained modules (modules_to_save)"),
            ("trainable_token_indices", "trained token embeddings"),
        )
        if settings.get(key)
    ]
    if settings.get("peft_type", "LORA") != "LORA":
        unsupported.append(f"peft type {settings.get('peft_type')}")
    if unsupported:
        raise GGUFExportError(
            f"GGUF adapter export: llama.cpp LoRA adapters cannot express {', '.join(unsupported)}",
            hint="export 'gguf' (the merged model) instead",
        )


def _pattern(patterns: Mapping[str, Any] | None, module: str, default: float) -> float:
    """peft's pattern lookup: a key matches a module name or its dotted suffix."""
    for key, value in (patterns or {}).items():
        if re.fullmatch(rf"(.*\.)?{key}", module):
            return float(value)
    return default


def write_adapter_gguf(
    path: Path, adapter_dir: Path, config: Any, *, name: str, tick: Callable[[int, int], None]
) -> list[str]:
    """llama.cpp's LoRA adapter layout: general.type=adapter, adapter.type=lora, alpha, ``<name>.lora_a/b``."""
    import gguf
    import numpy as np

    tensors = adapter_pairs(adapter_dir, config)
    writer = gguf.GGUFWriter(path, check_gguf_support(config, what="GGUF adapter export"))
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, tensors.alpha)
    writer.add_name(name)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    arrays: list[tuple[str, Any]] = []
    for _, target, a, b in tensors.pairs:
        arrays.append((f"{target}.lora_a", a.numpy().astype(np.float32)))
        arrays.append((f"{target}.lora_b", b.numpy().astype(np.float32)))
    try:
        for tensor_name, array in arrays:
            writer.add_tensor_info(tensor_name, array.shape, array.dtype, array.nbytes)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for done, (_, array) in enumerate(arrays):
            writer.write_tensor_data(np.ascontiguousarray(array))
            tick(done + 1, len(arrays))
    finally:
        writer.close()
    return tensors.notes


def read_adapter_gguf(path: Path) -> tuple[dict[str, str | float], dict[str, tuple[Any, Any]]]:
    """(metadata, {base tensor name: (A, B)}) read back with gguf's reader, for verification."""
    import gguf
    import numpy as np

    reader = gguf.GGUFReader(str(path))
    meta: dict[str, str | float] = {}
    for key in ("general.type", "general.architecture", "adapter.type", "adapter.lora.alpha"):
        field = reader.fields.get(key)
        if field is not None:
            meta[key] = field.contents()
    pairs: dict[str, list[Any]] = {}
    for tensor in reader.tensors:
        base, _, part = tensor.name.rpartition(".")
        array = np.asarray(gguf.quants.dequantize(tensor.data, tensor.tensor_type), dtype=np.float32)
        shape = tuple(int(x) for x in reversed(tensor.shape.tolist()))
        slot = pairs.setdefault(base, [None, None])
        slot[0 if part == "lora_a" else 1] = array.reshape(shape)
    return meta, {k: (v[0], v[1]) for k, v in pairs.items()}


def tensor_name_map(config: Any, names: Iterable[str]) -> dict[str, str]:
    """GGUF base tensor name → Hugging Face module name, for the given HF state-dict keys."""
    import gguf

    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, int(config.num_hidden_layers))
    out = {}
    for key in names:
        target = name_map.get_name(key, try_suffixes=(".weight", ".bias"))
        if target is not None:
            out[target] = key
    return out
