"""Exact agreement with real loaded models: parameter counts, weight bytes and trainable parameters.

"Weight bytes" are the bytes of every distinct storage the loaded model holds: parameters,
buffers and bitsandbytes' quantization-state tensors (absmax, code books, int8 scales).
"""

from __future__ import annotations

import pytest

from lora_studio.core.config import RunConfig
from lora_studio.core.estimate import EstimateRequest, estimate_memory


def storage_bytes(model) -> int:
    """Sum of distinct storages: parameters, buffers, quant states (tied weights count once)."""
    seen: dict[int, int] = {}

    def add(tensor) -> None:
        if tensor is not None and hasattr(tensor, "untyped_storage"):
            storage = tensor.untyped_storage()
            seen.setdefault(storage.data_ptr(), storage.nbytes())

    for param in model.parameters():
        add(param)
        add(getattr(param, "SCB", None))
        state = getattr(param, "quant_state", None)
        if state is not None:
            for tensor in (state.absmax, state.code, state.offset):
                add(tensor)
            if state.state2 is not None:
                add(state.state2.absmax)
                add(state.state2.code)
    for buffer in model.buffers():
        add(buffer)
    return sum(seen.values())


def load(source, quant, dtype, double_quant=False):
    from lora_studio.core.models import load_model

    model, _ = load_model(source, quant, dtype, "cpu", double_quant=double_quant)
    return model


def request(source, quant, dtype, double_quant=False, **kw) -> EstimateRequest:
    return EstimateRequest(
        source, quantization=quant, double_quant=double_quant, compute_dtype=dtype, device="cpu", **kw
    )


def engine_wrap(model, source, quant, dtype, double_quant=False, **lora):
    """peft wrapping exactly as the training engine does it."""
    from lora_studio.core.train import wrap_with_lora

    overrides = {
        "model.source": source,
        "model.quantization": quant,
        "model.compute_dtype": dtype,
        "model.double_quant": double_quant,
        **{f"lora.{k}": v for k, v in lora.items() if k != "lean_kbit_prep"},
    }
    if "lean_kbit_prep" in lora:
        overrides["model.lean_kbit_prep"] = lora["lean_kbit_prep"]
    return wrap_with_lora(model, RunConfig().with_overrides(overrides))


VARIANTS = [
    ("none", False, "fp32"),
    ("none", False, "bf16"),
    ("int8", False, "bf16"),
    ("nf4", False, "bf16"),
    ("nf4", True, "bf16"),
    ("fp4", False, "fp32"),
    ("fp4", True, "bf16"),
]


@pytest.mark.parametrize(("quant", "double_quant", "dtype"), VARIANTS)
def test_weight_bytes_equal_the_loaded_tiny_model(tiny_model_dir, quant, double_quant, dtype):
    source = str(tiny_model_dir)
    loaded = storage_bytes(load(source, quant, dtype, double_quant))
    estimate = estimate_memory(request(source, quant, dtype, double_quant))
    assert estimate.details["weights_as_loaded"] == loaded


@pytest.mark.parametrize("lean", [True, False])
@pytest.mark.parametrize(("quant", "double_quant", "dtype"), VARIANTS)
def test_weights_after_the_engines_preparation_and_lora_are_exact(
    tiny_model_dir, quant, double_quant, dtype, lean
):
    source = str(tiny_model_dir)
    model = engine_wrap(
        load(source, quant, dtype, double_quant), source, quant, dtype, double_quant, lean_kbit_prep=lean
    )
    sizes = estimate_memory(request(source, quant, dtype, double_quant, lean_kbit_prep=lean)).bytes
    assert (
        storage_bytes(model)
        == sizes["weights_quantized"] + sizes["weights_unquantized"] + sizes["lora_weights"]
    )


def test_parameter_counts_equal_the_loaded_models(tmp_path, tiny_model_dir, default_model_dir):
    from conftest import make_tiny_model

    untied = str(make_tiny_model(tmp_path / "untied", default_model_dir, tie=False, layers=3, kv_heads=4))
    for source in (str(tiny_model_dir), untied):
        loaded = sum(p.numel() for p in load(source, "none", "fp32").parameters())
        for quant in ("none", "nf4"):
            assert estimate_memory(request(source, quant, "fp32")).parameters["total"] == loaded


@pytest.mark.parametrize(
    "lora",
    [
        {"target_modules": "all-linear"},
        {"target_modules": ["q_proj", "v_proj"], "r": 8},
        {"target_modules": ["down_proj"], "r": 32},
        {"target_modules": ["o_proj", "gate_proj"], "use_dora": True},
        {"target_modules": "all-linear", "use_dora": True, "r": 4},
    ],
)
def test_trainable_parameters_equal_peft_as_the_engine_wraps(tiny_model_dir, lora):
    source = str(tiny_model_dir)
    model = engine_wrap(load(source, "none", "fp32"), source, "none", "fp32", **lora)
    peft_count = model.get_nb_trainable_parameters()[0]
    targets = lora["target_modules"]
    req = request(
        source,
        "none",
        "fp32",
        lora_r=lora.get("r", 16),
        targets=targets,
        use_dora=lora.get("use_dora", False),
    )
    assert estimate_memory(req).parameters["trainable"] == peft_count


def test_trainable_parameters_of_a_quantized_model_equal_peft(tiny_model_dir):
    source = str(tiny_model_dir)
    model = engine_wrap(load(source, "nf4", "bf16"), source, "nf4", "bf16", r=8)
    req = request(source, "nf4", "bf16", lora_r=8)
    assert estimate_memory(req).parameters["trainable"] == model.get_nb_trainable_parameters()[0]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("quant", "double_quant", "dtype"),
    [("none", False, "bf16"), ("nf4", True, "bf16"), ("int8", False, "bf16")],
)
def test_the_default_model_is_exact_too(default_model_dir, quant, double_quant, dtype):
    model = load("default", quant, dtype, double_quant)
    estimate = estimate_memory(request("default", quant, dtype, double_quant, lora_r=8))
    assert estimate.details["weights_as_loaded"] == storage_bytes(model)
    if quant == "none":
        assert estimate.parameters["total"] == sum(p.numel() for p in model.parameters()) == 134_515_008
    wrapped = engine_wrap(model, "default", quant, dtype, double_quant, r=8)
    assert estimate.parameters["trainable"] == wrapped.get_nb_trainable_parameters()[0]
    sizes = estimate.bytes
    assert (
        storage_bytes(wrapped)
        == sizes["weights_quantized"] + sizes["weights_unquantized"] + sizes["lora_weights"]
    )
