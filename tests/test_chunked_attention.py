"""Chunked attention is eager attention without an L×L matrix: same loss, logits and gradients.

A tiny random Gemma 2 (transformers runs it eager-only) with soft-capped attention and output
logits and layers alternating sliding-window (window 12) and full attention; sequences of 48
tokens in blocks of 16 rows, so blocks start inside and outside the window. Padding, packed
sequences (``position_ids`` restarting, no mask — transformers' eager path isolates them when
there is no KV cache, so ``use_cache=False``), cached generation, gradient checkpointing, peft and
a 4-bit model loaded by ``load_model`` are each compared with eager on the same weights.
"""

from __future__ import annotations

import pytest
import torch

from lora_studio.core.train.attention import (
    CHUNKED_ATTENTION,
    MAX_CHUNK_ROWS,
    chunk_rows,
    needs_chunked_attention,
    register_chunked_attention,
    use_chunked_attention,
)

LENGTH = 48
CHUNK = 16
WINDOW = 12


def gemma2_config(layers: int = 4, **overrides):
    from transformers import Gemma2Config

    settings = {
        "vocab_size": 128,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": layers,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "sliding_window": WINDOW,
        "layer_types": ["sliding_attention", "full_attention"] * (layers // 2),
        "attn_logit_softcapping": 2.0,  # small enough for tanh to bend these scores
        "final_logit_softcapping": 5.0,
        "initializer_range": 0.2,
        "max_position_embeddings": 1024,
        "pad_token_id": 0,
    }
    return Gemma2Config(**{**settings, **overrides})


@pytest.fixture()
def gemma2():
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(gemma2_config(), dtype=torch.float32)
    assert model.config._attn_implementation == "eager"  # what makes this test worth running
    return model.train()


def step(model, inputs, **extra):
    """Loss, logits and every parameter's gradient of one forward + backward."""
    model.zero_grad(set_to_none=True)
    out = model(**inputs, use_cache=False, **extra)
    out.loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return out.loss.detach(), out.logits.detach(), grads


def assert_same_step(expected, got, real):
    """Loss equal, logits equal where ``real``, every gradient equal within 1e-5 of its norm."""
    (loss, logits, grads), (got_loss, got_logits, got_grads) = expected, got
    assert got_loss.item() == pytest.approx(loss.item(), rel=1e-6)
    torch.testing.assert_close(got_logits[real], logits[real], rtol=1e-5, atol=1e-5)
    assert got_grads.keys() == grads.keys()
    for name, grad in grads.items():
        error = ((got_grads[name] - grad).norm() / grad.norm()).item()
        assert error < 1e-5, f"{name}: gradient differs from eager by {error:.2e} of its norm"


def sample(lengths: list[int], left: bool = False):
    """Padded batch of random tokens: labels -100 on padding, as the project's collator makes."""
    torch.manual_seed(1)
    width = max(lengths)
    ids = torch.randint(1, 128, (len(lengths), width))
    mask = torch.zeros_like(ids)
    for row, n in enumerate(lengths):
        if left:
            mask[row, width - n :] = 1
        else:
            mask[row, :n] = 1
    ids = ids.masked_fill(mask == 0, 0)
    labels = ids.masked_fill(mask == 0, -100)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


CASES = {
    "one_sequence": lambda: {k: v for k, v in sample([LENGTH]).items() if k != "attention_mask"},
    "right_padding": lambda: sample([LENGTH, LENGTH - 5]),
    # 28 padding tokens: padding queries past the window see no key at all in sliding layers
    "right_padding_past_window": lambda: sample([LENGTH, LENGTH - 28]),
    # the last padding position's logits predict the first real token, so its output counts
    "left_padding": lambda: sample([LENGTH, LENGTH - 9], left=True),
}


@pytest.mark.parametrize("case", CASES)
def test_loss_logits_and_gradients_equal_eager(gemma2, case):
    inputs = CASES[case]()
    real = inputs.get("attention_mask", torch.ones_like(inputs["input_ids"])).bool()
    eager = step(gemma2, inputs)
    assert use_chunked_attention(gemma2)
    assert gemma2.config._attn_implementation == CHUNKED_ATTENTION
    assert_same_step(eager, step(gemma2, inputs, query_chunk_size=CHUNK), real)


def test_packed_sequences_equal_eager_and_stay_isolated(gemma2):
    torch.manual_seed(2)
    lengths = [20, 17, 11]
    ids = torch.randint(1, 128, (1, sum(lengths)))
    positions = torch.cat([torch.arange(n) for n in lengths])[None]
    labels = ids.clone()
    labels[0, [0, 20, 37]] = -100  # no example learns from the one before
    inputs = {"input_ids": ids, "labels": labels, "position_ids": positions}
    eager = step(gemma2, inputs)
    use_chunked_attention(gemma2)
    chunked = step(gemma2, inputs, query_chunk_size=CHUNK)
    assert_same_step(eager, chunked, torch.ones_like(ids, dtype=torch.bool))

    gemma2.eval()
    with torch.no_grad():
        alone = gemma2(input_ids=ids[:, 20:37], use_cache=False, query_chunk_size=CHUNK).logits
    torch.testing.assert_close(chunked[1][:, 20:37], alone, rtol=1e-5, atol=1e-5)


def test_gradient_checkpointing_nests_and_stays_exact(gemma2):
    gemma2.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    inputs = sample([LENGTH, LENGTH - 5])
    eager = step(gemma2, inputs)
    use_chunked_attention(gemma2)
    assert_same_step(eager, step(gemma2, inputs, query_chunk_size=CHUNK), inputs["attention_mask"].bool())


def test_cached_generation_equals_eager(gemma2):
    """Decoding with a KV cache takes eager's (one-row) mask; prefill takes the chunked path."""
    gemma2.eval()
    prompt = sample([20, 14], left=True)
    settings = {"max_new_tokens": 8, "do_sample": False, "pad_token_id": 0}
    inputs = {"input_ids": prompt["input_ids"], "attention_mask": prompt["attention_mask"]}
    with torch.no_grad():
        eager = gemma2.generate(**inputs, **settings, output_logits=True, return_dict_in_generate=True)
        use_chunked_attention(gemma2)
        chunked = gemma2.generate(**inputs, **settings, output_logits=True, return_dict_in_generate=True)
    assert torch.equal(chunked.sequences, eager.sequences)
    torch.testing.assert_close(torch.stack(chunked.logits), torch.stack(eager.logits), rtol=1e-5, atol=1e-5)


class OutputSizes(torch.utils._python_dispatch.TorchDispatchMode):
    """Records every op's name and its largest output, forward and backward."""

    def __init__(self):
        super().__init__()
        self.largest = 0
        self.ops: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.ops.add(func.overloadpacket.__name__)
        for tensor in torch.utils._pytree.tree_leaves(out):
            if isinstance(tensor, torch.Tensor):
                self.largest = max(self.largest, tensor.numel())
        return out


def test_no_tensor_of_sequence_squared_elements_is_allocated():
    from transformers import AutoModelForCausalLM

    length, heads = 512, 4
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(gemma2_config(layers=2, sliding_window=100), dtype=torch.float32)
    ids = torch.randint(1, 128, (1, length))
    inputs = {"input_ids": ids, "labels": ids, "attention_mask": torch.ones_like(ids)}

    def largest(**extra):
        with OutputSizes() as sizes:
            model(**inputs, use_cache=False, **extra).loss.backward()
        assert "_softmax_backward_data" in sizes.ops  # backward ran under the probe too
        return sizes.largest

    assert largest() >= length * length * heads  # eager: the scores of all heads
    use_chunked_attention(model)
    assert largest(query_chunk_size=64) < length * length  # not even eager's L×L mask


def test_mask_function_passes_only_2d_masks_for_standard_patterns(gemma2):
    from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

    use_chunked_attention(gemma2)
    embeds = torch.zeros(2, LENGTH, 64)

    def masks(attention_mask=None, position_ids=None, **extra):
        common = {"config": gemma2.config, "inputs_embeds": embeds, "cache": None}
        common.update(attention_mask=attention_mask, position_ids=position_ids, **extra)
        return create_causal_mask(**common), create_sliding_window_causal_mask(**common)

    assert masks() == (None, None)
    right = sample([LENGTH, LENGTH - 5])["attention_mask"]
    assert [m.dtype for m in masks(right)] == [torch.bool, torch.bool]
    left = sample([LENGTH, LENGTH - 5], left=True)["attention_mask"]
    assert [m.dtype for m in masks(left)] == [torch.uint8, torch.uint8]  # queries that see no key
    long_right = sample([LENGTH, LENGTH - 28])["attention_mask"]
    assert [m.dtype for m in masks(long_right)] == [torch.bool, torch.uint8]  # only past the window
    packed = torch.cat([torch.arange(30), torch.arange(18)]).expand(2, -1)
    full, sliding = masks(position_ids=packed)
    assert full.shape == (2, LENGTH) and full.dtype == torch.int64
    assert full[0].tolist() == [0] * 30 + [1] * 18
    assert torch.equal(sliding, full)
    # a pattern it does not know gets eager's own 4D mask
    custom = masks(or_mask_function=lambda b, h, q, kv: kv == 0)
    assert all(m.shape == (2, 1, LENGTH, LENGTH) for m in custom)


def test_peft_wrapped_4bit_model_from_load_model_switches(tmp_path, default_model_dir):
    from peft import LoraConfig, get_peft_model

    from lora_studio.core.models import load_model
    from lora_studio.tiny_models import make_tiny_model

    folder = make_tiny_model(tmp_path / "tiny-gemma2", default_model_dir, model_type="gemma2")
    model, _ = load_model(str(folder), quantization="nf4", dtype="bf16", device="cpu")
    model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    model.train()
    ids = torch.randint(1, 1000, (1, 40))
    inputs = {"input_ids": ids, "labels": ids, "attention_mask": torch.ones_like(ids)}
    eager = step(model, inputs)
    assert use_chunked_attention(model)
    assert model.get_base_model().config._attn_implementation == CHUNKED_ATTENTION
    assert use_chunked_attention(model)  # a second call finds it switched
    chunked = step(model, inputs, query_chunk_size=16)
    # bf16 compute: block-wise matmuls may round differently from eager's
    assert chunked[0].item() == pytest.approx(eager[0].item(), rel=1e-2)
    assert chunked[2].keys() == eager[2].keys() and eager[2]
    for name, grad in eager[2].items():
        error = ((chunked[2][name].float() - grad.float()).norm() / grad.float().norm()).item()
        assert error < 0.05, f"{name}: {error:.3f}"


def test_sdpa_models_are_left_alone(tiny_model_dir):
    from transformers import AutoConfig, AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    assert model.config._attn_implementation == "sdpa"
    assert not use_chunked_attention(model)
    assert model.config._attn_implementation == "sdpa"
    assert not needs_chunked_attention(AutoConfig.from_pretrained(tiny_model_dir))


def test_eager_only_architectures_need_chunked_attention():
    assert needs_chunked_attention(gemma2_config())


def test_transformers_accepts_the_registered_name_at_load():
    from transformers import AutoModelForCausalLM

    register_chunked_attention()
    model = AutoModelForCausalLM.from_config(gemma2_config(), attn_implementation=CHUNKED_ATTENTION)
    assert model.config._attn_implementation == CHUNKED_ATTENTION
    assert "_attn_implementation_internal" not in model.config.to_dict()  # never saved with the model


def test_block_rows_keep_scores_near_the_budget():
    assert chunk_rows(1, 16, 32768) == 128  # Gemma-2-9B at 32k: 2^26 score elements
    assert chunk_rows(1, 16, 32768) * 16 * 32768 <= 2**26
    assert chunk_rows(1, 32, 2**20) == 64  # never thinner than 64 rows
    assert chunk_rows(1, 4, 512) == MAX_CHUNK_ROWS  # short sequences: blocks still skip masked keys
