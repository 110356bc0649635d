"""The memory savers are exact: same loss, same gradients as the standard transformers + peft path."""

import pytest
import torch

from lora_studio.core.train.memory_saving import chunked_forward_loss, offload_context


@pytest.fixture()
def lora_model(tiny_model_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model.config.use_cache = False
    return get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))


def batch(vocab=49152):
    torch.manual_seed(1)
    ids = torch.randint(0, vocab, (2, 37))
    labels = ids.clone()
    labels[0, :10] = -100  # a masked prompt
    labels[1, 30:] = -100  # padding
    mask = torch.ones_like(ids)
    mask[1, 30:] = 0
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("num_items", [None, 41])
def test_chunked_loss_and_gradients_equal_the_standard_ones(lora_model, num_items):
    inputs = batch()
    kwargs = {"num_items_in_batch": torch.tensor(num_items)} if num_items else {}
    standard = lora_model(**inputs, **kwargs).loss
    standard.backward()
    expected = grads(lora_model)
    lora_model.zero_grad(set_to_none=True)

    chunked = chunked_forward_loss(lora_model, inputs, kwargs.get("num_items_in_batch"), chunk=16)
    chunked.backward()
    got = grads(lora_model)
    assert chunked.item() == pytest.approx(standard.item(), rel=1e-6)
    for name, grad in expected.items():
        torch.testing.assert_close(got[name], grad, rtol=1e-5, atol=1e-7, msg=name)


def test_offloaded_checkpointing_gives_the_same_gradients(lora_model):
    lora_model.base_model.model.gradient_checkpointing_enable(
        gradient_checkpointing_kwargs={"use_reentrant": False}
    )
    lora_model.base_model.model.enable_input_require_grads()
    lora_model.train()
    inputs = batch()
    lora_model(**inputs).loss.backward()
    plain = grads(lora_model)
    lora_model.zero_grad(set_to_none=True)
    with offload_context(True):
        loss = lora_model(**inputs).loss
    loss.backward()
    for name, grad in grads(lora_model).items():
        torch.testing.assert_close(grad, plain[name], rtol=1e-6, atol=1e-8, msg=name)


def losses(tiny_model_dir, data, runs, **overrides):
    from lora_studio.core.config import RunConfig
    from lora_studio.core.train import events as ev
    from lora_studio.core.train import train

    config = RunConfig.from_dict(
        {
            "model": {"source": str(tiny_model_dir)},
            "lora": {"r": 4, "dropout": 0.0},
            "data": {"path": str(data), "max_seq_len": 64},
            "training": {
                "max_steps": 3,
                "batch_size": 4,
                "learning_rate": 5e-3,
                "save_steps": 100,
                "sample_prompts": [],
            },
            "output": {"runs_dir": str(runs)},
        }
    ).with_overrides(overrides)
    seen = {}
    train(config, lambda e: seen.update({e.step: e.loss}) if isinstance(e, ev.Step) else None)
    return seen


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    import json

    path = tmp_path_factory.mktemp("ms") / "d.jsonl"
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"Question {i}?"},
                {"role": "assistant", "content": f"Answer number {i} from Lumen."},
            ]
        }
        for i in range(8)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_engine_loss_curve_is_the_same_with_and_without_chunked_loss(tiny_model_dir, small_data, tmp_path):
    chunked = losses(tiny_model_dir, small_data, tmp_path / "a", **{"training.chunked_loss": True})
    standard = losses(tiny_model_dir, small_data, tmp_path / "b", **{"training.chunked_loss": False})
    assert chunked == pytest.approx(standard, rel=1e-5)


def test_lean_kbit_preparation_keeps_the_loss_curve(tiny_model_dir, small_data, tmp_path):
    common = {"model.quantization": "nf4", "model.compute_dtype": "bf16"}
    lean = losses(tiny_model_dir, small_data, tmp_path / "a", **common, **{"model.lean_kbit_prep": True})
    blanket = losses(tiny_model_dir, small_data, tmp_path / "b", **common, **{"model.lean_kbit_prep": False})
    assert lean == pytest.approx(blanket, rel=2e-2)


def test_chunked_loss_applies_final_logit_softcapping():
    """Gemma 2 caps its logits before the loss; the chunked loss must give the same number."""
    from lora_studio.core.train.memory_saving import chunked_causal_lm_loss

    torch.manual_seed(0)
    head = torch.nn.Linear(8, 50, bias=False)
    hidden = torch.randn(2, 9, 8) * 10
    labels = torch.randint(0, 50, (2, 9))
    logits = torch.tanh(head(hidden) / 5.0) * 5.0
    expected = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 50), labels[:, 1:].reshape(-1))
    got = chunked_causal_lm_loss(hidden, head, labels, chunk=4, softcap=5.0)
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)


def test_loss_chunks_hold_a_bounded_number_of_logits_whatever_the_vocabulary():
    from lora_studio.core.train.memory_saving import LOSS_CHUNK_ELEMENTS, loss_chunk_tokens

    assert [loss_chunk_tokens(v) for v in (128256, 152064, 49152, 256000)] == [256, 192, 640, 128]
    assert loss_chunk_tokens(1000) == 1024 and loss_chunk_tokens(10**7) == 64  # the bounds
    for vocab in (32000, 49152, 128256, 151936, 152064, 256000):
        tokens = loss_chunk_tokens(vocab)
        assert tokens % 64 == 0 and tokens * vocab <= LOSS_CHUNK_ELEMENTS


def test_chunked_loss_under_autocast_matches_the_standard_loss_under_autocast(lora_model):
    """The Trainer runs both under the same mixed precision (bf16 autocast here, as on a GPU)."""
    inputs = batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        standard = lora_model(**inputs).loss
    standard.backward()
    expected = grads(lora_model)
    lora_model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        chunked = chunked_forward_loss(lora_model, inputs, chunk=16)
    chunked.backward()
    assert chunked.item() == pytest.approx(standard.item(), rel=1e-3)
    for name, grad in grads(lora_model).items():
        torch.testing.assert_close(grad, expected[name], rtol=2e-2, atol=1e-5, msg=name)
