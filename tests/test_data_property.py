"""Property: whatever the records or bytes, the loader answers with data or a DatasetError — nothing else."""

import csv
import io
import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lora_studio.core.config import DataSection
from lora_studio.core.data import load_conversations, prepare_dataset
from lora_studio.core.errors import DatasetError

KEYS = [
    "messages", "conversations", "instruction", "input", "output", "prompt", "completion", "question",
    "answer", "response", "text", "system", "system_prompt", "history", "tools", "role", "content",
    "from", "value", "label", "query", "context", "conversation", "images", "functions",
]  # fmt: skip
ROLES = ["user", "assistant", "system", "human", "gpt", "tool", "function_call", "observation", "bot", ""]
text = st.text(max_size=12)
scalar = st.none() | st.booleans() | st.integers(-5, 5) | st.floats(allow_nan=True) | text
turn = st.dictionaries(
    st.sampled_from(
        [
            "role",
            "content",
            "from",
            "value",
            "tool_calls",
            "type",
            "text",
            "tool_call_id",
            "reasoning_content",
            "function",
            "human",
            "assistant",
            "function_call",
            "name",
            "arguments",
        ]
    ),
    st.sampled_from(ROLES)
    | scalar
    | st.lists(st.dictionaries(st.sampled_from(["type", "text"]), text), max_size=2),
    max_size=3,
)
value = st.recursive(
    scalar | st.lists(turn, max_size=4), lambda inner: st.lists(inner, max_size=3), max_leaves=8
)
random_record = st.dictionaries(st.sampled_from(KEYS) | text, value, max_size=4)
VALID = [
    {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]},
    {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}], "system": "s"},
    {"instruction": "Add", "input": "2 2", "output": "4", "history": [["a", "b"]]},
    {"prompt": "Hi", "completion": "Hello"},
    {"text": "Some words."},
    {
        "messages": [
            {"role": "user", "content": [{"type": "text", "value": "2+3?"}]},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"id": "a", "function": {"name": "add", "arguments": '{"a": 2}'}}],
            },
            {"role": "tool", "tool_call_id": "a", "content": "5"},
            {"role": "assistant", "content": "5", "reasoning_content": "added"},
        ],
        "tools": [{"type": "function", "function": {"name": "add"}}],
    },
    {"system": "s", "conversation": [{"human": "Hi", "assistant": "Hello"}]},
    {"query": "Q", "response": "R", "history": [["a", "b"]], "images": ["x.png"]},
]


@st.composite
def near_valid(draw):
    """A valid record of some format with one part replaced, removed or added: the errors users make."""
    rec = json.loads(json.dumps(draw(st.sampled_from(VALID))))
    target = rec
    key = draw(st.sampled_from(sorted(target)))
    if isinstance(target[key], list) and target[key] and draw(st.booleans()):
        target = target[key][draw(st.integers(0, len(target[key]) - 1))]
        if isinstance(target, dict):
            key = draw(st.sampled_from(sorted(target)))
        else:
            return rec
    action = draw(st.sampled_from(["keep", "keep", "replace", "delete", "add"]))
    if action == "replace":
        target[key] = draw(value | st.sampled_from(ROLES))
    elif action == "delete":
        del target[key]
    elif action == "add":
        target[draw(st.sampled_from(KEYS))] = draw(value)
    return rec


record = near_valid() | random_record
junk = st.sampled_from(["", "\n", "{", "]", ",", "\x00", "\ufeff", '"', "not json"])


@st.composite
def dataset_file(draw):
    """A file of one of the supported kinds, built from random records and then perhaps garbled."""
    suffix = draw(st.sampled_from([".jsonl", ".json", ".csv", ".tsv", ".txt"]))
    records = draw(st.lists(record, min_size=1, max_size=5))
    if suffix == ".jsonl":
        payload = "\n".join(json.dumps(r) for r in records)
    elif suffix == ".json":
        payload = json.dumps(records if draw(st.booleans()) else draw(value))
    elif suffix in (".csv", ".tsv"):
        out = io.StringIO()
        writer = csv.writer(out, delimiter="\t" if suffix == ".tsv" else ",")
        names = sorted({k for r in records for k in r})
        writer.writerow(names)
        for r in records:
            writer.writerow(
                [json.dumps(r.get(k)) if draw(st.booleans()) else str(r.get(k, "")) for k in names]
            )
        payload = out.getvalue()
    else:
        payload = "\n\n".join(draw(st.lists(text, max_size=4)))
    data = payload.encode("utf-8")
    if data and draw(st.booleans()):  # garble: cut, insert junk, or flip a byte
        at = draw(st.integers(0, len(data)))
        how = draw(st.sampled_from(["cut", "insert", "byte"]))
        if how == "cut":
            data = data[:at]
        elif how == "insert":
            data = data[:at] + draw(junk).encode() + data[at:]
        else:
            data = data[:at] + bytes([draw(st.integers(0, 255))]) + data[at + 1 :]
    fmt = draw(
        st.sampled_from(["auto", "auto", "messages", "sharegpt", "alpaca", "prompt_completion", "text"])
    )
    return suffix, data, fmt, draw(st.booleans())


@pytest.fixture(scope="module")
def tokenizer(default_model_dir):
    from lora_studio.core.models import load_tokenizer

    return load_tokenizer(default_model_dir)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dataset_file())
def test_garbled_records_only_ever_raise_dataset_errors(case):
    suffix, data, fmt, skip = case
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"data{suffix}"
        path.write_bytes(data)
        try:
            conversations, _ = load_conversations(DataSection(path=str(path), format=fmt, skip_invalid=skip))
        except DatasetError as exc:
            assert str(exc) and exc.file in (None, str(path))
            return
        assert conversations and all(c.file == str(path) for c in conversations)
        for conv in conversations:
            assert conv.text is not None or any(m["role"] == "assistant" for m in conv.messages)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(dataset_file(), st.integers(8, 64))
def test_garbled_records_through_tokenization(tokenizer, case, max_seq_len):
    suffix, data, fmt, skip = case
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"data{suffix}"
        path.write_bytes(data)
        try:
            prepared = prepare_dataset(
                DataSection(path=str(path), format=fmt, skip_invalid=skip, max_seq_len=max_seq_len), tokenizer
            )
        except DatasetError:
            return
        for row in prepared.train:
            assert 0 < row["length"] == len(row["labels"]) <= max_seq_len
            assert any(label != -100 for label in row["labels"][1:])
