"""Precise mode (a training step simulated on fake tensors) agrees with the analytic estimate.

Small configs of each supported architecture family keep this fast; the full catalog is compared
in ``bench/estimate_accuracy.py``.
"""

from __future__ import annotations

import json

import pytest

from lora_studio.core.estimate import CATEGORIES, EstimateRequest, estimate_memory, estimate_precise

FAMILIES = {
    "llama": {"model_type": "llama"},
    "qwen2": {"model_type": "qwen2"},  # q/k/v biases
    "qwen3": {"model_type": "qwen3", "head_dim": 32},  # q/k RMSNorm
    "phi3": {"model_type": "phi3", "pad_token_id": 0},  # fused qkv and gate_up projections
    "gemma2": {  # eager attention with soft-capping, four norms per layer, sliding window
        "model_type": "gemma2",
        "head_dim": 32,
        "sliding_window": 64,
        "final_logit_softcapping": 30.0,
        "attn_logit_softcapping": 50.0,
        "query_pre_attn_scalar": 32,
    },
}


def small_config(tmp_path, family="llama", layers=2, **fields) -> str:
    config = {
        "hidden_size": 128,
        "intermediate_size": 384,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "num_hidden_layers": layers,
        "vocab_size": 2048,
        "max_position_embeddings": 4096,
        "tie_word_embeddings": False,
        **FAMILIES[family],
        **fields,
    }
    path = tmp_path / f"{family}-{layers}.json"
    path.write_text(json.dumps(config))
    return str(path)


def tensors_only(estimate) -> int:
    return estimate.total_bytes - estimate.bytes["overhead"]


@pytest.mark.parametrize(
    "family", [f if f in ("llama", "gemma2") else pytest.param(f, marks=pytest.mark.slow) for f in FAMILIES]
)
def test_analytic_agrees_with_precise_for_each_family(tmp_path, family):
    req = EstimateRequest(small_config(tmp_path, family), batch_size=2, seq_len=128)
    precise = estimate_precise(req)
    assert precise.peak_bytes == pytest.approx(tensors_only(precise.analytic), rel=0.10)


SLOW = pytest.mark.slow


@pytest.mark.parametrize(
    "options",
    [
        {"quantization": "nf4", "double_quant": True, "gradient_checkpointing": True},
        pytest.param({"quantization": "nf4"}, marks=SLOW),
        pytest.param({"quantization": "int8"}, marks=SLOW),
        pytest.param({"quantization": "int8", "gradient_checkpointing": True}, marks=SLOW),
        pytest.param({"quantization": "nf4", "lean_kbit_prep": False}, marks=SLOW),
        pytest.param({"chunked_loss": False}, marks=SLOW),
        pytest.param({"optimizer": "paged_adamw_8bit", "lora_dropout": 0.0}, marks=SLOW),
        pytest.param({"targets": ["q_proj", "v_proj"], "lora_r": 32}, marks=SLOW),
        pytest.param({"gradient_checkpointing": True, "checkpoint_offload": True}, marks=SLOW),
        pytest.param({"use_dora": True}, marks=SLOW),
        pytest.param({"batch_size": 1, "seq_len": 512}, marks=SLOW),
    ],
)
def test_analytic_agrees_with_precise_for_each_option(tmp_path, options):
    req = EstimateRequest(small_config(tmp_path), **{"batch_size": 2, "seq_len": 128, **options})
    precise = estimate_precise(req)
    assert precise.peak_bytes == pytest.approx(tensors_only(precise.analytic), rel=0.10), precise.peak


def test_parameters_and_optimizer_states_are_exact_in_both(tmp_path):
    req = EstimateRequest(
        small_config(tmp_path), quantization="nf4", optimizer="adamw_bnb_8bit", batch_size=1
    )
    precise = estimate_precise(req)
    sizes = precise.analytic.bytes
    input_ids = req.batch_size * req.seq_len * 8  # tracked as "other" with the quantization states
    assert precise.peak["parameters"] + precise.peak["other"] + precise.peak["buffers"] == (
        sizes["weights_quantized"] + sizes["weights_unquantized"] + sizes["lora_weights"] + input_ids
    )
    assert precise.peak["optimizer"] == sizes["optimizer"]


@pytest.mark.slow
def test_a_few_layers_extrapolate_to_the_full_depth(tmp_path):
    config = small_config(tmp_path, layers=7, hidden_size=64, intermediate_size=192, vocab_size=512)
    req = EstimateRequest(config, quantization="nf4", batch_size=2, seq_len=128)
    extrapolated = estimate_precise(req)
    full = estimate_precise(req, layers=7)
    assert extrapolated.extrapolated and extrapolated.layers_simulated == (2, 4)
    assert any("extrapolated" in note for note in extrapolated.notes)
    assert not full.extrapolated
    assert extrapolated.peak_bytes == pytest.approx(full.peak_bytes, rel=0.02)


def test_precise_result_is_json_serialisable_with_every_category(tmp_path):
    precise = estimate_precise(EstimateRequest(small_config(tmp_path), batch_size=1))
    data = json.loads(json.dumps(precise.to_dict()))
    assert set(CATEGORIES) == set(data["peak"]) and data["total_bytes"] == precise.total_bytes
    assert (
        data["analytic"]["bytes"]["total"]
        == estimate_memory(EstimateRequest(small_config(tmp_path), batch_size=1)).total_bytes
    )
