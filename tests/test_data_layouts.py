"""Column layouts of other tools, speaker names mapped once, thumbs-down labels and media references
said (and acted on) instead of half-said (#25). Public files: tests/data/SOURCES.md."""

import json
from pathlib import Path

import pytest

from lora_studio.core.config import DataSection, RunConfig
from lora_studio.core.data import load_conversations, scan_conversations
from lora_studio.core.errors import ConfigError, DatasetError

PUBLIC = Path(__file__).parent / "data" / "public"


def write_jsonl(path: Path, *records) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def load(path, **kwargs):
    return load_conversations(DataSection(path=str(path), **kwargs))


def turns(conv):
    return [(m["role"], m["content"]) for m in conv.messages]


# -- column layouts ------------------------------------------------------------------------------


def test_ms_swift_query_response_with_system():
    convs, report = load(PUBLIC / "modelscope--ms-swift/swift_single.jsonl")
    assert report.format == "alpaca" and len(convs) == 3 and not report.skipped
    assert report.evidence[0].endswith("→ alpaca (read as instruction = 'query', output = 'response')")
    assert turns(convs[0]) == [("system", "00000"), ("user", "11111"), ("assistant", "22222")]


def test_ms_swift_history_pairs_are_earlier_turns():
    convs, _ = load(PUBLIC / "modelscope--ms-swift/swift_multi.jsonl")
    assert turns(convs[1]) == [("user", "eeeee"), ("assistant", "fffff")]  # an empty history
    assert turns(convs[2]) == [
        ("user", "AAAAA"),
        ("assistant", "BBBBB"),
        ("user", "CCCCC"),
        ("assistant", "DDDDD"),
        ("user", "EEEEE"),
        ("assistant", "FFFFF"),
    ]


def test_ms_swift_system_and_conversation_of_human_assistant_pairs():
    convs, report = load(PUBLIC / "modelscope--ms-swift/sharegpt.jsonl")
    assert report.format == "sharegpt" and "read as conversations = 'conversation'" in report.evidence[0]
    assert turns(convs[0]) == [("system", "00000"), ("user", "11111"), ("assistant", "22222")]
    assert [r for r, _ in turns(convs[2])] == ["user", "assistant"] * 3


@pytest.mark.parametrize(
    ("record", "fmt", "expected", "read_as"),
    [
        (
            {"instruction": "Name a colour.", "response": "Blue."},
            "alpaca",
            [("user", "Name a colour."), ("assistant", "Blue.")],
            "output = 'response'",
        ),
        (
            {
                "instruction": "Summarise.",
                "context": "A long text.",
                "response": "Short.",
                "category": "summarization",
            },
            "alpaca",
            [("user", "Summarise.\n\nA long text."), ("assistant", "Short.")],
            "input = 'context', output = 'response'",
        ),
        (
            {"question": "2+2?", "answer": "4"},
            "prompt_completion",
            [("user", "2+2?"), ("assistant", "4")],
            "prompt = 'question', completion = 'answer'",
        ),
        (
            {"query": "2+2?", "answer": "4"},
            "prompt_completion",
            [("user", "2+2?"), ("assistant", "4")],
            "prompt = 'query', completion = 'answer'",
        ),
    ],
)
def test_column_layouts_are_detected_with_the_columns_named(tmp_path, record, fmt, expected, read_as):
    convs, report = load(write_jsonl(tmp_path / "d.jsonl", record, record))
    assert report.format == fmt and report.detected
    assert turns(convs[0]) == expected
    assert f"(read as {read_as})" in report.evidence[0]


def test_a_layout_can_still_be_overridden_by_mapping_columns(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", {"query": "Q", "response": "R", "answer": "A"})
    convs, report = load(path, columns={"output": "answer"})
    assert report.format == "alpaca" and turns(convs[0]) == [("user", "Q"), ("assistant", "A")]
    convs, report = load(
        path, format="prompt_completion", columns={"prompt": "query", "completion": "response"}
    )
    assert report.format == "prompt_completion" and turns(convs[0]) == [("user", "Q"), ("assistant", "R")]


def test_a_pair_missing_its_answer_is_located(tmp_path):
    record = {"conversation": [{"human": "Hi", "assistant": "Hello"}, {"human": "Bye"}]}
    with pytest.raises(DatasetError) as info:
        load(write_jsonl(tmp_path / "d.jsonl", record))
    assert info.value.field == "conversation[1].assistant" and "is missing" in info.value.reason


# -- speaker names -------------------------------------------------------------------------------


def customer_file(tmp_path):
    records = [
        {
            "conversations": [
                {"from": "Customer", "value": f"Where is order {i}?"},
                {"from": "Agent", "value": "Shipped."},
            ]
        }
        for i in range(3)
    ]
    return write_jsonl(tmp_path / "support.jsonl", *records)


def test_unknown_speakers_are_listed_with_a_guessed_role_map(tmp_path):
    convs, report = scan_conversations(DataSection(path=str(customer_file(tmp_path))))
    assert convs == [] and len(report.skipped) == 3
    assert report.speakers == {
        "Customer": {"turns": 3, "records": 3, "guess": "user"},
        "Agent": {"turns": 3, "records": 3, "guess": "assistant"},
    }
    assert any("--role-map 'Customer=user,Agent=assistant'" in w for w in report.warnings)
    first = report.skipped[0]
    assert first.field == "conversations[0].from" and "unknown role 'Customer'" in first.reason
    assert "--role-map 'Customer=user'" in first.hint


def test_a_role_map_reads_them_with_any_capitals(tmp_path):
    convs, report = load(customer_file(tmp_path), role_map={"customer": "user", "AGENT": "Assistant"})
    assert turns(convs[0]) == [("user", "Where is order 0?"), ("assistant", "Shipped.")]
    assert not report.speakers and any(
        "role_map: customer=user,AGENT=assistant" in e for e in report.evidence
    )


def test_a_speaker_with_no_telling_name_is_guessed_from_who_speaks_last(tmp_path):
    record = {"conversations": [{"from": "Ann", "value": "Hi"}, {"from": "Zed", "value": "Hello"}]}
    _, report = scan_conversations(DataSection(path=str(write_jsonl(tmp_path / "d.jsonl", record))))
    assert {n: f["guess"] for n, f in report.speakers.items()} == {"Ann": "user", "Zed": "assistant"}


def test_the_real_broken_file_names_its_customer_speaker():
    _, report = scan_conversations(
        DataSection(path=str(PUBLIC / "axolotl-ai-cloud--axolotl/pr1155-dfa8f25/data.jsonl"))
    )
    assert report.speakers == {"Customer": {"turns": 1, "records": 1, "guess": "user"}}
    convs, report = scan_conversations(
        DataSection(
            path=str(PUBLIC / "axolotl-ai-cloud--axolotl/pr1155-dfa8f25/data.jsonl"),
            role_map={"Customer": "user"},
        )
    )
    assert len(convs) == 1 and turns(convs[0])[0][0] == "user" and len(report.skipped) == 1  # the prose line


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (
            {"Customer": "client"},
            "'Customer' maps to 'client'; a role is one of system, user, assistant, tool",
        ),
        ({" ": "user"}, "speaker names must not be empty"),
    ],
)
def test_role_map_values_are_checked_and_named(value, problem):
    with pytest.raises(ConfigError) as info:
        RunConfig.from_dict({"data": {"role_map": value}})
    assert info.value.problems == {"data.role_map": problem}


# -- labels ---------------------------------------------------------------------------------------


def test_thumbs_down_records_are_warned_about_with_the_way_out():
    path = PUBLIC / "hiyouga--LLaMA-Factory/kto_en_demo.excerpt.json"
    convs, report = load(path)
    assert len(convs) == 6 and report.labels == {"true": 4, "false": 2}
    [warning] = [w for w in report.warnings if "label = false" in w]
    assert "2 of 6" in warning and "positive_only = true" in warning and "--positive-only" in warning


def test_positive_only_keeps_the_records_labelled_true():
    path = PUBLIC / "hiyouga--LLaMA-Factory/kto_en_demo.excerpt.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    kept = [i + 1 for i, r in enumerate(data) if r["label"]]
    convs, report = load(path, positive_only=True)
    assert [c.record for c in convs] == kept and report.records == 6 and report.left_out == 2
    assert not any("label = false" in w for w in report.warnings)
    assert any("2 labelled false left out (positive_only)" in e for e in report.evidence)
    assert not any("'label'" in e for e in report.evidence if "not used" in e)


def test_positive_only_on_a_file_without_labels_says_nothing_was_left_out(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", {"prompt": "Q", "completion": "A"})
    _, report = load(path, positive_only=True)
    assert any("no record has a true/false 'label'" in w for w in report.warnings)


def test_positive_only_reads_a_kto_file_as_supervised_data():
    from lora_studio.core.data.preference_preview import is_preference_data

    path = str(PUBLIC / "hiyouga--LLaMA-Factory/kto_en_demo.excerpt.json")
    assert is_preference_data(DataSection(path=path), "sft")
    assert not is_preference_data(DataSection(path=path, positive_only=True), "sft")
    assert is_preference_data(DataSection(path=path, positive_only=True), "kto")


# -- media ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "count", "what", "sees"),
    [
        ("hiyouga--LLaMA-Factory/mllm_demo.excerpt.json", "3 of 3 records", "the 'images' field and '<image>' in the text", "it will see '<image>' as ordinary text"),
        ("modelscope--ms-swift/multi_modal.jsonl", "3 of 3 records", "the 'images' field", "it never sees the media"),
    ],
)  # fmt: skip
def test_media_references_are_a_warning_with_the_count_and_what_the_model_sees(name, count, what, sees):
    convs, report = load(PUBLIC / name)
    assert len(convs) == 3 and report.media == 3
    [warning] = [w for w in report.warnings if "images, audio or video" in w]
    assert count in warning and what in warning and sees in warning and "first: record 1" in warning
    assert "reads text only" in warning
