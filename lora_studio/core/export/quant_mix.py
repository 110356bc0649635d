"""Which storage type each tensor gets in a GGUF file type — llama.cpp's rules, so our files match its.

A "Q4_K_M" file is not all Q4_K: ``llama-quantize`` keeps norms in F32, gives the output matrix
(or the tied embedding) Q6_K, gives half-ish of the attn_v and ffn_down matrices Q6_K
(``use_more_bits``), and falls back to a 32-element type for rows whose length is not a multiple
of 256 (SmolLM2-135M's 576-wide rows become Q5_0). This module ports that decision
(``llama-quant.cpp``: ``llama_tensor_get_type``, ``..._impl``, ``tensor_type_fallback``) for the
file types we offer and the architectures we write, including its quirk of counting attn_v and
ffn_down tensors in the loader's order (by layer number, then by name).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

#: our name → (llama_ftype id written as general.file_type, the file's default tensor type, label)
FILE_TYPES: dict[str, tuple[int, str, str]] = {
    "q4_k_m": (15, "Q4_K", "Q4_K_M"),
    "q5_k_m": (17, "Q5_K", "Q5_K_M"),
    "q6_k": (18, "Q6_K", "Q6_K"),
    "q8_0": (7, "Q8_0", "Q8_0"),
    "q5_0": (8, "Q5_0", "Q5_0"),
    "q4_0": (2, "Q4_0", "Q4_0"),
    "f16": (1, "F16", "F16"),
    "bf16": (32, "BF16", "BF16"),
}

BLOCK_SIZE = {
    "F32": 1, "F16": 1, "BF16": 1,
    "Q4_0": 32, "Q5_0": 32, "Q5_1": 32, "Q8_0": 32,
    "Q4_K": 256, "Q5_K": 256, "Q6_K": 256,
}  # fmt: skip
_UNQUANTIZED = {"F32", "F16", "BF16"}
_FALLBACK = {"Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}


@dataclass(frozen=True)
class ModelShape:
    """The hyper-parameters llama.cpp's rules look at."""

    n_layer: int
    n_head: int
    n_head_kv: int
    arch: str = "llama"
    n_expert: int = 0

    @property
    def is_70b(self) -> bool:
        """llama.cpp's LLM_TYPE_70B, the one model size its rules single out."""
        return self.arch == "llama" and self.n_layer == 80 and self.n_head != self.n_head_kv


def _category(name: str) -> str:
    if name == "output.weight":
        return "output"
    if name in ("token_embd.weight", "per_layer_token_embd.weight"):
        return "token_embd"
    for key, category in (
        ("attn_qkv.weight", "attn_qkv"),
        ("attn_kv_b.weight", "attn_kv_b"),
        ("attn_v.weight", "attn_v"),
        ("attn_k.weight", "attn_k"),
        ("attn_q.weight", "attn_q"),
        ("attn_output.weight", "attn_output"),
        ("ffn_up", "ffn_up"),
        ("ffn_gate", "ffn_gate"),
        ("ffn_down", "ffn_down"),
    ):
        if key in name:
            return category
    return "other"


def _loader_order(name: str) -> tuple[int, str]:
    """llama.cpp's ``weight_name_comparer``: layer number first (-1 outside blocks), then the name."""
    match = re.match(r"blk\.(\d+)\.", name)
    return (int(match.group(1)) if match else -1, name)


def _allows_quantization(name: str, ndim: int) -> bool:
    return ndim >= 2 and name.endswith("weight") and "_norm.weight" not in name


def _use_more_bits(i_layer: int, n_layers: int) -> bool:
    return i_layer < n_layers // 8 or i_layer >= 7 * n_layers // 8 or (i_layer - n_layers // 8) % 3 == 2


def _fallback(new_type: str, ncols: int) -> str:
    """``tensor_type_fallback``: a 256-block type on rows it does not divide becomes a 32-block one."""
    if ncols % BLOCK_SIZE[new_type] == 0:
        return new_type
    result = _FALLBACK.get(new_type, new_type)
    if ncols % BLOCK_SIZE[result]:
        result = "F16"
    return result


def tensor_types(
    tensors: Iterable[tuple[str, tuple[int, ...]]], quant: str, model: ModelShape, *, source: str = "F32"
) -> dict[str, str]:
    """GGUF tensor name → storage type for file type ``quant``; shapes are numpy order (rows last).

    ``source`` is the type of tensors that are not quantized at all (norms), as in the input file.
    """
    ftype = FILE_TYPES[quant][2]
    default = FILE_TYPES[quant][1]
    items = sorted(((name, tuple(shape)) for name, shape in tensors), key=lambda t: _loader_order(t[0]))
    categories = {name: _category(name) for name, _ in items}
    n_attention_wv = sum(c in ("attn_v", "attn_qkv", "attn_kv_b") for c in categories.values())
    tied = "output" not in categories.values()
    counters = {"attn_v": 0, "ffn_down": 0, "ffn_gate": 0, "ffn_up": 0}
    types: dict[str, str] = {}
    for name, shape in items:
        if not _allows_quantization(name, len(shape)):
            types[name] = source if len(shape) >= 2 else "F32"
            continue
        new_type = default
        if default not in _UNQUANTIZED:
            new_type = _choose(
                name, shape, categories[name], new_type, ftype, model, tied, counters, n_attention_wv
            )
            new_type = _fallback(new_type, shape[-1])
        types[name] = new_type
    return types


def _choose(
    name: str,
    shape: tuple[int, ...],
    category: str,
    new_type: str,
    ftype: str,
    model: ModelShape,
    tied: bool,
    counters: dict[str, int],
    n_attention_wv: int,
) -> str:
    """``llama_tensor_get_type_impl`` for the file types in FILE_TYPES (no imatrix, no overrides)."""
    if category == "output" or (tied and category == "token_embd"):
        if model.arch == "falcon" or shape[-1] % BLOCK_SIZE[new_type]:
            return "Q8_0"
        return new_type if new_type == "Q8_0" else "Q6_K"
    if category in ("attn_v", "attn_qkv", "attn_kv_b"):
        if ftype in ("Q4_K_M", "Q5_K_M") and _use_more_bits(counters["attn_v"], n_attention_wv):
            new_type = "Q6_K"
        if model.is_70b and new_type == "Q4_K":
            new_type = "Q5_K"
        if model.n_expert == 8:
            new_type = "Q8_0"
        counters["attn_v"] += 1
    elif category == "attn_k":
        if model.n_expert == 8:
            new_type = "Q8_0"
    elif category == "ffn_down":
        i_layer, n_layer = counters["ffn_down"], model.n_layer
        if model.n_expert > 1:
            i_layer = int(name.split(".")[1])
        if ftype == "Q4_K_M":
            if model.arch == "falcon":
                new_type = (
                    "Q6_K"
                    if i_layer < n_layer // 16
                    else "Q5_K"
                    if _use_more_bits(i_layer, n_layer)
                    else "Q4_K"
                )
            elif _use_more_bits(i_layer, n_layer):
                new_type = "Q6_K"
        elif ftype == "Q5_K_M" and _use_more_bits(i_layer, n_layer):
            new_type = "Q6_K"
        counters["ffn_down"] += 1
    elif category == "attn_output":
        if model.arch != "falcon" and model.n_expert == 8 and ftype == "Q4_K_M":
            new_type = "Q5_K"
    elif category in ("ffn_gate", "ffn_up"):
        counters[category] += 1
    return new_type
