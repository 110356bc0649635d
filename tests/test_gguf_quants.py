"""GGUF quant types: our port of llama.cpp's quantizers and its per-tensor type rules, byte for byte.

Three levels of proof. Always (CI has no llama.cpp): every type round-trips through gguf-py's
dequantizer within its known error, and matches bytes and type choices that llama.cpp itself
produced (``tests/data/make_llama_cpp_quants.py`` regenerates them). Where llama-cpp-python is
installed: the same on fresh inputs through llama.cpp's ``ggml_quantize_chunk``, and whole files
against ``llama_model_quantize``.
"""

from __future__ import annotations

import json
from pathlib import Path

import llama_cpp_native
import numpy as np
import pytest

from lora_studio.core.export.gguf import _convert, plan_model_tensors
from lora_studio.core.export.kquants import quantize_ported
from lora_studio.core.export.quant_mix import FILE_TYPES, ModelShape, tensor_types
from lora_studio.core.export.types import QUANTS

DATA = Path(__file__).parent / "data"
needs_llama_cpp = pytest.mark.skipif(not llama_cpp_native.available(), reason=llama_cpp_native.REASON)

#: storage type → relative RMS error on Gaussian weights that the type must stay under.
#: (Measured: Q4_K 0.072, Q5_K 0.036, Q6_K 0.018, Q4_0 0.086, Q5_0 0.043, Q5_1 0.036, Q8_0 0.005.)
KNOWN_ERROR = {
    "Q4_K": 0.08, "Q5_K": 0.04, "Q6_K": 0.02, "Q4_0": 0.095, "Q5_0": 0.048, "Q5_1": 0.04, "Q8_0": 0.006,
    "F16": 1e-3, "BF16": 5e-3,
}  # fmt: skip


def _dequantize(data: np.ndarray, qtype: str, shape: tuple[int, ...]) -> np.ndarray:
    import gguf

    if qtype == "F16":
        return np.asarray(data, dtype=np.float32).reshape(shape)
    return gguf.quants.dequantize(data, gguf.GGMLQuantizationType[qtype]).reshape(shape)


@pytest.mark.parametrize("qtype", sorted(KNOWN_ERROR))
def test_every_storage_type_round_trips_within_its_known_error(qtype):
    rng = np.random.default_rng(7)
    weights = (rng.standard_normal((32, 1536)) * 0.02).astype(np.float32)
    back = _dequantize(_convert(weights, qtype), qtype, weights.shape)
    error = float(np.sqrt(np.mean((back - weights) ** 2)) / np.sqrt(np.mean(weights**2)))
    assert error < KNOWN_ERROR[qtype], f"{qtype}: relative RMS error {error:.4f}"
    # and the error is not suspiciously small either: a type that stored fp32 would "pass" above
    assert error > KNOWN_ERROR[qtype] / 20 or qtype in ("F16", "BF16")
    zeros = np.zeros((2, 1536), np.float32)
    assert not _dequantize(_convert(zeros, qtype), qtype, zeros.shape).any()


def test_port_matches_llama_cpp_bytes_recorded_from_llama_cpp():
    recorded = np.load(DATA / "llama_cpp_quants.npz")
    cases = sorted({key.split("/")[0] for key in recorded.files})
    assert len(cases) >= 6
    for case in cases:
        data = recorded[f"{case}/input"]
        for qtype in ("Q4_K", "Q5_K", "Q6_K", "Q4_0", "Q5_0", "Q5_1", "Q8_0"):
            ours = np.asarray(_convert(data, qtype)).view(np.uint8).reshape(data.shape[0], -1)
            theirs = recorded[f"{case}/{qtype}"]
            assert ours.shape == theirs.shape and np.array_equal(ours, theirs), f"{case} {qtype}"


@needs_llama_cpp
@pytest.mark.parametrize("qtype", ["Q4_K", "Q5_K", "Q6_K", "Q4_0", "Q5_0", "Q5_1"])
def test_port_matches_llama_cpp_on_fresh_weights(qtype):
    rng = np.random.default_rng()  # new every run: the golden file cannot hide a special case
    for scale, shape in ((0.02, (24, 2048)), (3.0, (4, 512)), (1e-4, (4, 256))):
        data = (rng.standard_t(4, shape) * scale).astype(np.float32)
        data[0, :40] = 0.0
        ours = quantize_ported(data, qtype)
        assert np.array_equal(ours, llama_cpp_native.ggml_quantize(data, qtype)), (qtype, scale)


def test_gguf_py_does_not_match_llama_cpp_on_negative_zero_blocks():
    """Why Q4_0/Q5_0/Q5_1 are ported too: gguf-py writes a zero scale's sign differently."""
    import gguf

    recorded = np.load(DATA / "llama_cpp_quants.npz")
    data = recorded["sparse/input"]
    theirs = recorded["sparse/Q5_1"]
    assert np.array_equal(quantize_ported(data, "Q5_1"), theirs)
    assert not np.array_equal(gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q5_1), theirs)


# -- which type each tensor gets ----------------------------------------------------------------


def _llama(layers: int, hidden: int, heads: int, kv_heads: int, ff: int, vocab: int, tied: bool):
    """A llama config and its state-dict shapes (no weights): what planning and the type rules read."""
    from transformers import AutoConfig

    config = AutoConfig.for_model(
        "llama",
        num_hidden_layers=layers,
        hidden_size=hidden,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        intermediate_size=ff,
        vocab_size=vocab,
        tie_word_embeddings=tied,
    )
    return config, _llama_shapes(layers, hidden, hidden // heads * kv_heads, ff, vocab, tied)


LLAMA_8B = (32, 4096, 32, 8, 14336, 128256, False)  # Llama-3-8B's shapes
SMOLLM2 = (30, 576, 9, 3, 1536, 49152, True)  # the default model's


def _llama_shapes(layers: int, hidden: int, kv: int, ff: int, vocab: int, tied: bool) -> dict:
    shapes = {"model.embed_tokens.weight": (vocab, hidden), "model.norm.weight": (hidden,)}
    if not tied:
        shapes["lm_head.weight"] = (vocab, hidden)
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes.update(
            {
                p + "input_layernorm.weight": (hidden,),
                p + "post_attention_layernorm.weight": (hidden,),
                p + "self_attn.q_proj.weight": (hidden, hidden),
                p + "self_attn.k_proj.weight": (kv, hidden),
                p + "self_attn.v_proj.weight": (kv, hidden),
                p + "self_attn.o_proj.weight": (hidden, hidden),
                p + "mlp.gate_proj.weight": (ff, hidden),
                p + "mlp.up_proj.weight": (ff, hidden),
                p + "mlp.down_proj.weight": (hidden, ff),
            }
        )
    return shapes


@pytest.mark.parametrize(
    ("label", "layers", "hidden", "heads", "kv_heads", "ff", "tied"),
    [("smollm2-135m", 30, 576, 9, 3, 1536, True), ("llama-32-layers", 32, 256, 8, 2, 768, False)],
)
def test_tensor_types_are_the_ones_llama_quantize_chose(label, layers, hidden, heads, kv_heads, ff, tied):
    expected = json.loads((DATA / "llama_cpp_types.json").read_text())[label]
    config, shapes = _llama(layers, hidden, heads, kv_heads, ff, 49152, tied)
    for quant in QUANTS:
        if quant == "f16":
            continue
        ours = {t.name: t.qtype for t in plan_model_tensors(shapes, config, quant)}
        assert ours == expected[quant], f"{label} {quant}: " + str(
            {k: (v, expected[quant].get(k)) for k, v in ours.items() if v != expected[quant].get(k)}
        )


def test_q4_k_m_gives_sensitive_layers_more_bits_on_an_8b_layout():
    """Llama-3-8B's shapes: the mixture people know — Q6_K for the output and for attn_v/ffn_down
    in the first and last eighth and every third layer between, Q4_K elsewhere."""
    _, shapes = _llama(*LLAMA_8B)
    model = ModelShape(n_layer=32, n_head=32, n_head_kv=8)
    from lora_studio.core.export.quant_mix import _use_more_bits

    names = [(n, s) for n, s in _gguf_names(shapes, 32)]
    types = tensor_types(names, "q4_k_m", model)
    assert types["output.weight"] == "Q6_K" and types["token_embd.weight"] == "Q4_K"
    assert types["blk.0.attn_norm.weight"] == "F32"
    more = [i for i in range(32) if _use_more_bits(i, 32)]
    assert more == [0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31]
    for i in range(32):
        want = "Q6_K" if i in more else "Q4_K"
        assert types[f"blk.{i}.attn_v.weight"] == want and types[f"blk.{i}.ffn_down.weight"] == want
        assert types[f"blk.{i}.attn_q.weight"] == "Q4_K" and types[f"blk.{i}.ffn_up.weight"] == "Q4_K"
    sizes = {q: sum(t.nbytes for t in _planned(shapes, q)) for q in ("q4_k_m", "q5_k_m", "q6_k", "q8_0")}
    assert 4.5e9 < sizes["q4_k_m"] < 5.0e9  # Llama-3-8B Q4_K_M is 4.92 GB (4.58 GiB) in llama.cpp
    assert sizes["q4_k_m"] < sizes["q5_k_m"] < sizes["q6_k"] < sizes["q8_0"] < 8.6e9


def _gguf_names(shapes: dict, layers: int):
    import gguf

    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, layers)
    for key, shape in shapes.items():
        yield name_map.get_name(key, try_suffixes=(".weight",)), shape


def _planned(shapes: dict, quant: str):
    config, _ = _llama(*LLAMA_8B)
    return plan_model_tensors(shapes, config, quant)


def test_every_offered_type_has_a_llama_cpp_file_type():
    import gguf

    for quant in QUANTS:
        ftype, default, label = FILE_TYPES[quant]
        assert gguf.LlamaFileType(ftype).name == f"MOSTLY_{label}"
        assert label.lower() == quant and default in gguf.GGMLQuantizationType.__members__


# -- whole files against llama-quantize -----------------------------------------------------------


@needs_llama_cpp
@pytest.mark.slow
def test_whole_default_model_is_byte_identical_to_llama_quantize(default_model_dir, tmp_path):
    """Our Q4_K_M (and every other type) of the real model equals llama-quantize's of the same F16 file."""
    import gguf
    from safetensors.torch import load_file

    from lora_studio.core import llamacpp
    from lora_studio.core.export.gguf import write_model_gguf
    from lora_studio.core.models import load_config, load_tokenizer

    config, tokenizer = load_config(default_model_dir), load_tokenizer(default_model_dir)
    state = {}
    for file in sorted(default_model_dir.glob("*.safetensors")):
        state.update({k: v.half().float() for k, v in load_file(str(file)).items()})  # what F16 holds
    source = tmp_path / "f16.gguf"
    write_model_gguf(source, state, config, tokenizer, quant="f16", name="m", tick=lambda *_: None)
    for quant in ("q4_k_m", "q5_k_m", "q6_k", "q4_0"):
        ours, theirs = tmp_path / f"ours-{quant}.gguf", tmp_path / f"llama-{quant}.gguf"
        write_model_gguf(ours, state, config, tokenizer, quant=quant, name="m", tick=lambda *_: None)
        llamacpp.quantize(source, theirs, FILE_TYPES[quant][0])
        mine = {t.name: t for t in gguf.GGUFReader(str(ours)).tensors}
        other = {t.name: t for t in gguf.GGUFReader(str(theirs)).tensors}
        assert mine.keys() == other.keys()
        for name, tensor in mine.items():
            assert tensor.tensor_type == other[name].tensor_type, (quant, name)
            assert np.array_equal(
                np.asarray(tensor.data).view(np.uint8), np.asarray(other[name].data).view(np.uint8)
            ), (quant, name)
        assert ours.stat().st_size == theirs.stat().st_size


def test_the_export_page_figures_size_memory_and_fallback_for_every_type():
    from lora_studio.core.export.plan import gguf_choices

    choices = {c.quant: c for c in gguf_choices(*reversed(_llama(*LLAMA_8B)))}
    assert list(choices) == list(QUANTS)
    kv_cache = 2 * 32 * 8 * 128 * 2 * 4096  # K and V, F16, 4,096 tokens: 512 MiB
    for c in choices.values():
        assert c.run_bytes > c.file_bytes + kv_cache and not c.note
    assert 4.7 < choices["q4_k_m"].bits_per_weight < 5.0 and choices["f16"].bits_per_weight == 16.0
    assert choices["q4_k_m"].storage == {"Q4_K": 193, "F32": 65, "Q6_K": 33}

    small = {c.quant: c for c in gguf_choices(*reversed(_llama(*SMOLLM2)))}
    assert "181 of 211 matrices are stored as Q5_0 and Q8_0" in small["q4_k_m"].note
    assert "rows of 576 are not a multiple of 256" in small["q4_k_m"].note
    assert not small["q8_0"].note and not small["q4_0"].note
