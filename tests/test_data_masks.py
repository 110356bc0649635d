"""Loss masks token by token for two chat templates and the fallback; truncation, split, stats, preview."""

import json
import threading
from pathlib import Path

import pytest

from lora_studio.core.config import DataSection
from lora_studio.core.data import make_collator, prepare_dataset, preview
from lora_studio.core.errors import CancelledError

PUBLIC = Path(__file__).parent / "data" / "public"
SMOL_SYSTEM = (
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
)
LLAMA3_TEMPLATE = (
    "{{- bos_token }}{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)
CHAT = [
    {"role": "user", "content": "What is your name?"},
    {"role": "assistant", "content": "I am Lumen."},
    {"role": "user", "content": "Who made you?"},
    {"role": "assistant", "content": "LoRA Studio Labs made me, in 2026."},
    {"role": "user", "content": "Thanks!"},
    {"role": "assistant", "content": "You're welcome! 😊"},
]


@pytest.fixture(scope="module")
def tokenizer(default_model_dir):
    from lora_studio.core.models import load_tokenizer

    return load_tokenizer(default_model_dir)


@pytest.fixture(scope="module")
def llama3_tokenizer(default_model_dir):
    from lora_studio.core.models import load_tokenizer

    tok = load_tokenizer(default_model_dir)
    specials = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    tok.add_special_tokens({"additional_special_tokens": specials})
    tok.bos_token, tok.eos_token = "<|begin_of_text|>", "<|eot_id|>"
    tok.chat_template = LLAMA3_TEMPLATE
    return tok


@pytest.fixture(scope="module")
def no_template_tokenizer(default_model_dir):
    from lora_studio.core.models import load_tokenizer

    tok = load_tokenizer(default_model_dir)
    tok.chat_template = None
    return tok


def write_jsonl(tmp_path, *records, name="d.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return str(path)


def expected(tok, pieces):
    """Ids and labels built piece by piece: what the masks must be, independent of the code under test."""
    ids, labels = [], []
    for text, trained in pieces:
        piece = tok(text, add_special_tokens=False)["input_ids"]
        ids += piece
        labels += piece if trained else [-100] * len(piece)
    return ids, labels


def first_row(prepared):
    row = prepared.train[0]
    assert row["length"] == len(row["input_ids"]) == len(row["labels"])
    return row["input_ids"], row["labels"]


def test_chatml_masks_every_assistant_turn_with_its_end_token(tmp_path, tokenizer):
    prepared = prepare_dataset(DataSection(path=write_jsonl(tmp_path, {"messages": CHAT})), tokenizer)
    pieces = [
        (SMOL_SYSTEM + "<|im_start|>user\nWhat is your name?<|im_end|>\n<|im_start|>assistant\n", False),
        ("I am Lumen.<|im_end|>", True),
        ("\n<|im_start|>user\nWho made you?<|im_end|>\n<|im_start|>assistant\n", False),
        ("LoRA Studio Labs made me, in 2026.<|im_end|>", True),
        ("\n<|im_start|>user\nThanks!<|im_end|>\n<|im_start|>assistant\n", False),
        ("You're welcome! 😊<|im_end|>", True),
        ("\n", False),  # ChatML's newline after <|im_end|> is never generated, so never trained
    ]
    ids, labels = expected(tokenizer, pieces)
    assert first_row(prepared) == (ids, labels)
    assert prepared.stats.trainable_tokens == sum(1 for label in labels if label != -100)


def test_chatml_with_the_records_own_system_prompt(tmp_path, tokenizer):
    record = {"messages": [{"role": "system", "content": "Be brief."}, *CHAT[:2]]}
    prepared = prepare_dataset(DataSection(path=write_jsonl(tmp_path, record)), tokenizer)
    pieces = [
        ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is your name?<|im_end|>\n", False),
        ("<|im_start|>assistant\n", False),
        ("I am Lumen.<|im_end|>", True),
        ("\n", False),
    ]
    assert first_row(prepared) == expected(tokenizer, pieces)


def test_llama3_template_masks_token_by_token(tmp_path, llama3_tokenizer):
    chat = [dict(m) for m in CHAT]
    chat[1]["content"] = "  I am Lumen.\n"  # the template trims: the mask follows what is rendered
    prepared = prepare_dataset(DataSection(path=write_jsonl(tmp_path, {"messages": chat})), llama3_tokenizer)
    # Before a word, "\n\n" is two "\n" tokens (alone it would be one), hence the separate pieces.
    user, assistant = (
        "<|start_header_id|>user<|end_header_id|>",
        "<|start_header_id|>assistant<|end_header_id|>",
    )
    nl = [("\n", False), ("\n", False)]
    pieces = [
        ("<|begin_of_text|>" + user, False),
        *nl,
        ("What is your name?<|eot_id|>" + assistant, False),
        *nl,
        ("I am Lumen.<|eot_id|>", True),
        (user, False),
        *nl,
        ("Who made you?<|eot_id|>" + assistant, False),
        *nl,
        ("LoRA Studio Labs made me, in 2026.<|eot_id|>", True),
        (user, False),
        *nl,
        ("Thanks!<|eot_id|>" + assistant, False),
        *nl,
        ("You're welcome! 😊<|eot_id|>", True),
    ]
    assert first_row(prepared) == expected(llama3_tokenizer, pieces)
    assert not prepared.stats.fallback_template


def test_fallback_template_when_the_tokenizer_has_none(tmp_path, no_template_tokenizer):
    prepared = prepare_dataset(
        DataSection(path=write_jsonl(tmp_path, {"messages": CHAT[:4]})), no_template_tokenizer
    )
    pieces = [
        ("User:\nWhat is your name?\n\nAssistant:\n", False),
        ("I am Lumen.<|im_end|>", True),
        ("\n\nUser:\nWho made you?\n\nAssistant:\n", False),
        ("LoRA Studio Labs made me, in 2026.<|im_end|>", True),
        ("\n\n", False),
    ]
    assert first_row(prepared) == expected(no_template_tokenizer, pieces)
    assert prepared.stats.fallback_template and "fallback" in prepared.stats.template
    [example] = preview(
        DataSection(path=write_jsonl(tmp_path, {"messages": CHAT[:2]})), no_template_tokenizer, 1
    )
    assert example.fallback_template


def test_train_on_all_trains_every_token(tmp_path, tokenizer):
    path = write_jsonl(tmp_path, {"messages": CHAT})
    ids, labels = first_row(prepare_dataset(DataSection(path=path, train_on="all"), tokenizer))
    assert labels == ids


def test_text_documents_train_every_token_and_end_with_eos(tmp_path, tokenizer):
    prepared = prepare_dataset(DataSection(path=write_jsonl(tmp_path, {"text": "Plain words."})), tokenizer)
    ids, labels = first_row(prepared)
    assert ids == tokenizer("Plain words.", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert labels == ids and prepared.stats.train_on == "all"


def test_tool_definitions_and_turns(tokenizer):
    path = str(PUBLIC / "hiyouga--LLaMA-Factory/glaive_toolcall_en_demo.excerpt.json")
    [example] = preview(DataSection(path=path, max_seq_len=2048), tokenizer, 1)
    trained = [text for text, flag in example.segments if flag]
    untrained = "".join(text for text, flag in example.segments if not flag)
    assert (
        trained[1]
        == '{"name": "search_recipes", "arguments": {"ingredients": ["chicken", "bell peppers", "rice"]}}<|im_end|>'
    )
    assert (
        '"description": "Search for recipes based on ingredients"' in untrained
    )  # tools, in the system prompt
    assert (
        "<|im_start|>tool\n" in untrained and '{"recipes": [' in untrained
    )  # the tool's answer is not learnt
    assert len(trained) == 4


def test_truncation_is_counted_and_examples_with_nothing_trained_are_dropped(tmp_path, tokenizer):
    short = {"messages": CHAT[:2]}
    long_answer = {"messages": [CHAT[0], {"role": "assistant", "content": "word " * 100}]}
    long_question = {"messages": [{"role": "user", "content": "word " * 100}, CHAT[1]]}
    path = write_jsonl(tmp_path, short, long_answer, long_question)
    prepared = prepare_dataset(DataSection(path=path, max_seq_len=64), tokenizer)
    stats = prepared.stats
    assert (stats.examples, stats.truncated, stats.dropped) == (2, 2, 1)
    assert max(prepared.train["length"]) == 64 and stats.lengths["max"] == 64
    rendered = [
        tokenizer.apply_chat_template(r["messages"], tokenize=False) for r in (long_answer, long_question)
    ]
    full = [len(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in rendered]
    assert stats.truncated_tokens == sum(full) - 2 * 64


def test_eval_fraction_is_a_seeded_disjoint_split(tmp_path, tokenizer):
    records = [
        {"messages": [{"role": "user", "content": f"Q{i}"}, {"role": "assistant", "content": f"A{i}"}]}
        for i in range(20)
    ]
    data = DataSection(path=write_jsonl(tmp_path, *records), eval_fraction=0.25)
    first = prepare_dataset(data, tokenizer, seed=1)
    again = prepare_dataset(data, tokenizer, seed=1)
    other = prepare_dataset(data, tokenizer, seed=2)
    assert (len(first.train), len(first.eval)) == (15, 5) == (first.stats.examples, first.stats.eval_examples)
    decoded = {tokenizer.decode(ids) for ids in first.train["input_ids"]}
    assert not decoded & {tokenizer.decode(ids) for ids in first.eval["input_ids"]}
    assert first.eval["input_ids"] == again.eval["input_ids"] != other.eval["input_ids"]


@pytest.mark.parametrize(("records", "held"), [(1, 0), (9, 0), (10, 1), (25, 2), (102, 10)])
def test_the_default_holds_out_a_tenth_but_nothing_from_a_file_too_small_to_spare_one(
    tmp_path, tokenizer, records, held
):
    rows = [
        {"messages": [{"role": "user", "content": f"Q{i}"}, {"role": "assistant", "content": f"A{i}"}]}
        for i in range(records)
    ]
    prepared = prepare_dataset(DataSection(path=write_jsonl(tmp_path, *rows)), tokenizer)
    assert (prepared.stats.examples, prepared.stats.eval_examples) == (records - held, held)
    notes = [w for w in prepared.stats.warnings if "nothing held out" in w]
    if held:
        assert notes == []
    else:  # a note in the preview and the log instead of an error (#24)
        assert notes == [
            f"nothing held out for evaluation: 10% of {records} records is less than one, so every record "
            "trains (evaluate on a separate file, or add records)"
        ]
        assert prepared.eval is None


def test_separate_eval_file(tmp_path, tokenizer):
    train = write_jsonl(tmp_path, {"messages": CHAT}, name="train.jsonl")
    held = write_jsonl(tmp_path, {"messages": CHAT[:2]}, {"messages": CHAT[:4]}, name="eval.jsonl")
    prepared = prepare_dataset(DataSection(path=train, eval_path=held, eval_fraction=0.5), tokenizer)
    assert len(prepared.train) == 1 and len(prepared.eval) == 2


def test_stats_are_json_and_consistent(tokenizer):
    prepared = prepare_dataset(DataSection(path="demo"), tokenizer)
    stats = json.loads(json.dumps(prepared.stats.to_dict()))
    assert stats["format"] == "messages" and stats["examples"] == len(prepared.train)
    # the default holds out a tenth of the demo's 102 records for evaluation (#24)
    assert (stats["eval_examples"], stats["examples"] + stats["eval_examples"]) == (10, stats["records"])
    assert sum(stats["histogram"]["counts"]) == stats["examples"]
    assert (
        stats["lengths"]["min"]
        <= stats["lengths"]["median"]
        <= stats["lengths"]["p95"]
        <= stats["lengths"]["max"]
    )
    assert stats["total_tokens"] == sum(prepared.train["length"])
    assert (
        sum(sum(1 for x in labels[1:] if x != -100) for labels in prepared.train["labels"])
        == stats["trainable_tokens"]
    )
    pad = stats["padding"]
    assert pad["packed"] == 0.0 and 0 <= pad["padded_length_grouped"] <= pad["padded_random"] < 1
    assert stats["skipped"] == [] and stats["truncated"] == stats["dropped"] == 0


def test_padding_report_matches_the_collator(tokenizer):
    prepared = prepare_dataset(DataSection(path="demo"), tokenizer)
    from lora_studio.core.data import padding_fraction

    rows = [prepared.train[i] for i in range(8)]
    batch = make_collator(tokenizer, packing=False)(rows)
    real = int(batch["attention_mask"].sum())
    assert padding_fraction([len(r["input_ids"]) for r in rows], 8, grouped=False) == pytest.approx(
        1 - real / batch["attention_mask"].numel(), abs=1e-4
    )


def test_preview_segments_are_the_rendered_text(tmp_path, tokenizer):
    first, second = preview(
        DataSection(path=write_jsonl(tmp_path, {"messages": CHAT}, {"messages": CHAT})), tokenizer, 5
    )
    [doc] = preview(DataSection(path=write_jsonl(tmp_path, {"text": "doc"}, name="t.jsonl")), tokenizer)
    rendered = tokenizer.apply_chat_template(CHAT, tokenize=False)
    assert "".join(text for text, _ in first.segments) == rendered
    assert [text for text, trained in first.segments if trained] == [
        "I am Lumen.<|im_end|>",
        "LoRA Studio Labs made me, in 2026.<|im_end|>",
        "You're welcome! 😊<|im_end|>",
    ]
    assert first.location.endswith("line 1, record 1") and second.location.endswith("line 2, record 2")
    assert not first.truncated and first.tokens == first.original_tokens
    assert doc.segments == [("doc<|im_end|>", True)] and doc.tokens == 2


def test_demo_is_prepared_for_training(tokenizer):
    prepared = prepare_dataset(DataSection(path="demo"), tokenizer)
    assert prepared.train.column_names == ["input_ids", "labels", "length"]
    assert len(prepared.train) == 92 and len(prepared.eval) == 10  # a tenth held out by default (#24)


def test_cancel_stops_preparation(tokenizer):
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(CancelledError):
        prepare_dataset(DataSection(path="demo"), tokenizer, cancel=cancel)


def test_the_default_hold_out_is_a_tenth_capped_at_200_and_a_share_set_by_hand_is_taken_as_given():
    """10% of a 50,000-record file would be 5,000 examples read at every checkpoint: the default
    share stops at 200; a share a person sets is what they asked for."""
    from lora_studio.core.data.prepare import held_out_count

    default = DataSection(path="x.jsonl")
    assert default.eval_fraction is None and default.hold_out_words() == "10%, at most 200 records"
    assert [held_out_count(n, default) for n in (4, 10, 102, 1000, 50_000)] == [0, 1, 10, 100, 200]
    explicit = DataSection(path="x.jsonl", eval_fraction=0.1)
    assert held_out_count(50_000, explicit) == 5000 and explicit.hold_out_words() == "10%"
    assert held_out_count(50_000, DataSection(path="x.jsonl", eval_fraction=0)) == 0
