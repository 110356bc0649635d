"""The long-context savers are exact, and "auto" turns them on only when a run needs them."""

import pytest
import torch

from lora_studio.core.train import long_context as lc
from lora_studio.core.train.long_context import Savers, active_savers, apply_savers, remove_savers

SLOW = pytest.mark.slow


def lora_wrap(model, dropout=0.0):
    from peft import LoraConfig, get_peft_model

    return get_peft_model(
        model, LoraConfig(r=4, target_modules="all-linear", lora_dropout=dropout, init_lora_weights=False)
    )


def tiny(config_class, **extra):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    config = config_class(
        hidden_size=64,
        intermediate_size=176,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        vocab_size=128,
        **extra,
    )
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.config.use_cache = False
    return lora_wrap(model)


def step(model, ids, labels=None):
    model.zero_grad(set_to_none=True)
    loss = model(input_ids=ids, labels=ids if labels is None else labels).loss
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return loss.detach(), grads


@pytest.fixture()
def small_tiles(monkeypatch):
    """Tiles of a few rows, so a 300-token sequence is split into many of them."""
    monkeypatch.setattr(lc, "MLP_TILE_ELEMENTS", 176 * 64)
    monkeypatch.setattr(lc, "MIN_TILE_TOKENS", 64)
    monkeypatch.setattr(lc, "NORM_TILE_ELEMENTS", 64 * 48)


def assert_same(before, after, tolerance=1e-5):
    """Same loss; each gradient the same up to fp32 rounding (tiles sum over tokens in another
    order), measured as the norm of the difference against the gradient's own norm."""
    (loss0, grads0), (loss1, grads1) = before, after
    assert loss1.item() == pytest.approx(loss0.item(), rel=1e-6)
    worst = max(((grads1[n] - g).norm() / g.norm().clamp(min=1e-30)).item() for n, g in grads0.items())
    assert worst < tolerance


def config_classes():
    from transformers import Gemma2Config, LlamaConfig, Qwen3Config

    return [
        pytest.param(LlamaConfig, {}, id="llama"),
        pytest.param(Qwen3Config, {}, id="qwen3-qk-norm"),
        pytest.param(Gemma2Config, {"sliding_window": 4096}, id="gemma2-four-norms"),
    ]


@pytest.mark.usefixtures("small_tiles")
@pytest.mark.parametrize("checkpointing", [True, False], ids=["checkpointed", "plain"])
@pytest.mark.parametrize(("config_class", "extra"), config_classes())
def test_tiled_mlp_and_norm_recompute_give_the_same_loss_and_gradients(config_class, extra, checkpointing):
    model = tiny(config_class, **extra)
    if checkpointing:
        model.base_model.model.gradient_checkpointing_enable(
            gradient_checkpointing_kwargs={"use_reentrant": False}
        )
    model.train()
    torch.manual_seed(1)
    ids = torch.randint(0, 128, (2, 300))
    labels = ids.clone()
    labels[0, :40] = -100
    plain = step(model, ids, labels)
    apply_savers(model, Savers(tiled_mlp=True, norm_recompute=True))
    assert active_savers(model) == Savers(tiled_mlp=True, norm_recompute=True)
    assert_same(plain, step(model, ids, labels))


@pytest.mark.usefixtures("small_tiles")
def test_savers_split_the_work_into_tiles_and_come_off_again():
    from transformers import LlamaConfig

    model = tiny(LlamaConfig)
    model.train()
    calls = []
    layer = lc.decoder_layers(model)[0]
    layer.mlp.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[-2]))
    apply_savers(model, Savers(tiled_mlp=True, norm_recompute=True))
    apply_savers(model, Savers(tiled_mlp=True, norm_recompute=True))  # twice: still one patch each
    step(model, torch.randint(0, 128, (1, 300)))
    tile = lc.mlp_tile_tokens(176)
    assert tile == 64 and calls == [300]  # the module's own hook sees the whole input once ...
    remove_savers(model)
    assert active_savers(model) == Savers()
    assert "forward" not in vars(layer.mlp)


def test_mlp_tiles_hold_a_bounded_number_of_elements():
    assert lc.mlp_tile_tokens(14336) == 2304  # Llama-3.1-8B: 2,304 tokens × 14,336 = 2^25 elements
    assert lc.mlp_tile_tokens(14336) * 14336 <= lc.MLP_TILE_ELEMENTS
    assert lc.mlp_tile_tokens(10**7) == lc.MIN_TILE_TOKENS
    assert lc.mlp_tile_tokens(1536) % 64 == 0


def test_eval_and_generation_run_the_original_forward(monkeypatch):
    from transformers import LlamaConfig

    model = tiny(LlamaConfig)
    apply_savers(model, Savers(tiled_mlp=True, norm_recompute=True))
    used = []
    monkeypatch.setattr("torch.utils.checkpoint.checkpoint", lambda *a, **k: used.append(1))
    with torch.no_grad():
        model(input_ids=torch.randint(0, 128, (1, 40)))
    assert used == []


@SLOW
def test_the_default_model_trains_the_same_with_the_savers(default_model_dir, monkeypatch):
    """SmolLM2-135M (the app's default model) with checkpointing: the same loss and gradients.

    In float64, so that what is compared is the maths: in fp32 the plain path alone is already
    1e-3 (relative) away from its own float64 gradients on this 30-layer model, and the tiles'
    other summation order moves the fp32 result by less than that."""
    from transformers import AutoModelForCausalLM

    monkeypatch.setattr(lc, "MLP_TILE_ELEMENTS", 1536 * 128)
    monkeypatch.setattr(lc, "MIN_TILE_TOKENS", 64)
    monkeypatch.setattr(lc, "NORM_TILE_ELEMENTS", 576 * 100)
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(default_model_dir, dtype=torch.float64)
    base.config.use_cache = False
    base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = lora_wrap(base)
    model.train()
    torch.manual_seed(1)
    ids = torch.randint(0, 49152, (1, 400))
    plain = step(model, ids)
    apply_savers(model, Savers(tiled_mlp=True, norm_recompute=True))
    assert_same(plain, step(model, ids), tolerance=1e-10)


# -- "auto" -----------------------------------------------------------------------------------


def run_config(seq_len, **training):
    from lora_studio.core.config import RunConfig

    return RunConfig.from_dict(
        {
            "model": {"source": "catalog:Llama-3.1-8B", "quantization": "nf4", "compute_dtype": "bf16"},
            "lora": {"r": 32},
            "data": {"max_seq_len": seq_len},
            "training": {"gradient_checkpointing": True, "batch_size": 1, **training},
        }
    )


@pytest.fixture()
def gpu_12gb(monkeypatch):
    from lora_studio.core.estimate import savers

    monkeypatch.setattr(savers, "device_memory", lambda device: 12 * 2**30)


def decide(config, device):
    from lora_studio.core.estimate import decide_savers

    return decide_savers(config, device)


@pytest.mark.usefixtures("gpu_12gb")
def test_auto_leaves_the_savers_off_when_the_run_fits():
    savers, why = decide(run_config(1024), "cuda")
    assert savers == Savers()
    assert "fits" in why


@pytest.mark.usefixtures("gpu_12gb")
def test_auto_turns_on_only_as_many_savers_as_the_run_needs():
    from lora_studio.core.estimate import EstimateRequest, estimate_memory

    mid, why_mid = decide(run_config(10000), "cuda")
    long, why_long = decide(run_config(20000), "cuda")
    assert mid.norm_recompute and mid.offload and not mid.tiled_mlp, why_mid
    assert long == Savers(tiled_mlp=True, norm_recompute=True, offload=True), why_long
    assert "tiled MLP" in why_long and "would not fit" in why_long
    # and with them the estimate says the 20k-token run fits the 12 GB card
    req = EstimateRequest.from_config(run_config(20000), device="cuda", vram_bytes=12 * 2**30)
    assert estimate_memory(req).fits


@pytest.mark.usefixtures("gpu_12gb")
def test_on_and_off_are_followed_whatever_the_estimate_says():
    forced, _ = decide(run_config(512, tiled_mlp="on", norm_recompute="on", checkpoint_offload="on"), "cuda")
    assert forced == Savers(tiled_mlp=True, norm_recompute=True, offload=True)
    refused, why = decide(
        run_config(20000, tiled_mlp="off", norm_recompute="off", checkpoint_offload="off"), "cuda"
    )
    assert refused == Savers() and why == "none"


def test_offload_only_applies_with_checkpointing_on_a_gpu():
    savers, _ = decide(run_config(512, checkpoint_offload="on"), "cpu")
    assert not savers.offload


def test_old_configs_with_an_offload_switch_still_read():
    from lora_studio.core.config import RunConfig
    from lora_studio.core.errors import ConfigError

    assert (
        RunConfig.from_dict(
            {"training": {"checkpoint_offload": True, "gradient_checkpointing": True}}
        ).training.checkpoint_offload
        == "on"
    )
    assert (
        RunConfig.from_dict({"training": {"checkpoint_offload": False}}).training.checkpoint_offload == "off"
    )
    with pytest.raises(ConfigError, match="gradient_checkpointing"):
        RunConfig.from_dict({"training": {"checkpoint_offload": "on"}})
    with pytest.raises(ConfigError, match="tiled_mlp"):
        RunConfig.from_dict({"training": {"tiled_mlp": "sometimes"}})


def test_precise_mode_sees_the_savers_take_the_mlp_and_the_norms_out_of_the_peak():
    from lora_studio.core.estimate import EstimateRequest, estimate_memory, estimate_precise

    common = {
        "quantization": "nf4",
        "compute_dtype": "bf16",
        "lora_r": 32,
        "gradient_checkpointing": True,
        "checkpoint_offload": True,
        "seq_len": 16384,
        "batch_size": 1,
    }
    plain = EstimateRequest("catalog:Llama-3.1-8B", tiled_mlp="off", norm_recompute="off", **common)
    saved = EstimateRequest("catalog:Llama-3.1-8B", tiled_mlp="on", norm_recompute="on", **common)
    plain_precise, saved_precise = estimate_precise(plain), estimate_precise(saved)
    # the recomputed layer's MLP intermediates and fp32 norm copies: ~170 KiB of ~300 per token
    assert saved_precise.total_bytes < plain_precise.total_bytes - 2 * 2**30
    for req, precise in ((plain, plain_precise), (saved, saved_precise)):
        assert estimate_memory(req).total_bytes / precise.total_bytes == pytest.approx(1.0, abs=0.1)


def test_chunked_attention_replaces_a_masked_sdpa_exactly():
    """A padded batch hands SDPA a seq × seq mask; the chunked attention gives the same result from
    the 2D padding mask (what "auto" switches an SDPA model to when that mask would not fit)."""
    from transformers import LlamaConfig

    from lora_studio.core.train.attention import CHUNKED_ATTENTION

    model = tiny(LlamaConfig)
    model.train()
    torch.manual_seed(2)
    ids = torch.randint(0, 128, (2, 96))
    mask = torch.ones_like(ids)
    mask[1, 70:] = 0
    labels = ids.masked_fill(mask == 0, -100)

    def run():
        model.zero_grad(set_to_none=True)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    plain = run()
    apply_savers(model, Savers(chunked_attention=True))
    assert model.get_base_model().config._attn_implementation == CHUNKED_ATTENTION
    assert_same(plain, run())


def test_auto_chunks_attention_where_a_seq_by_seq_tensor_would_not_fit():
    from lora_studio.core.estimate import EstimateRequest, plan_for

    common = {"quantization": "nf4", "compute_dtype": "bf16", "gradient_checkpointing": True, "batch_size": 1}
    gemma = plan_for(EstimateRequest("catalog:gemma-2-9b", seq_len=16384, vram_bytes=24 * 2**30, **common))
    assert "chunked_attention" in gemma.auto_savers and gemma.shape.attention == "lora_studio_chunked"
    short = plan_for(EstimateRequest("catalog:gemma-2-9b", seq_len=512, vram_bytes=24 * 2**30, **common))
    assert not short.chunked_attention and short.shape.attention == "eager"
    # an SDPA model without a mask has nothing to chunk: "on" does not apply
    llama = plan_for(EstimateRequest("catalog:Llama-3.1-8B", seq_len=4096, chunked_attention="on", **common))
    assert not llama.chunked_attention
    packed = plan_for(
        EstimateRequest("catalog:Llama-3.1-8B", seq_len=4096, chunked_attention="on", packing=True, **common)
    )
    assert packed.chunked_attention and "chunked attention" in packed.savers


def test_without_an_estimate_the_engine_follows_on_and_leaves_auto_off_saying_so():
    """The engine cannot import the estimate (it sits above it): a caller that hands it no decider
    gets what "on" asks and no "auto" saver, and the run's log line says why."""
    savers, why = lc.fixed_savers(run_config(20000, tiled_mlp="on"), "cuda")
    assert savers == Savers(tiled_mlp=True), why
    assert why == "tiled MLP ('auto' left off: no memory estimate was asked for)"
    savers, why = lc.fixed_savers(
        run_config(
            512, tiled_mlp="off", norm_recompute="off", checkpoint_offload="off", chunked_attention="off"
        ),
        "cuda",
    )
    assert savers == Savers() and why == "none"
