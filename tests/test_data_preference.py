"""Preference data (#22, the data step): every shape people have, read into pairs or labels, with located errors."""

import json
from pathlib import Path
from typing import Any

import pytest

from lora_studio.core.data import (
    LabelledAnswer,
    PreferencePair,
    load_preferences,
    scan_preferences,
    sniff_preference_format,
)
from lora_studio.core.errors import DatasetError

PUBLIC = Path(__file__).parent / "data" / "public"
USER = {"role": "user", "content": "What is 2 + 2?"}
GOOD = {"role": "assistant", "content": "4."}
BAD = {"role": "assistant", "content": "Probably 5."}


def write(tmp_path: Path, rows: list, name: str = "prefs.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("row", "fmt", "prompt", "chosen"),
    [
        ({"prompt": "What is 2 + 2?", "chosen": "4.", "rejected": "Probably 5."}, "explicit", [USER], [GOOD]),
        (
            {
                "prompt": [{"role": "system", "content": "Be brief."}, USER],
                "chosen": [GOOD],
                "rejected": [BAD],
            },
            "explicit",
            [{"role": "system", "content": "Be brief."}, USER],
            [GOOD],
        ),
        ({"chosen": [USER, GOOD], "rejected": [USER, BAD]}, "implicit", [USER], [GOOD]),
        (
            {
                "chosen": "\n\nHuman: What is 2 + 2?\n\nAssistant: 4.",
                "rejected": "\n\nHuman: What is 2 + 2?\n\nAssistant: Probably 5.",
            },
            "implicit",
            [USER],
            [GOOD],
        ),
        (
            {
                "conversations": [{"from": "human", "value": "What is 2 + 2?"}],
                "chosen": {"from": "gpt", "value": "4."},
                "rejected": {"from": "gpt", "value": "Probably 5."},
            },
            "sharegpt",
            [USER],
            [GOOD],
        ),
        (
            {"instruction": "What is", "input": "2 + 2?", "chosen": "4.", "rejected": "Probably 5."},
            "alpaca",
            [{"role": "user", "content": "What is\n\n2 + 2?"}],
            [GOOD],
        ),
    ],
)
def test_each_pair_shape_becomes_the_same_pair(tmp_path, row, fmt, prompt, chosen):
    pairs, report = load_preferences(write(tmp_path, [row, row]))
    assert report.format == fmt and report.kind == "pairs" and report.pairs == 2
    pair = pairs[0]
    assert isinstance(pair, PreferencePair)
    assert (pair.prompt, pair.chosen, pair.rejected[-1]["role"]) == (prompt, chosen, "assistant")
    assert (pair.line, pair.record) == (1, 1)
    assert sniff_preference_format(tmp_path / "prefs.jsonl") == fmt


def test_multi_turn_implicit_pairs_keep_the_shared_history_as_prompt(tmp_path):
    history = [USER, GOOD, {"role": "user", "content": "And 3 + 3?"}]
    row = {
        "chosen": [*history, {"role": "assistant", "content": "6."}],
        "rejected": [*history, {"role": "assistant", "content": "7."}],
    }
    (pair,), _ = load_preferences(write(tmp_path, [row]))
    assert pair.prompt == history and pair.chosen == [{"role": "assistant", "content": "6."}]


def test_kto_rows_in_both_shapes_are_labelled_answers(tmp_path):
    rows = [
        {"prompt": "What is 2 + 2?", "completion": "4.", "label": True},
        {"prompt": [USER], "completion": [BAD], "label": False},
    ]
    answers, report = load_preferences(write(tmp_path, rows))
    assert report.format == "kto" and report.kind == "labels"
    assert (report.desirable, report.undesirable) == (1, 1) and not report.warnings
    assert isinstance(answers[0], LabelledAnswer) and answers[0].completion == [GOOD]
    assert answers[1].desirable is False


def test_the_public_kto_demo_reads_with_its_false_labels(tmp_path):
    """LLaMA-Factory's kto_en_demo: OpenAI ``messages`` + boolean ``label``, some multi-turn."""
    answers, report = load_preferences(PUBLIC / "hiyouga--LLaMA-Factory" / "kto_en_demo.excerpt.json")
    assert report.format == "kto" and report.records == 6 and not report.skipped
    assert report.desirable + report.undesirable == 6 and report.undesirable == 2
    for answer in answers:
        assert answer.prompt[-1]["role"] == "user" and answer.completion[0]["role"] == "assistant"


@pytest.mark.parametrize(
    ("row", "field", "words"),
    [
        ({"prompt": "Q?", "chosen": "Same.", "rejected": "Same."}, "rejected", "same answer"),
        ({"prompt": "Q?", "chosen": "", "rejected": "No."}, "chosen", "empty answer"),
        ({"prompt": "  ", "chosen": "Yes.", "rejected": "No."}, "prompt", "empty prompt"),
        ({"prompt": "Q?", "chosen": "Yes.", "rejected": None}, "rejected", "is null"),
        ({"prompt": "Q?", "chosen": "Yes.", "rejected": 3}, "rejected", "not a number"),
        ({"prompt": [USER, GOOD], "chosen": [GOOD], "rejected": [BAD]}, "prompt", "end with the user"),
        ({"prompt": [USER], "chosen": [USER], "rejected": [BAD]}, "chosen", "starts with a user turn"),
        ({"chosen": "4.", "rejected": "5."}, "chosen", "without a prompt"),
        ({"chosen": [GOOD], "rejected": [BAD]}, "chosen", "share no prompt"),
        ({"chosen": [USER, GOOD], "rejected": "5."}, "rejected", "both must be texts or both message lists"),
        ({"prompt": "Q?", "completion": "A.", "label": "yes"}, "label", "true or false"),
        ({"messages": [USER], "label": True}, "messages[0]", "no answer to label"),
        (
            {"prompt": [{"role": "robot", "content": "Q?"}], "chosen": [GOOD], "rejected": [BAD]},
            "prompt[0].role",
            "unknown role",
        ),
    ],
)
def test_bad_records_are_errors_naming_record_and_field(tmp_path, row, field, words):
    good = {"prompt": "Q?", "chosen": "Yes.", "rejected": "No."}
    if "label" in row:
        good = {"prompt": "Q?", "completion": "Yes.", "label": True}
    elif "prompt" not in row:
        good = {"chosen": [USER, GOOD], "rejected": [USER, BAD]}
    path = write(tmp_path, [good, row])
    with pytest.raises(DatasetError) as info:
        load_preferences(path)
    error = info.value
    assert (error.line, error.record, error.field) == (2, 2, field), str(error)
    assert words in str(error)
    _, report = scan_preferences(path)  # collected rather than raised: inspect-data lists them all
    assert len(report.skipped) == 1 and report.pairs + report.desirable == 1


def test_skip_invalid_keeps_the_good_rows_and_a_file_of_only_bad_rows_says_so(tmp_path):
    rows = [{"prompt": "Q?", "chosen": "A.", "rejected": "A."}] * 2
    path = write(tmp_path, [*rows, {"prompt": "Q?", "chosen": "Yes.", "rejected": "No."}])
    pairs, report = load_preferences(path, skip_invalid=True)
    assert len(pairs) == 1 and len(report.skipped) == 2
    with pytest.raises(DatasetError, match="no usable records: all 2 records have problems"):
        load_preferences(write(tmp_path, rows, "bad.jsonl"), skip_invalid=True)


def test_one_sided_kto_labels_are_a_warning(tmp_path):
    rows = [{"prompt": "Q?", "completion": "A.", "label": True}] * 3
    _, report = load_preferences(write(tmp_path, rows))
    assert report.warnings and "every usable answer is labelled desirable" in report.warnings[0]


def test_supervised_data_is_not_preference_data(tmp_path):
    sft = write(tmp_path, [{"messages": [USER, GOOD]}] * 3)
    assert sniff_preference_format(sft) is None
    with pytest.raises(DatasetError, match="not preference data") as info:
        load_preferences(sft)
    assert info.value.hint and "chosen" in info.value.hint


def test_a_record_of_another_shape_is_named_as_such(tmp_path):
    implicit = {"chosen": [USER, GOOD], "rejected": [USER, BAD]}
    explicit = {"prompt": "Q?", "chosen": "Yes.", "rejected": "No."}
    with pytest.raises(
        DatasetError, match="record is explicit preference data but this file is implicit"
    ) as info:
        load_preferences(write(tmp_path, [implicit, implicit, explicit]))
    assert info.value.record == 3
    with pytest.raises(DatasetError, match="missing required field") as info:
        load_preferences(write(tmp_path, [explicit, explicit, {"prompt": "Q?", "chosen": "Yes."}], "b.jsonl"))
    assert (info.value.record, info.value.field) == (3, "rejected")


# -- as the model sees it: the pair preview and the inspection (inspect-data, the Data page) -------


@pytest.fixture(scope="module")
def tokenizer(default_model_dir):
    from lora_studio.core.models import load_tokenizer

    return load_tokenizer(default_model_dir)


def section(path: Path, **values) -> Any:
    from lora_studio.core.config import DataSection

    return DataSection(path=str(path), **values)


def test_a_pair_preview_trains_each_answer_only_after_the_same_prompt(tmp_path, tokenizer):
    from lora_studio.core.data.preference_preview import PairPreview, preview_preferences

    row = {
        "prompt": [
            {"role": "system", "content": "Be brief."},
            USER,
            GOOD,
            {"role": "user", "content": "And 3 + 3?"},
        ],
        "chosen": "6.",
        "rejected": "Seven, I believe.",
    }
    items, _ = load_preferences(write(tmp_path, [row]))
    (pair,) = preview_preferences(items, section(tmp_path), tokenizer, "dpo")
    assert isinstance(pair, PairPreview)
    chosen, rejected = pair.chosen.segments, pair.rejected.segments
    # the earlier assistant turn ("4.") is context: only the answer and its end-of-turn token are trained
    assert [t for t, trained in chosen if trained] == ["6.<|im_end|>"]
    assert [t for t, trained in rejected if trained] == ["Seven, I believe.<|im_end|>"]
    assert chosen[0][0] == rejected[0][0] and chosen[0][0].endswith("<|im_start|>assistant\n")
    assert "4.<|im_end|>" in chosen[0][0] and not chosen[0][1]
    assert pair.prompt_tokens == len(tokenizer(chosen[0][0], add_special_tokens=False)["input_ids"])
    assert not pair.truncated and pair.location.endswith("line 1, record 1")
    data = pair.to_dict()
    assert data["kind"] == "pair" and data["chosen"]["segments"][-2] == {
        "text": "6.<|im_end|>",
        "trained": True,
    }


def test_kto_answers_and_kto_on_pairs_preview_as_labelled_answers(tmp_path, tokenizer):
    from lora_studio.core.data.preference_preview import preview_preferences

    rows = [
        {"prompt": "Say hi.", "completion": "Hello!", "label": True},
        {"prompt": "Say hi.", "completion": "No.", "label": False},
    ]
    items, _ = load_preferences(write(tmp_path, rows))
    good, bad = preview_preferences(items, section(tmp_path), tokenizer, "kto")
    assert (good.label, bad.label) == ("good", "bad")
    assert [t for t, trained in bad.answer.segments if trained] == ["No.<|im_end|>"]
    pairs, _ = load_preferences(
        write(tmp_path, [{"prompt": "Q?", "chosen": "Yes.", "rejected": "No."}], "p.jsonl")
    )
    as_kto = preview_preferences(
        pairs, section(tmp_path), tokenizer, "kto"
    )  # KTO reads a pair as two answers
    assert [(a.label, a.to_dict()["kind"]) for a in as_kto] == [("good", "answer"), ("bad", "answer")]


def test_inspection_counts_pairs_truncation_and_every_problem(tmp_path, tokenizer):
    from lora_studio.core.data.preference_preview import inspect_preferences

    rows = [{"prompt": f"Question {i}?", "chosen": "Yes.", "rejected": "No."} for i in range(8)]
    rows[2] = {**rows[2], "rejected": "No, " * 30 + "no."}  # the rejected side runs past max_seq_len
    rows[5] = {**rows[5], "rejected": "Yes."}  # no preference: a located error
    rows.append({"prompt": "Why? " * 40, "chosen": "Yes.", "rejected": "No."})  # the prompt fills max_seq_len
    path = write(tmp_path, rows)
    found = inspect_preferences(section(path, max_seq_len=48, eval_fraction=0.25), tokenizer)
    assert (found.kind, found.method, found.methods) == ("pairs", "dpo", ["dpo", "orpo", "simpo", "kto"])
    counts = found.counts()
    assert (counts["records"], counts["pairs"], counts["skipped"]) == (9, 8, 2)
    assert counts["train"] + counts["eval"] == 7 and counts["eval"] == 2
    assert (counts["truncated"], found.stats.truncated) == (1, 1)
    assert [e.record for e in found.errors] == [6, 9]
    assert "same answer" in str(found.errors[0]) and "max_seq_len = 48" in str(found.errors[1])
    assert found.error is found.errors[0]  # training stops at the first one unless skip_invalid
    assert max(found.longest_side["edges"]) > 48 and sum(found.longest_side["counts"]) == 7
    skipping = inspect_preferences(
        section(path, max_seq_len=48, skip_invalid=True), tokenizer, preview_count=2
    )
    assert skipping.error is None and len(skipping.previews) == 2
    assert skipping.to_dict()["counts"]["train"] == 7


def test_inspection_for_a_method_the_data_does_not_fit(tmp_path, tokenizer):
    from lora_studio.core.data.preference_preview import inspect_preferences

    rows = [{"prompt": "Q?", "completion": "A.", "label": i % 2 == 0} for i in range(4)]
    path = write(tmp_path, rows)
    found = inspect_preferences(section(path), tokenizer, "dpo")
    assert found.kind == "labels" and found.methods == ["kto"] and found.stats is None
    assert "DPO learns from pairs" in str(found.error) and found.previews  # still shown, labelled
    kto = inspect_preferences(section(path), tokenizer)  # no method: labels are inspected for KTO
    assert (
        kto.method == "kto" and kto.error is None and (kto.stats.desirable, kto.stats.undesirable) == (2, 2)
    )


def test_which_data_is_shown_as_preference_data(tmp_path):
    from lora_studio.core.data.preference_preview import is_preference_data

    pairs = write(tmp_path, [{"prompt": "Q?", "chosen": "Yes.", "rejected": "No."}], "pairs.jsonl")
    kto = write(tmp_path, [{"messages": [USER, GOOD], "label": True}], "kto.jsonl")
    sft = write(tmp_path, [{"messages": [USER, GOOD]}], "sft.jsonl")
    assert is_preference_data(section(pairs), "sft") and is_preference_data(section(kto), "sft")
    assert not is_preference_data(section(sft), "sft") and is_preference_data(section(sft), "dpo")
    # a record format chosen by the user reads KTO's messages as supervised data
    assert not is_preference_data(section(kto, format="messages"), "sft")
