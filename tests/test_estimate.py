"""The analytic memory estimate: API, catalog, errors, invariants, advice, speed and the CLI."""

from __future__ import annotations

import json
import re
from dataclasses import replace

import pytest

from lora_studio.core.config import RunConfig
from lora_studio.core.errors import ConfigError, LoraStudioError, ModelSourceError
from lora_studio.core.estimate import (
    EstimateRequest,
    estimate_memory,
    find_catalog_model,
    find_gpu,
    load_gpu_catalog,
    load_model_catalog,
    model_shape,
)

GIB = 2**30
KEYS = {
    "parameters": {"total", "quantized", "unquantized", "trainable"},
    "bytes": {
        "weights_quantized",
        "weights_unquantized",
        "lora_weights",
        "gradients",
        "optimizer",
        "activations",
        "logits",
        "overhead",
        "total",
    },
}


def tiny_config(tmp_path, **fields):
    """A config.json alone is enough for an estimate (no weights)."""
    config = {
        "model_type": "llama",
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "num_hidden_layers": 2,
        "vocab_size": 512,
        "max_position_embeddings": 2048,
        "tie_word_embeddings": False,
        **fields,
    }
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(config))
    return str(path)


def test_json_shape_has_every_key_of_the_issue_and_integers():
    data = estimate_memory(
        EstimateRequest("catalog:SmolLM2-135M", vram_bytes=8 * GIB, batch_size=1)
    ).to_dict()
    for section, keys in KEYS.items():
        assert keys <= set(data[section]), section
        assert all(isinstance(v, int) for v in data[section].values())
    assert isinstance(data["device_bytes"], int) and data["fits"] is True
    assert isinstance(data["advice"], list) and data["advice"]
    assert json.loads(json.dumps(data)) == data


def test_components_add_up_to_the_total():
    for kw in (
        {},
        {"quantization": "nf4", "gradient_checkpointing": True},
        {"use_dora": True, "batch_size": 4},
    ):
        sizes = estimate_memory(EstimateRequest("catalog:Qwen2.5-0.5B", **kw)).bytes
        assert sum(v for k, v in sizes.items() if k != "total") == sizes["total"], kw


def test_catalog_parameter_counts_match_the_published_sizes():
    expected = {"Llama-3.1-8B": 8_030_261_248, "Llama-3.1-70B": 70_553_706_496, "Qwen2.5-7B": 7_615_616_512}
    for name, count in expected.items():
        assert estimate_memory(EstimateRequest(f"catalog:{name}", batch_size=1)).parameters["total"] == count


def test_every_catalog_model_estimates_and_every_gpu_resolves():
    for model in load_model_catalog():
        assert model.source
        estimate = estimate_memory(EstimateRequest(f"catalog:{model.name}", quantization="nf4", batch_size=1))
        assert estimate.total_bytes > estimate.parameters["total"] // 2  # at least the 4-bit weights
    for gpu in load_gpu_catalog():
        assert find_gpu(gpu.name) == gpu and gpu.memory_bytes > 4 * GIB


def test_catalog_lookup_ignores_case_and_spacing():
    assert find_gpu("rtx3060").name == "RTX 3060"
    assert find_gpu("A100").memory_gib == 80
    assert find_catalog_model("catalog:llama-3.1-8b-instruct").name == "Llama-3.1-8B"


@pytest.mark.parametrize(
    ("kwargs", "error", "listed"),
    [
        ({"model": "catalog:Nope"}, ModelSourceError, "Llama-3.1-8B"),
        ({"quantization": "nf5"}, ConfigError, "nf4"),
        ({"optimizer": "sgd"}, ConfigError, "paged_adamw_8bit"),
        ({"compute_dtype": "fp8"}, ConfigError, "bf16"),
        ({"device": "tpu"}, ConfigError, "cuda"),
        ({"targets": ["q_prj"]}, ConfigError, "q_proj"),
        ({"double_quant": True}, ConfigError, "4-bit"),
        ({"batch_size": 0}, ConfigError, "at least 1"),
    ],
)
def test_bad_input_is_a_clear_error_listing_the_choices(kwargs, error, listed):
    request = {"model": "catalog:SmolLM2-135M", **kwargs}
    with pytest.raises(error, match=listed):
        estimate_memory(EstimateRequest(**request))


def test_unknown_gpu_lists_the_catalog():
    with pytest.raises(ConfigError, match="RTX 4090"):
        find_gpu("RTX 9999")


def test_each_memory_saver_saves_where_it_should():
    base = EstimateRequest("catalog:Llama-3.1-8B", batch_size=2, seq_len=1024)
    plain = estimate_memory(base).bytes

    def sizes(**kw):
        return estimate_memory(EstimateRequest(**{**base.__dict__, **kw})).bytes

    nf4 = sizes(quantization="nf4")
    assert nf4["weights_quantized"] + nf4["weights_unquantized"] < 0.4 * plain["weights_unquantized"]
    assert sizes(quantization="nf4", double_quant=True)["weights_quantized"] < nf4["weights_quantized"]
    assert sizes(gradient_checkpointing=True)["activations"] < 0.1 * plain["activations"]
    assert sizes(optimizer="paged_adamw_8bit")["optimizer"] < 0.3 * plain["optimizer"]
    assert sizes(lora_r=8)["lora_weights"] == plain["lora_weights"] // 2
    assert sizes(batch_size=4)["activations"] > 1.9 * plain["activations"]
    assert sizes(chunked_loss=False, seq_len=4096)["logits"] > 3 * sizes(seq_len=4096)["logits"]


def test_lean_kbit_prep_keeps_the_head_in_16_bit_and_peft_prep_upcasts_it():
    lean = estimate_memory(EstimateRequest("catalog:Llama-3.1-8B", quantization="nf4", batch_size=1)).bytes
    peft = estimate_memory(
        EstimateRequest("catalog:Llama-3.1-8B", quantization="nf4", lean_kbit_prep=False, batch_size=1)
    ).bytes
    buffers = model_shape("catalog:Llama-3.1-8B").buffer_bytes  # RoPE tables: fp32 in both
    assert peft["weights_unquantized"] - buffers == 2 * (lean["weights_unquantized"] - buffers)
    assert peft["activations"] > lean["activations"]  # fp32 residual stream


def test_cpu_has_no_overhead_and_computes_in_fp32():
    estimate = estimate_memory(EstimateRequest("catalog:SmolLM2-135M", device="cpu", batch_size=1))
    assert estimate.bytes["overhead"] == 0 and estimate.dtype == "fp32"


def test_a_pre_ampere_gpu_trains_in_fp16():
    request = EstimateRequest(
        "catalog:SmolLM2-135M", gpu="T4", vram_bytes=find_gpu("T4").memory_bytes, batch_size=1
    )
    assert estimate_memory(request).dtype == "fp16"


def test_advice_when_it_does_not_fit_names_single_changes_with_their_savings():
    estimate = estimate_memory(
        EstimateRequest(
            "catalog:Llama-3.1-8B",
            quantization="nf4",
            seq_len=2048,
            vram_bytes=find_gpu("RTX 3060").memory_bytes,
            batch_size=1,
        )
    )
    assert estimate.fits is False
    text = "\n".join(estimate.advice)
    assert "gradient checkpointing" in text and "saves" in text and "(fits)" in text
    assert "8-bit optimizer" in text and "LoRA rank" in text


SAVERS = {
    "Keep embeddings and lm_head in bf16": {"lean_kbit_prep": True},
    "Compute the loss in chunks": {"chunked_loss": True},
    "Offload checkpointed activations to CPU memory": {"checkpoint_offload": True},
}


def test_advice_names_each_memory_saver_that_is_off_with_the_estimators_own_saving():
    """The standard transformers + peft path on a 12 GB card: each exact saver, and what it saves."""
    standard = EstimateRequest(
        "catalog:Llama-3.1-8B",
        quantization="nf4",
        double_quant=True,
        lora_r=32,
        seq_len=2048,
        gradient_checkpointing=True,
        lean_kbit_prep=False,
        chunked_loss=False,
        vram_bytes=12 * GIB,
        batch_size=1,
        checkpoint_offload="off",
        tiled_mlp="off",
        norm_recompute="off",
    )
    estimate = estimate_memory(standard)
    assert estimate.fits is False
    for saver, change in SAVERS.items():
        line = next(a for a in estimate.advice if a.startswith(saver))
        saved = estimate.total_bytes - estimate_memory(replace(standard, **change)).total_bytes
        assert saved > 0.3 * GIB and f"saves {saved / GIB:.2f} GB" in line, line
    ours = replace(
        standard, **{k: v for change in SAVERS.values() for k, v in change.items()}, vram_bytes=4 * GIB
    )
    advice = estimate_memory(ours).advice
    assert not any(a.startswith(tuple(SAVERS)) for a in advice), advice


def test_advice_offers_offloaded_checkpointing_when_checkpointing_is_off():
    req = EstimateRequest(
        "catalog:Llama-3.1-8B", quantization="nf4", seq_len=4096, vram_bytes=12 * GIB, batch_size=1
    )
    line = next(
        a for a in estimate_memory(req).advice if a.startswith("Turn on offloaded gradient checkpointing")
    )
    assert "(fits)" in line
    cpu = estimate_memory(replace(req, device="cpu", vram_bytes=8 * GIB)).advice
    assert not any("offload" in a for a in cpu)  # offloading to the host means nothing on a CPU


def test_advice_when_it_fits_gives_the_largest_batch_and_sequence():
    estimate = estimate_memory(
        EstimateRequest("catalog:Qwen2.5-0.5B", quantization="nf4", vram_bytes=24 * GIB, batch_size=1)
    )
    batch_line = next(line for line in estimate.advice if line.startswith("Largest batch size"))
    batch = int(re.match(r"Largest batch size that fits at sequence length 512: (\d+)", batch_line)[1])
    # the larger batch pads its rows: "auto" turns on chunked attention (no seq × seq mask), and says so
    assert "('auto' turns on chunked attention" in batch_line
    request = EstimateRequest(
        "catalog:Qwen2.5-0.5B", quantization="nf4", vram_bytes=24 * GIB, batch_size=batch
    )
    assert estimate_memory(request).fits
    assert not estimate_memory(EstimateRequest(**{**request.__dict__, "batch_size": batch + 1})).fits


def test_a_70b_model_does_not_fit_a_12gb_card_and_the_advice_says_what_would():
    request = EstimateRequest("catalog:Llama-3.1-70B", quantization="nf4", vram_bytes=12 * GIB, batch_size=1)
    estimate = estimate_memory(request)
    assert not estimate.fits and estimate.bytes["weights_quantized"] > 30 * GIB
    assert any("smallest catalog GPU" in line for line in estimate.advice)


def test_from_config_mirrors_the_run_configuration():
    config = RunConfig().with_overrides(
        {"model.quantization": "nf4", "lora.r": 8, "training.batch_size": 3, "data.max_seq_len": 256}
    )
    request = EstimateRequest.from_config(config, device="cuda", vram_bytes=None)
    assert (request.quantization, request.lora_r, request.batch_size, request.seq_len) == ("nf4", 8, 3, 256)
    assert request.model == "default" and request.lora_dropout == config.lora.dropout
    assert request.chunked_loss == config.training.chunked_loss


def test_a_config_json_without_weights_is_enough(tmp_path):
    estimate = estimate_memory(EstimateRequest(tiny_config(tmp_path), batch_size=1))
    assert (
        estimate.parameters["total"]
        == 512 * 64 * 2 + 2 * (64 * 64 * 2 + 64 * 32 * 2 + 64 * 128 * 3 + 128) + 64
    )


def test_repeated_estimates_reuse_the_analysed_model(monkeypatch):
    """The GUI re-estimates on every edit: only the first estimate of a model builds it (on the
    meta device); the speed itself is measured by bench/estimator_speed.py (< 50 ms per estimate)."""
    from lora_studio.core import models

    estimate_memory(
        EstimateRequest("catalog:Llama-3.1-70B", batch_size=1)
    )  # builds and caches the meta model
    builds = []
    real = models.meta_model
    monkeypatch.setattr(models, "meta_model", lambda *a, **k: builds.append(1) or real(*a, **k))
    results = [
        estimate_memory(EstimateRequest("catalog:Llama-3.1-70B", lora_r=r, vram_bytes=24 * GIB, batch_size=1))
        for r in (8, 16, 32, 64)
    ]
    assert builds == []
    adapters = [r.parameters["trainable"] for r in results]
    assert adapters == sorted(adapters) and adapters[1] == 2 * adapters[0]


def test_the_first_estimate_of_a_new_model_builds_it_once_and_reads_no_weights(tmp_path, monkeypatch):
    from lora_studio.core import models

    builds = []
    real = models.meta_model
    monkeypatch.setattr(models, "meta_model", lambda *a, **k: builds.append(1) or real(*a, **k))
    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("an estimate loaded weights"))
    estimate_memory(EstimateRequest(tiny_config(tmp_path, hidden_size=128), vram_bytes=GIB, batch_size=1))
    assert builds == [1]


# -- the command line -------------------------------------------------------------------------


def run_cli(*args):
    from lora_studio.cli import main

    return main(["estimate", *args])


def test_cli_prints_an_aligned_table_with_verdict_and_advice(capsys):
    standard = ("--peft-prep", "--full-loss", "--grad-checkpointing", "--seq-len", "2048", "--no-offload")
    standard += ("--tiled-mlp", "off", "--norm-recompute", "off", "--chunked-attention", "off")
    assert run_cli("--model", "catalog:Llama-3.1-8B", "--quant", "nf4", "--gpu", "RTX 3060", *standard) == 0
    out = capsys.readouterr().out
    assert "Quantized weights" in out and "Verdict: does NOT fit" in out
    assert "gradient checkpointing, peft fp32 preparation, full loss, on RTX 3060" in out
    assert "Compute the loss in chunks" in out and "(training.checkpoint_offload; --offload)" in out
    rows = [line for line in out.splitlines() if line[:1].isalpha() and line.split()[-1].count(".") == 1]
    assert rows
    table = [line for line in out.splitlines() if line.startswith(("Quantized weights", "Total"))]
    assert len({line.index(".") for line in table}) == 1  # GB column aligned on the decimal point


def test_cli_json_is_the_estimate(capsys):
    assert (
        run_cli(
            "--model", "catalog:Qwen2.5-7B", "--quant", "nf4", "--batch-size", "1", "--vram", "24", "--json"
        )
        == 0
    )
    data = json.loads(capsys.readouterr().out)
    assert data["device_bytes"] == 24 * GIB and data["fits"] is True
    assert KEYS["bytes"] <= set(data["bytes"])


def test_with_no_flags_the_cli_and_the_request_estimate_the_default_run():
    """One source for defaults: the estimate of a bare command is the estimate of ``RunConfig()``."""
    import argparse

    from lora_studio.cli.estimate import register, request_from_args
    from lora_studio.core.config import RunConfig

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["estimate", "--model", "catalog:Qwen2.5-7B"])
    config = RunConfig.from_dict({"model": {"source": "catalog:Qwen2.5-7B"}})
    from_config = EstimateRequest.from_config(config, device="cuda", vram_bytes=None)
    assert request_from_args(args) == from_config == EstimateRequest("catalog:Qwen2.5-7B")


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--model", "catalog:Nope"], "choose one of"),
        (["--model", "catalog:Qwen2.5-7B", "--gpu", "RTX 9999"], "RTX 3060"),
        (["--model", "catalog:Qwen2.5-7B", "--quant", "nf5"], "nf4"),
        (["--model", "catalog:Qwen2.5-7B", "--optimizer", "sgd"], "adamw_torch"),
    ],
)
def test_cli_errors_are_one_line_with_the_choices_and_non_zero(capsys, args, needle):
    assert run_cli(*args) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error:") and needle in err


def test_cli_lists_the_catalogs(capsys):
    assert run_cli("--list-gpus") == 0 and "RTX 4090" in capsys.readouterr().out
    assert run_cli("--list-models") == 0 and "catalog:Llama-3.1-8B" in capsys.readouterr().out


def test_the_estimate_error_types_are_the_projects_own():
    assert issubclass(ConfigError, LoraStudioError) and issubclass(ModelSourceError, LoraStudioError)


def test_advice_names_the_gpu_count_that_fits_with_fsdp():
    from lora_studio.core.estimate import EstimateRequest, estimate_memory

    estimate = estimate_memory(
        EstimateRequest(
            model="catalog:Llama-3.1-70B", quantization="nf4", seq_len=512, vram_bytes=24 * 1024**3
        )
    )
    assert estimate.fits is False
    line = next(a for a in estimate.advice if "FSDP" in a)
    assert "GPUs of this size" in line and "docs/multi-gpu.md" in line
