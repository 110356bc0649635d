"""Every kind of bad input gives a DatasetError that names where the problem is."""

import json
from pathlib import Path

import pytest

from lora_studio.core.config import DataSection
from lora_studio.core.data import load_conversations, prepare_dataset
from lora_studio.core.errors import DatasetError

PUBLIC = Path(__file__).parent / "data" / "public"
GOOD = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}


def write(tmp_path, name, content):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def jsonl(*records):
    return "".join(json.dumps(r) + "\n" for r in records)


def error_for(path, **kwargs) -> DatasetError:
    with pytest.raises(DatasetError) as info:
        load_conversations(DataSection(path=str(path), **kwargs))
    return info.value


def test_missing_file(tmp_path):
    err = error_for(tmp_path / "nope.jsonl")
    assert err.file == str(tmp_path / "nope.jsonl") and "does not exist" in str(err)


def test_unsupported_file_type(tmp_path):
    err = error_for(write(tmp_path, "data.xlsx", "x"))
    assert "unsupported file type '.xlsx'" in str(err) and err.file.endswith("data.xlsx")


@pytest.mark.parametrize("name", ["empty.jsonl", "empty.json", "empty.csv", "empty.txt"])
def test_empty_file(tmp_path, name):
    err = error_for(write(tmp_path, name, "  \n"))
    assert err.file.endswith(name) and "empty file" in str(err)


def test_empty_json_array(tmp_path):
    err = error_for(write(tmp_path, "a.json", "[\n]\n"))
    assert "no records" in str(err) and err.line == 2


def test_not_utf8_names_the_byte_offset_and_line(tmp_path):
    payload = (json.dumps(GOOD) + "\n").encode() + b'{"text": "caf\xe9"}\n'
    err = error_for(write(tmp_path, "latin1.jsonl", payload))
    offset = len(json.dumps(GOOD)) + 1 + len('{"text": "caf')
    assert f"byte offset {offset}" in str(err) and "0xe9" in str(err) and err.line == 2


def test_invalid_json_line_and_column(tmp_path):
    text = '[\n  {"text": "a"},\n  {"text": "b",}\n]\n'
    err = error_for(write(tmp_path, "bad.json", text))
    assert (err.line, err.column) == (3, 16) and "invalid JSON" in str(err)
    assert "line 3, column 16" in str(err)


def test_invalid_jsonl_line(tmp_path):
    err = error_for(write(tmp_path, "bad.jsonl", jsonl(GOOD) + "\n" + '{"messages": [}\n'))
    assert (err.line, err.column, err.record) == (3, 15, 2) and "invalid JSON" in str(err)


def test_prose_line_in_real_broken_jsonl():
    err = error_for(PUBLIC / "axolotl-ai-cloud--axolotl/pr1155-dfa8f25/data.jsonl")
    assert (err.line, err.column, err.record) == (1, 1, 1) and "invalid JSON" in str(err)


def test_jsonl_line_that_is_not_an_object(tmp_path):
    err = error_for(write(tmp_path, "list.jsonl", jsonl(GOOD) + '["Hi", "Hello"]\n'))
    assert (err.line, err.record) == (2, 2) and "an array, not a JSON object" in str(err)


def test_json_top_level_must_be_array_of_objects(tmp_path):
    err = error_for(write(tmp_path, "str.json", '"hello"'))
    assert "expected a JSON array" in str(err) and (err.line, err.column) == (1, 1)
    err = error_for(write(tmp_path, "nums.json", "[1]"))
    assert "record is a number, not an object" in str(err) and err.record == 1


def test_json_array_mixing_formats(tmp_path):
    records = [GOOD, GOOD, {"instruction": "Add 2 and 2", "output": "4"}]
    text = "[\n" + ",\n".join(json.dumps(r) for r in records) + "\n]\n"
    err = error_for(write(tmp_path, "mixed.json", text))
    assert (err.line, err.column, err.record) == (4, 1, 3)
    assert "alpaca format but this file is messages" in str(err) and "mix formats" in str(err)


def test_record_missing_a_required_field(tmp_path):
    records = [{"instruction": "a", "output": "b"}, {"instruction": "c"}]
    err = error_for(write(tmp_path, "alpaca.jsonl", jsonl(*records)))
    assert (err.line, err.record, err.field) == (2, 2, "output") and "missing required field" in str(err)


def test_unknown_format(tmp_path):
    err = error_for(write(tmp_path, "odd.jsonl", jsonl({"foo": 1, "bar": 2})))
    assert err.record == 1 and "cannot tell the format" in str(err) and "'foo'" in str(err)


def test_preference_data_is_named(tmp_path):
    err = error_for(write(tmp_path, "dpo.jsonl", jsonl({"prompt": "p", "chosen": "a", "rejected": "b"})))
    assert "preference" in str(err)


@pytest.mark.parametrize(
    ("record", "field", "message"),
    [
        ({"messages": "Hi"}, "messages", "must be a list"),
        ({"messages": [{"role": "user", "content": 3}]}, "messages[0].content", "must be text, not a number"),
        ({"messages": [{"role": "user", "content": "x"}, "Hello"]}, "messages[1]", "not text"),
        ({"messages": [{"content": "x"}]}, "messages[0].role", "is missing"),
        ({"messages": []}, "messages", "no turns"),
        (
            {"messages": [{"role": "assistant", "content": None}]},
            "messages[0].content",
            "must be text, not null",
        ),
        ({"instruction": ["a"], "output": "b"}, "instruction", "must be text, not a list"),
        ({"instruction": "a", "output": "b", "history": "x"}, "history", "pairs"),
        ({"instruction": "a", "output": "b", "history": [["q"]]}, "history[0]", "pair"),
        ({"conversations": [{"from": "human", "value": {"x": 1}}]}, "conversations[0].value", "an object"),
        ({**GOOD, "tools": "{bad"}, "tools", "not valid JSON"),
        ({"text": 12}, "text", "must be text"),
    ],
)
def test_fields_of_the_wrong_type(tmp_path, record, field, message):
    err = error_for(write(tmp_path, "d.jsonl", jsonl(record, record)))
    assert (err.line, err.record, err.field) == (1, 1, field)
    assert message in err.reason


def test_unknown_role(tmp_path):
    record = {"conversations": [{"from": "Customer", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]}
    err = error_for(write(tmp_path, "d.jsonl", jsonl(record)))
    assert err.field == "conversations[0].from" and "unknown role 'Customer'" in str(err)


def test_conversation_without_assistant_turn(tmp_path):
    record = {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "Hi"}]}
    err = error_for(write(tmp_path, "d.jsonl", jsonl(GOOD, record)))
    assert (err.line, err.record, err.field) == (2, 2, "messages") and "no assistant turn" in str(err)


@pytest.mark.parametrize(
    ("record", "field"),
    [
        (
            {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "  "}]},
            "messages[1].content",
        ),
        ({"instruction": "Hi", "input": "", "output": ""}, "output"),
        ({"prompt": "Hi", "completion": "\n"}, "completion"),
        (
            {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": ""}]},
            "conversations[1].value",
        ),
    ],
)
def test_empty_assistant_answer(tmp_path, record, field):
    err = error_for(write(tmp_path, "d.jsonl", jsonl(record)))
    assert err.field == field and "empty assistant answer" in str(err)


def test_csv_without_header(tmp_path):
    text = "Give three tips,,Eat well\nName a color,,Blue\n"
    err = error_for(write(tmp_path, "nohead.csv", text))
    assert err.line == 1 and "not a header" in str(err)


def test_csv_header_with_unknown_columns(tmp_path):
    err = error_for(write(tmp_path, "odd.csv", "Give three tips,Eat well\nName a color,Blue\n"))
    assert (err.line, err.record) == (2, 1) and "cannot tell the format" in str(err)


def test_csv_without_the_mapped_columns(tmp_path):
    path = write(tmp_path, "qa.csv", "question,reply\nHi,Hello\n")
    err = error_for(path, columns={"instruction": "question", "output": "answer"})
    assert err.line == 1 and "column 'answer' (mapped to 'output') is not in the header" in str(err)
    assert "question, reply" in str(err)


def test_csv_row_with_too_many_cells(tmp_path):
    path = write(tmp_path, "rows.csv", 'instruction,output\n"a\nb",c\nd,e,f\n')
    err = error_for(path)
    assert (err.line, err.record) == (4, 2) and "3 cells" in str(err)


def test_tsv_is_tab_separated(tmp_path):
    conversations, _ = load_conversations(
        DataSection(path=str(write(tmp_path, "d.tsv", "prompt\tcompletion\na,b\tc\n")))
    )
    assert conversations[0].messages[0]["content"] == "a,b"


def test_parquet_that_is_not_parquet(tmp_path):
    err = error_for(write(tmp_path, "fake.parquet", "instruction,output\na,b\n"))
    assert err.file.endswith("fake.parquet") and "not a Parquet file" in str(err)


def test_txt_cannot_be_another_format(tmp_path):
    err = error_for(write(tmp_path, "a.txt", "hello"), format="alpaca")
    assert "plain text" in str(err)


def test_unknown_column_mapping_key(tmp_path):
    err = error_for(write(tmp_path, "a.jsonl", jsonl(GOOD)), columns={"answer_text": "x"})
    assert "data.columns" in str(err) and "answer_text" in str(err)


def test_skip_invalid_keeps_the_valid_records_and_reports_each_skipped_one(tmp_path):
    lines = [
        json.dumps(GOOD),
        "not json",
        json.dumps({"messages": [{"role": "user", "content": "only a question"}]}),
        json.dumps(GOOD),
        json.dumps({"messages": [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "y"}]}),
    ]
    path = write(tmp_path, "mixed.jsonl", "\n".join(lines) + "\n")
    assert error_for(path).line == 2  # stops at the first problem by default
    conversations, report = load_conversations(DataSection(path=str(path), skip_invalid=True))
    assert [c.line for c in conversations] == [1, 4]
    assert [(e.line, e.record) for e in report.skipped] == [(2, 2), (3, 3), (5, 5)]
    reasons = [e.reason for e in report.skipped]
    assert "invalid JSON" in reasons[0] and "no assistant turn" in reasons[1] and "unknown role" in reasons[2]


def test_nothing_usable_even_when_skipping(tmp_path):
    path = write(tmp_path, "bad.jsonl", "nope\nstill nope\n")
    err = error_for(path, skip_invalid=True)
    assert "no usable records" in str(err) and "line 1" in str(err)


@pytest.fixture(scope="module")
def tokenizer(default_model_dir):
    from lora_studio.core.models import load_tokenizer

    return load_tokenizer(default_model_dir)


def test_zero_usable_examples_after_truncation(tmp_path, tokenizer):
    record = {"messages": [{"role": "user", "content": "x " * 50}, {"role": "assistant", "content": "y"}]}
    path = write(tmp_path, "long.jsonl", jsonl(record, record))
    with pytest.raises(DatasetError) as info:
        prepare_dataset(DataSection(path=str(path), max_seq_len=16), tokenizer)
    assert "no usable examples" in str(info.value) and "max_seq_len = 16" in str(info.value)
    assert info.value.file == str(path) and "longest example has" in str(info.value)


def test_a_template_that_rejects_a_conversation_is_located(tmp_path, default_model_dir):
    from lora_studio.core.models import load_tokenizer

    tokenizer = load_tokenizer(default_model_dir)
    tokenizer.chat_template = (
        "{% if messages|length > 2 %}{{ raise_exception('roles must alternate') }}{% endif %}"
        "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\\n' }}{% endfor %}"
    )
    third = {"messages": [*GOOD["messages"], {"role": "user", "content": "Bye"}]}
    path = write(tmp_path, "a.jsonl", jsonl(GOOD, third))
    with pytest.raises(DatasetError) as info:
        prepare_dataset(DataSection(path=str(path)), tokenizer)
    assert (info.value.line, info.value.record) == (2, 2) and "roles must alternate" in str(info.value)
    prepared = prepare_dataset(DataSection(path=str(path), skip_invalid=True), tokenizer)
    assert len(prepared.train) == 1 and [e.line for e in prepared.skipped] == [2]
    assert "roles must alternate" in prepared.stats.skipped[0]
