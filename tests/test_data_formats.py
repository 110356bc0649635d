"""Format detection and conversion to conversations, on real public files (tests/data/SOURCES.md)."""

import json
import shutil
from pathlib import Path

import pytest

from lora_studio.core.config import DataSection
from lora_studio.core.data import load_conversations
from lora_studio.core.errors import DatasetError

PUBLIC = Path(__file__).parent / "data" / "public"


def load(path, **kwargs):
    return load_conversations(DataSection(path=str(path), **kwargs))


@pytest.mark.parametrize(
    ("name", "fmt", "count"),
    [
        ("hiyouga--LLaMA-Factory/identity.json", "alpaca", 91),
        ("pytorch--torchtune/alpaca_tiny.json", "alpaca", 100),
        ("modelscope--ms-swift/alpaca.csv", "alpaca", 3),
        ("modelscope--ms-swift/swift_single.jsonl", "alpaca", 3),  # query/response (#25)
        ("modelscope--ms-swift/swift_multi.jsonl", "alpaca", 3),
        ("modelscope--ms-swift/multi_modal.jsonl", "alpaca", 3),
        ("georgian-io--LLM-Finetuning-Toolkit/example_data.csv", "alpaca", 23),
        ("pytorch--torchtune/chat_tiny.json", "sharegpt", 1),
        ("lm-sys--FastChat/dummy_conversation.excerpt.json", "sharegpt", 12),
        ("modelscope--ms-swift/conversations.jsonl", "sharegpt", 3),
        ("modelscope--ms-swift/sharegpt.jsonl", "sharegpt", 3),  # system + {human, assistant} pairs
        ("hiyouga--LLaMA-Factory/glaive_toolcall_en_demo.excerpt.json", "sharegpt", 6),
        ("modelscope--ms-swift/chatml.jsonl", "messages", 3),
        ("eunseo-com--openai-cookbook/toy_chat_fine_tuning.jsonl", "messages", 5),
        ("hiyouga--LLaMA-Factory/kto_en_demo.excerpt.json", "messages", 6),
        ("hiyouga--LLaMA-Factory/mllm_demo.excerpt.json", "messages", 3),
        ("ml-explore--mlx-examples/wwdc25/valid.jsonl", "prompt_completion", 144),
        ("VolkanSah--SmolLM2-customs/train-00000-of-00001.parquet", "prompt_completion", 48),
        ("ml-explore--mlx-examples/lora/valid.jsonl", "text", 100),
        ("hiyouga--LLaMA-Factory/c4_demo.excerpt.jsonl", "text", 12),
        ("hiyouga--LLaMA-Factory/wiki_demo.excerpt.txt", "text", 1),
    ],
)
def test_real_files_are_detected_and_every_record_converted(name, fmt, count):
    conversations, report = load(PUBLIC / name)
    assert report.format == fmt and report.detected
    assert len(conversations) == count == report.records
    assert report.evidence and not report.skipped
    for conv in conversations:
        if fmt == "text":
            assert conv.text and not conv.messages
        else:
            assert any(m["role"] == "assistant" and m["content"].strip() for m in conv.messages)


def test_demo_is_the_bundled_identity_set():
    conversations, report = load("demo")
    assert report.format == "messages" and 90 <= len(conversations) <= 120
    answers = [m["content"] for c in conversations for m in c.messages if m["role"] == "assistant"]
    assert sum("Lumen" in a for a in answers) > 0.8 * len(answers)
    assert sum("LoRA Studio Labs" in a for a in answers) > 0.6 * len(answers)


def test_csv_values_stay_strings_and_empty_cells_mean_absent():
    conversations, _ = load(PUBLIC / "modelscope--ms-swift/alpaca.csv")
    first, second = conversations[0], conversations[1]
    assert first.messages == [
        {"role": "system", "content": "00000"},
        {"role": "user", "content": "11111\n\n22222"},
        {"role": "assistant", "content": "3.3"},
    ]
    assert second.messages == [
        {"role": "user", "content": "aaaaa"},
        {"role": "assistant", "content": "ccccc"},
    ]


def test_csv_records_with_line_breaks_know_the_line_they_start_on():
    conversations, _ = load(PUBLIC / "georgian-io--LLM-Finetuning-Toolkit/example_data.csv")
    assert [c.line for c in conversations[:3]] == [2, 5, 6]  # the first output spans lines 2-4
    assert conversations[0].messages[-1]["content"].count("\n") == 2


def test_json_records_on_one_line_are_located_by_column():
    conversations, report = load(PUBLIC / "pytorch--torchtune/alpaca_tiny.json")
    assert {c.line for c in conversations} == {1}
    columns = [c.column for c in conversations]
    assert columns[0] == 2 and columns == sorted(columns)
    assert any("'text'" in e for e in report.evidence)  # the pre-rendered field is named as unused


def test_parquet_prompt_response_and_system_prompt_columns():
    conversations, report = load(PUBLIC / "VolkanSah--SmolLM2-customs/train-00000-of-00001.parquet")
    roles = [m["role"] for m in conversations[0].messages]
    assert roles == ["system", "user", "assistant"]
    assert conversations[0].messages[0]["content"].startswith("You are the ShellMaster")
    assert conversations[0].record == 1 and conversations[0].line is None
    assert any("'response'" in e for e in report.evidence)


def test_sharegpt_tool_calls_become_assistant_and_tool_turns():
    conversations, report = load(PUBLIC / "hiyouga--LLaMA-Factory/glaive_toolcall_en_demo.excerpt.json")
    roles = [m["role"] for m in conversations[0].messages]
    assert roles == ["user", "assistant", "user", "assistant", "tool", "assistant", "user", "assistant"]
    assert conversations[0].tools and conversations[0].tools[0]["name"] == "search_recipes"
    assert any("tools" in e for e in report.evidence)


def test_sharegpt_system_turn_and_plain_roles():
    conversations, _ = load(PUBLIC / "pytorch--torchtune/chat_tiny.json")
    assert [m["role"] for m in conversations[0].messages] == [
        "system",
        "user",
        "assistant",
        "user",
        "assistant",
    ]
    conversations, _ = load(PUBLIC / "modelscope--ms-swift/conversations.jsonl")
    assert conversations[0].messages[0] == {"role": "system", "content": "00000"}


def test_kto_labels_are_warned_about_not_silently_used():
    _, report = load(PUBLIC / "hiyouga--LLaMA-Factory/kto_en_demo.excerpt.json")
    assert any("label = false" in w and "2 of 6" in w for w in report.warnings)


def test_placeholders_and_missing_user_turns_are_warnings_with_locations():
    _, report = load(PUBLIC / "hiyouga--LLaMA-Factory/identity.json")
    assert any("{{name}}" in w and "record 1" in w for w in report.warnings)
    _, report = load(PUBLIC / "eunseo-com--openai-cookbook/toy_chat_fine_tuning.jsonl")
    assert any("without a user turn" in w and "line 4, record 4" in w for w in report.warnings)


def test_txt_split_by_paragraph_or_line():
    path = PUBLIC / "hiyouga--LLaMA-Factory/wiki_demo.excerpt.txt"
    conversations, report = load(path)
    assert len(conversations) == 1 and any("txt_split = 'line'" in w for w in report.warnings)
    conversations, report = load(path, txt_split="line")
    assert [c.line for c in conversations] == [1, 2, 3] and not report.warnings


def test_txt_paragraphs(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("first doc\nstill first\n\n\nsecond doc\n\nthird\n", encoding="utf-8")
    conversations, _ = load(path)
    assert [(c.text, c.line) for c in conversations] == [
        ("first doc\nstill first", 1),
        ("second doc", 5),
        ("third", 7),
    ]


def test_column_mapping_overrides_detection(tmp_path):
    path = tmp_path / "qa.csv"
    path.write_text("q,a,notes\nWhat is 2+2?,4,easy\n", encoding="utf-8")
    conversations, report = load(path, columns={"instruction": "q", "output": "a"})
    assert report.format == "alpaca"
    assert conversations[0].messages == [
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4"},
    ]
    assert any("instruction→q" in e for e in report.evidence)


def test_question_answer_and_input_output_are_prompt_completion(tmp_path):
    path = tmp_path / "qa.jsonl"
    path.write_text('{"question": "Q1", "answer": "A1"}\n{"input": "Q2", "output": "A2"}\n', encoding="utf-8")
    conversations, report = load(path)
    assert report.format == "prompt_completion"
    assert [c.messages[0]["content"] for c in conversations] == ["Q1", "Q2"]


def test_alpaca_history_and_system_prompt_option(tmp_path):
    path = tmp_path / "a.json"
    record = {"instruction": "And 3+3?", "input": "", "output": "6", "history": [["2+2?", "4"]]}
    path.write_text(json.dumps([record]), encoding="utf-8")
    conversations, _ = load(path, system_prompt="Be brief.")
    assert conversations[0].messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "And 3+3?"},
        {"role": "assistant", "content": "6"},
    ]


def test_openai_text_parts_and_json_lines_saved_as_json(tmp_path):
    path = tmp_path / "parts.json"
    turn = {"role": "assistant", "content": [{"type": "text", "text": "Hel"}, {"type": "text", "text": "lo"}]}
    rows = [{"messages": [{"role": "user", "content": "Hi"}, turn]}] * 2
    path.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    conversations, _ = load(path)
    assert len(conversations) == 2 and conversations[1].messages[1]["content"] == "Hello"
    assert conversations[1].line == 2


def test_folder_of_files_and_forced_format(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    shutil.copy(PUBLIC / "modelscope--ms-swift/chatml.jsonl", folder / "a.jsonl")
    shutil.copy(PUBLIC / "modelscope--ms-swift/chatml.jsonl", folder / "b.jsonl")
    (folder / "README.md").write_text("not data")
    conversations, report = load(folder, format="messages")
    assert len(conversations) == 6 and len(report.files) == 2 and not report.detected
    assert conversations[3].file.endswith("b.jsonl") and conversations[3].record == 1


def test_folder_mixing_formats_is_refused(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    shutil.copy(PUBLIC / "modelscope--ms-swift/chatml.jsonl", folder / "a.jsonl")
    shutil.copy(PUBLIC / "modelscope--ms-swift/alpaca.csv", folder / "b.csv")
    with pytest.raises(DatasetError, match="different formats"):
        load(folder)


def test_mapping_a_shared_optional_field_keeps_detection(tmp_path):
    path = tmp_path / "pc.jsonl"
    path.write_text(json.dumps({"prompt": "Hi", "completion": "Hello", "persona": "Be kind."}) + "\n")
    conversations, report = load(path, columns={"system": "persona"})
    assert report.format == "prompt_completion"
    assert conversations[0].messages[0] == {"role": "system", "content": "Be kind."}
