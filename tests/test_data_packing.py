"""Collators: padded batches, and padding-free packing that keeps examples from seeing each other."""

import pytest

from lora_studio.core.config import DataSection
from lora_studio.core.data import make_collator, prepare_dataset


@pytest.fixture(scope="module")
def tokenizer(default_model_dir):
    from lora_studio.core.models import load_tokenizer

    return load_tokenizer(default_model_dir)


@pytest.fixture(scope="module")
def rows(tokenizer):
    """Three demo examples of different lengths, as the trainer receives them (with ``length``)."""
    train = prepare_dataset(DataSection(path="demo"), tokenizer).train
    by_length = {}
    for i, n in enumerate(train["length"]):
        by_length.setdefault(n, i)
    picks = sorted(by_length)[:: max(1, len(by_length) // 3)][:3]
    return [train[by_length[n]] for n in picks]


def test_padded_batch(tokenizer, rows):
    batch = make_collator(tokenizer, packing=False)(rows)
    width = max(len(r["input_ids"]) for r in rows)
    assert set(batch) == {"input_ids", "labels", "attention_mask"} and batch["input_ids"].shape == (3, width)
    for i, row in enumerate(rows):
        n = len(row["input_ids"])
        assert batch["input_ids"][i, :n].tolist() == row["input_ids"]
        assert batch["labels"][i, :n].tolist() == row["labels"]
        assert batch["input_ids"][i, n:].eq(tokenizer.pad_token_id).all()
        assert batch["labels"][i, n:].eq(-100).all() and batch["attention_mask"][i].sum() == n


def test_packed_batch_restarts_positions_and_masks_each_first_label(tokenizer, rows):
    batch = make_collator(tokenizer, packing=True)(rows)
    assert set(batch) == {"input_ids", "labels", "position_ids"}
    total = sum(len(r["input_ids"]) for r in rows)
    assert batch["input_ids"].shape == (1, total)
    start = 0
    for row in rows:
        n = len(row["input_ids"])
        assert batch["position_ids"][0, start : start + n].tolist() == list(range(n))
        assert batch["labels"][0, start].item() == -100
        assert batch["labels"][0, start + 1 : start + n].tolist() == row["labels"][1:]
        start += n


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packed_row_gives_each_example_the_logits_it_has_alone(tiny_model_dir, tokenizer, rows, attention):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        tiny_model_dir, dtype=torch.float32, attn_implementation=attention
    )
    model.config.use_cache = False  # with a KV cache in play, transformers does not isolate packed examples
    model.eval()
    batch = make_collator(tokenizer, packing=True)(rows)
    padded = make_collator(tokenizer, packing=False)(rows)
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits[0]
        start = 0
        for row in rows:
            n = len(row["input_ids"])
            alone = model(input_ids=torch.tensor([row["input_ids"]])).logits[0]
            torch.testing.assert_close(packed[start : start + n], alone, atol=1e-4, rtol=1e-4)
            start += n
        # and the same loss as the padded batch: the same tokens are learnt either way
        packed_loss = model(**batch).loss
        padded_loss = model(**padded).loss
    torch.testing.assert_close(packed_loss, padded_loss, atol=1e-5, rtol=1e-5)
