"""The memory estimate of the preference methods (DPO, KTO, ORPO, SimPO), analytic and precise.

A pair method's step runs each pair's chosen and rejected answer (twice the sequences of its
batch); DPO and KTO add a reference forward without a graph; ORPO and SimPO build the full logits.
Precise mode simulates the step as TRL's trainers take it; the analytic estimate must agree with it
within ±10% (the standard of ``tests/test_estimate_precise.py``), here on small configs and in
``bench/estimate_accuracy.py`` on catalog models.
"""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from test_estimate_precise import small_config, tensors_only

from lora_studio.core.config import RunConfig
from lora_studio.core.errors import ConfigError
from lora_studio.core.estimate import EstimateRequest, estimate_memory, estimate_precise, plan_for

GIB = 2**30
LLAMA = "catalog:Llama-3.1-8B"
METHODS = ("dpo", "kto", "orpo", "simpo")


#: The long-context savers off: what the advice offers without them (with "auto" they may make a
#: run fit that these tests need not to fit).
NO_SAVERS = {
    "checkpoint_offload": "off",
    "tiled_mlp": "off",
    "norm_recompute": "off",
    "chunked_attention": "off",
}


def qlora_8b(method: str, **settings) -> EstimateRequest:
    """Llama-3.1-8B QLoRA with checkpointing at 2,048 tokens (per answer for the pair methods)."""
    return EstimateRequest(
        LLAMA, method=method, quantization="nf4", gradient_checkpointing=True, seq_len=2048, **settings
    )


@pytest.mark.parametrize("method", METHODS)
def test_analytic_agrees_with_precise_for_each_method(tmp_path, method):
    req = EstimateRequest(small_config(tmp_path), method=method, batch_size=2, seq_len=128)
    precise = estimate_precise(req)
    assert precise.peak_bytes == pytest.approx(tensors_only(precise.analytic), rel=0.10), precise.peak


@pytest.mark.parametrize(
    ("method", "options"),
    [
        ("dpo", {"quantization": "nf4", "double_quant": True, "gradient_checkpointing": True}),
        ("kto", {"quantization": "nf4", "lean_kbit_prep": False, "batch_size": 4}),
        ("orpo", {"gradient_checkpointing": True, "checkpoint_offload": True}),
        ("dpo", {"reference_adapter": True, "batch_size": 1, "seq_len": 256}),
        pytest.param("simpo", {"device": "cpu", "seq_len": 256}, marks=pytest.mark.slow),
        pytest.param("dpo", {"use_dora": True}, marks=pytest.mark.slow),
        pytest.param("dpo", {"quantization": "int8", "gradient_checkpointing": True}, marks=pytest.mark.slow),
    ],
)
def test_analytic_agrees_with_precise_for_options(tmp_path, method, options):
    req = EstimateRequest(
        small_config(tmp_path), **{"method": method, "batch_size": 2, "seq_len": 128, **options}
    )
    precise = estimate_precise(req)
    assert precise.peak_bytes == pytest.approx(tensors_only(precise.analytic), rel=0.10), precise.peak


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_analytic_agrees_with_precise_on_an_8b_model(method):
    """Where the decoder, not the output head, dominates (two layers simulated, extrapolated)."""
    req = EstimateRequest(LLAMA, method=method, quantization="nf4", batch_size=2, seq_len=512)
    precise = estimate_precise(req, layers=2)
    assert precise.peak_bytes == pytest.approx(tensors_only(precise.analytic), rel=0.10), precise.peak


def test_a_pair_step_costs_the_activations_of_twice_its_batch():
    """DPO's batch of pairs is twice as many sequences; its dropout is off (TRL's default)."""
    common = {"quantization": "nf4", "seq_len": 1024, "lora_dropout": 0.0}
    sft = estimate_memory(EstimateRequest(LLAMA, batch_size=2, **common)).bytes
    sft_twice = estimate_memory(EstimateRequest(LLAMA, batch_size=4, **common)).bytes
    dpo = estimate_memory(EstimateRequest(LLAMA, batch_size=2, method="dpo", **common)).bytes
    assert dpo["activations"] == pytest.approx(sft_twice["activations"], rel=0.01)
    share = sft_twice["activations"] - sft["activations"]
    assert dpo["total"] - sft["total"] == pytest.approx(share, rel=0.10)
    # the parameters do not change with the method
    for key in ("weights_quantized", "weights_unquantized", "lora_weights", "gradients", "optimizer"):
        assert dpo[key] == sft[key], key


def test_preference_methods_turn_lora_dropout_off():
    plan = plan_for(EstimateRequest(LLAMA, method="dpo", lora_dropout=0.05))
    assert not plan.dropout and plan_for(EstimateRequest(LLAMA, lora_dropout=0.05)).dropout
    with_dropout = estimate_memory(EstimateRequest(LLAMA, method="dpo", lora_dropout=0.05, batch_size=1))
    without = estimate_memory(EstimateRequest(LLAMA, method="dpo", lora_dropout=0.0, batch_size=1))
    assert with_dropout.total_bytes == without.total_bytes


def test_orpo_and_simpo_hold_full_logits_and_dpo_works_in_tiles():
    sizes = {
        m: estimate_memory(
            EstimateRequest(LLAMA, method=m, quantization="nf4", batch_size=1, seq_len=2048)
        ).bytes
        for m in ("dpo", "orpo", "simpo")
    }
    elements = 2 * 2048 * 128256  # chosen + rejected rows × tokens × vocabulary
    assert sizes["simpo"]["logits"] == 2 * 4 * elements  # fp32 logits + their gradient
    assert sizes["orpo"]["logits"] == 3 * 4 * elements
    assert sizes["dpo"]["logits"] < 0.5 * GIB and 8 * sizes["dpo"]["logits"] < sizes["simpo"]["logits"]
    assert sizes["dpo"]["total"] < sizes["simpo"]["total"] < sizes["orpo"]["total"]


def test_kto_runs_its_answers_with_a_graph_and_the_rest_without():
    kto = plan_for(EstimateRequest(LLAMA, method="kto", batch_size=4, seq_len=512))
    dpo = plan_for(EstimateRequest(LLAMA, method="dpo", batch_size=4, seq_len=512))
    assert (kto.rows, dpo.rows) == (4, 8) and kto.reference and dpo.reference
    assert not plan_for(EstimateRequest(LLAMA, method="simpo")).reference


def test_from_config_carries_the_method():
    config = RunConfig().with_overrides({"training.method": "dpo", "training.batch_size": 2})
    request = EstimateRequest.from_config(config, device="cuda", vram_bytes=None)
    assert request.method == "dpo" and not request.reference_adapter
    assert EstimateRequest.from_config(RunConfig(), device="cuda", vram_bytes=None).method == "sft"


@pytest.mark.parametrize(
    ("overrides", "copy"),
    [
        ({"training.method": "dpo", "preference.init_adapter": "runs/sft-run"}, True),
        ({"training.method": "kto", "lora.init": "pissa"}, True),
        ({"training.method": "simpo", "preference.init_adapter": "runs/sft-run"}, False),  # no reference
        ({"training.method": "sft", "lora.init": "olora"}, False),
    ],
)
def test_a_starting_adapter_is_kept_as_the_reference_copy(overrides, copy):
    config = RunConfig().with_overrides({"model.source": LLAMA, "training.batch_size": 2, **overrides})
    request = EstimateRequest.from_config(config, device="cuda", vram_bytes=None)
    plain = replace(request, reference_adapter=False)
    sizes, base = estimate_memory(request).bytes, estimate_memory(plain).bytes
    assert request.reference_adapter is copy
    assert sizes["lora_weights"] == (2 if copy else 1) * base["lora_weights"]
    assert sizes["gradients"] == base["gradients"] and sizes["optimizer"] == base["optimizer"]


@pytest.mark.parametrize(
    ("kwargs", "field", "words"),
    [
        ({"method": "ppo"}, "method", "dpo"),
        ({"method": "dpo", "packing": True}, "packing", "does not apply to DPO"),
        ({"method": "kto", "batch_size": 1}, "batch_size", "KTO needs at least 2"),
    ],
)
def test_settings_a_preference_run_refuses_are_named(kwargs, field, words):
    with pytest.raises(ConfigError, match=words) as caught:
        estimate_memory(EstimateRequest(LLAMA, **kwargs))
    assert field in str(caught.value)


def test_advice_for_a_pair_method_counts_pairs_and_names_the_reference_forward():
    request = qlora_8b("dpo", batch_size=4, vram_bytes=10 * GIB, **NO_SAVERS)
    estimate = estimate_memory(request)
    assert estimate.fits is False
    # left at "auto", the savers make the same run fit (chunked attention for the padded rows first)
    auto = estimate_memory(replace(request, **dict.fromkeys(NO_SAVERS, "auto")))
    assert auto.fits, auto.advice
    assert "Largest batch size that fits at sequence length 2,048: 1 pair (2 sequences)." in estimate.advice
    batch = next(a for a in estimate.advice if a.startswith("Batch size 1 pair"))
    assert "(its chosen and rejected answer: 2 sequences) with gradient accumulation 4" in batch
    assert estimate_memory(replace(request, batch_size=1)).fits
    line = next(a for a in estimate.advice if a.startswith("DPO's reference forward"))
    assert "no second copy of the model" in line and "working memory" in line
    # the pair methods' head is fused already: no "chunked loss" to offer
    assert not any(
        "chunked loss" in a.lower() or "chunked_loss" in a
        for a in estimate_memory(replace(request, chunked_loss=False)).advice
    )
    assert not any(a.startswith("Train with") for a in estimate.advice)  # ORPO/SimPO need more here


def test_advice_for_orpo_offers_dpo_which_needs_no_full_logits():
    request = qlora_8b("orpo", batch_size=1, vram_bytes=14 * GIB, **NO_SAVERS)
    estimate = estimate_memory(request)
    line = next(a for a in estimate.advice if a.startswith("Train with DPO instead"))
    saved = estimate.total_bytes - estimate_memory(replace(request, method="dpo")).total_bytes
    assert f"saves {saved / GIB:.2f} GB" in line and "(fits)" in line
    assert not any(a.startswith("ORPO's reference") for a in estimate.advice)  # ORPO has none


def test_advice_never_offers_kto_a_batch_of_one():
    request = EstimateRequest(
        LLAMA, method="kto", quantization="nf4", batch_size=8, seq_len=2048, vram_bytes=12 * GIB
    )
    advice = estimate_memory(request).advice
    assert any(a.startswith("Batch size 2 (KTO's smallest") for a in advice)
    assert not any("batch 1)" in a or a.startswith("Batch size 1") for a in advice)


# -- the command line -------------------------------------------------------------------------


def run_cli(*args):
    from lora_studio.cli import main

    return main(["estimate", *args])


def test_cli_method_dpo_estimates_pairs(capsys):
    args = ("--model", LLAMA, "--quant", "nf4", "--method", "dpo", "--batch-size", "2", "--seq-len", "1024")
    assert run_cli(*args, "--gpu", "RTX 3060") == 0
    out = capsys.readouterr().out
    assert "Llama-3.1-8B — DPO, nf4" in out and "batch 2 pairs (chosen + rejected: 4 sequences)" in out
    assert "fused log-prob head" in out
    assert run_cli(*args, "--json") == 0
    data = json.loads(capsys.readouterr().out)
    request = EstimateRequest(LLAMA, quantization="nf4", method="dpo", batch_size=2, seq_len=1024)
    assert data["bytes"]["total"] == estimate_memory(request).total_bytes


def test_cli_refuses_an_unknown_method_with_the_choices(capsys):
    with pytest.raises(SystemExit):
        run_cli("--model", LLAMA, "--method", "ppo")
    assert "dpo" in capsys.readouterr().err


def test_where_the_reference_forward_is_the_peak_the_advice_says_so():
    """Eager attention (Gemma 2) holds every head's scores in the reference forward too."""
    request = EstimateRequest(
        "catalog:gemma-2-2b",
        method="dpo",
        quantization="nf4",
        batch_size=2,
        seq_len=2048,
        vram_bytes=24 * GIB,
        chunked_attention="off",
    )
    estimate = estimate_memory(request)
    assert estimate.peak_moment == "reference" and estimate.details["reference_forward"] > 0
    assert "reference forward" in estimate.explanations["temporaries"]
    line = next(a for a in estimate.advice if a.startswith("DPO's reference forward"))
    assert "is this step's peak" in line
    assert estimate_memory(replace(request, method="simpo")).details["reference_forward"] == 0
    # left at "auto", chunked attention replaces the eager scores (the reference forward's too)
    auto = estimate_memory(replace(request, chunked_attention="auto"))
    assert auto.fits and not estimate.fits and auto.peak_moment != "reference"
