"""OpenAI tool calling, typed content parts and reasoning traces: read, rendered by the model's own
template, masked token by token, previewed apart, refused in one line where the template cannot,
and trained on by a tiny model (#25)."""

import json
import shutil
from pathlib import Path

import pytest

from lora_studio.core.config import DataSection, RunConfig
from lora_studio.core.data import load_conversations, prepare_dataset, preview
from lora_studio.core.errors import DatasetError

TEMPLATES = Path(__file__).parent / "data" / "templates"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city now",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
CALLING = {
    "tools": [WEATHER],
    "messages": [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
                {"id": "c2", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}},
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "18C, sunny"},
        {"role": "tool", "tool_call_id": "c2", "content": "24C, clear"},
        {"role": "assistant", "content": "Paris: 18C and sunny. Rome: 24C and clear."},
    ],
}  # fmt: skip
CALL_TEXT = (
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n</tool_call><|im_end|>'
)


def write_jsonl(path: Path, *records) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def load(path, **kwargs):
    return load_conversations(DataSection(path=str(path), **kwargs))


def error_for(path, **kwargs) -> DatasetError:
    with pytest.raises(DatasetError) as info:
        load(path, **kwargs)
    return info.value


def with_template(default_model_dir, name):
    from lora_studio.core.models import load_tokenizer

    tok = load_tokenizer(default_model_dir)
    tok.chat_template = (TEMPLATES / name).read_text(encoding="utf-8")
    return tok


@pytest.fixture(scope="module")
def tokenizer(default_model_dir):
    from lora_studio.core.models import load_tokenizer

    return load_tokenizer(default_model_dir)


@pytest.fixture(scope="module")
def qwen(default_model_dir):
    """SmolLM2's tokenizer with Qwen2.5's template: tools, tool calls, grouped tool results."""
    return with_template(default_model_dir, "qwen2_5.jinja")


@pytest.fixture(scope="module")
def qwen3(default_model_dir):
    """Qwen3's template: reasoning_content rendered as a <think> block."""
    return with_template(default_model_dir, "qwen3.jinja")


def trained_runs(tok, ids, labels):
    """The decoded text of each run of trained tokens, and of everything not trained."""
    runs, current, masked = [], [], []
    for tid, label in zip(ids, labels, strict=True):
        if label != -100:
            current.append(tid)
            continue
        masked.append(tid)
        if current:
            runs.append(tok.decode(current))
            current = []
    if current:
        runs.append(tok.decode(current))
    return runs, tok.decode(masked)


# -- reading -------------------------------------------------------------------------------------


def test_openai_tool_calls_become_canonical_calls_with_object_arguments(tmp_path):
    [conv, _], report = load(write_jsonl(tmp_path / "calls.jsonl", CALLING, CALLING))
    assert report.format == "messages" and conv.tools == [WEATHER]
    call_turn = conv.messages[1]
    assert call_turn["role"] == "assistant" and call_turn["content"] == ""
    assert call_turn["tool_calls"][0] == {
        "type": "function",
        "function": {"name": "get_weather", "arguments": {"city": "Paris"}},
        "id": "c1",
    }
    assert conv.messages[2] == {
        "role": "tool",
        "content": "18C, sunny",
        "tool_call_id": "c1",
        "name": "get_weather",
    }
    assert any("tools (function calling) defined in 2 records" in e for e in report.evidence)


def test_other_spellings_of_a_call_legacy_function_call_flat_and_typed_parts(tmp_path):
    legacy = {
        "messages": [
            {"role": "user", "content": "2+3?"},
            {
                "role": "assistant",
                "content": None,
                "function_call": {"name": "add", "arguments": '{"a": 2, "b": 3}'},
            },
            {"role": "function", "name": "add", "content": "5"},
            {"role": "assistant", "content": "5"},
        ]
    }
    parts = {
        "messages": [
            {"role": "user", "content": [{"type": "text", "value": "2+3?"}]},
            {
                "role": "assistant",
                "content": [{"type": "tool_call", "name": "add", "arguments": {"a": 2, "b": 3}}],
            },
            {"role": "tool", "content": [{"type": "text", "text": "5"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "It is 5."}]},
        ]
    }
    convs, _ = load(write_jsonl(tmp_path / "spellings.jsonl", legacy, parts))
    for conv in convs:
        assert conv.messages[1]["tool_calls"] == [
            {"type": "function", "function": {"name": "add", "arguments": {"a": 2, "b": 3}}}
        ]
        assert conv.messages[2]["role"] == "tool" and conv.messages[2]["content"] == "5"
    assert convs[1].messages[0]["content"] == "2+3?"  # a {"type": "text", "value"} part is text


def test_reasoning_fields_and_parts_are_kept_for_the_assistant(tmp_path):
    records = [
        {
            "messages": [
                {"role": "user", "content": "Q"},
                {"role": "assistant", "content": "A", key: "because"},
            ]
        }
        for key in ("reasoning_content", "thinking", "reasoning")
    ]
    records.append(
        {
            "messages": [
                {"role": "user", "content": "Q"},
                {
                    "role": "assistant",
                    "content": [{"type": "reasoning", "text": "because"}, {"type": "text", "text": "A"}],
                },
            ]
        }
    )
    convs, _ = load(write_jsonl(tmp_path / "reasoning.jsonl", *records))
    assert [c.messages[1] for c in convs] == [
        {"role": "assistant", "content": "A", "reasoning_content": "because"}
    ] * 4


@pytest.mark.parametrize(
    ("turn", "field", "message"),
    [
        (
            {"role": "assistant", "content": [{"type": "image_url", "image_url": {"url": "x.png"}}]},
            "messages[1].content[0]",
            "has an image part (type 'image_url')",
        ),
        (
            {"role": "assistant", "content": [{"type": "text", "text": "a"}, {"type": "input_audio"}]},
            "messages[1].content[1]",
            "has an audio part (type 'input_audio')",
        ),
        (
            {"role": "assistant", "content": [{"type": "video", "video": "v.mp4"}]},
            "messages[1].content[0]",
            "has a video part (type 'video')",
        ),
        (
            {"role": "assistant", "content": [{"type": "hologram"}]},
            "messages[1].content[0]",
            "type 'hologram'",
        ),
        (
            {"role": "assistant", "content": None, "tool_calls": [{"function": {"name": "f", "arguments": "{oops"}}]},
            "messages[1].tool_calls[0].function.arguments",
            "is not valid JSON",
        ),
        (
            {"role": "assistant", "content": None, "tool_calls": [{"function": {"arguments": "{}"}}]},
            "messages[1].tool_calls[0].function.name",
            "name is missing",
        ),
        (
            {"role": "assistant", "content": None, "tool_calls": [{"function": {"name": "f", "arguments": "[1]"}}]},
            "messages[1].tool_calls[0].function.arguments",
            "must be a JSON object of arguments, not a list",
        ),
        ({"role": "assistant", "content": None}, "messages[1].content", "must be text, not null"),
        (
            {"role": "assistant", "content": "", "reasoning_content": "thinking only"},
            "messages[1].content",
            "only reasoning, no answer",
        ),
        ({"role": "assistant", "content": "A", "thinking": 3}, "messages[1].thinking", "must be text, not a number"),
    ],
)  # fmt: skip
def test_what_cannot_be_trained_is_a_located_error_naming_the_part(tmp_path, turn, field, message):
    record = {"messages": [{"role": "user", "content": "Q"}, turn]}
    err = error_for(write_jsonl(tmp_path / "bad.jsonl", record))
    assert (err.line, err.record, err.field) == (1, 1, field)
    assert message in err.reason


def test_a_result_for_a_call_nobody_made_is_located(tmp_path):
    record = json.loads(json.dumps(CALLING))
    record["messages"][3]["tool_call_id"] = "c9"
    err = error_for(write_jsonl(tmp_path / "orphan.jsonl", record))
    assert err.field == "messages[3].tool_call_id" and "'c9'" in err.reason and "'c1', 'c2'" in str(err)


def test_one_tools_list_for_the_whole_file(tmp_path):
    tools = tmp_path / "tools.json"
    tools.write_text(json.dumps([WEATHER]), encoding="utf-8")
    own = {**CALLING, "tools": [{**WEATHER, "function": {**WEATHER["function"], "name": "other"}}]}
    bare = {"messages": CALLING["messages"]}
    [first, second], report = load(write_jsonl(tmp_path / "d.jsonl", bare, own), tools_path=str(tools))
    assert first.tools == [WEATHER] and second.tools[0]["function"]["name"] == "other"
    assert any("1 definition from tools.json" in e for e in report.evidence)
    tools.write_text('{"not": "a list"', encoding="utf-8")
    err = error_for(tmp_path / "d.jsonl", tools_path=str(tools))
    assert err.file == str(tools) and "invalid JSON" in str(err) and err.line == 1


# -- rendering, masks and the preview ------------------------------------------------------------


def test_tool_calls_are_rendered_by_the_template_and_masked_token_by_token(tmp_path, qwen):
    path = write_jsonl(tmp_path / "calls.jsonl", CALLING)
    prepared = prepare_dataset(DataSection(path=str(path), max_seq_len=1024, eval_fraction=0), qwen)
    row = prepared.train[0]
    ids, labels = row["input_ids"], row["labels"]
    rendered = qwen.apply_chat_template(
        [
            CALLING["messages"][0],
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {"type": "function", "function": {"name": "get_weather", "arguments": {"city": c}}}
                    for c in ("Paris", "Rome")
                ],
            },
            *[{"role": "tool", "content": m["content"]} for m in CALLING["messages"][2:4]],
            CALLING["messages"][4],
        ],
        tools=[WEATHER],
        tokenize=False,
    )
    assert ids == qwen(rendered, add_special_tokens=False)["input_ids"]  # the template's own rendering
    runs, masked = trained_runs(qwen, ids, labels)
    # what the assistant produces is learnt — the calls with their end-of-turn token, then the answer
    assert runs == [CALL_TEXT, "Paris: 18C and sunny. Rome: 24C and clear.<|im_end|>"]
    # the tool results (and the tool definitions) are context only
    assert (
        "<tool_response>\n18C, sunny\n</tool_response>\n<tool_response>\n24C, clear\n</tool_response>"
        in masked
    )
    assert '"name": "get_weather", "description": "The weather in a city now"' in masked
    # the same, token by token, from pieces tokenized on their own
    system = rendered[: rendered.index("<|im_start|>assistant\n") + len("<|im_start|>assistant\n")]
    pieces = [
        (system, False),
        (CALL_TEXT, True),
        ("\n<|im_start|>user\n<tool_response>\n18C, sunny\n</tool_response>\n<tool_response>\n24C, clear\n"
         "</tool_response><|im_end|>\n<|im_start|>assistant\n", False),
        ("Paris: 18C and sunny. Rome: 24C and clear.<|im_end|>", True),
        ("\n", False),
    ]  # fmt: skip
    expected_ids, expected_labels = [], []
    for text, trained in pieces:
        piece = qwen(text, add_special_tokens=False)["input_ids"]
        expected_ids += piece
        expected_labels += piece if trained else [-100] * len(piece)
    assert (ids, labels) == (expected_ids, expected_labels)


def test_the_preview_marks_calls_results_and_reasoning(tmp_path, qwen):
    record = json.loads(json.dumps(CALLING))
    record["messages"][4]["reasoning_content"] = "Both results are in."
    [example] = preview(
        DataSection(path=str(write_jsonl(tmp_path / "p.jsonl", record)), max_seq_len=1024), qwen, 1
    )
    by_kind = {}
    for (text, trained), kind in zip(example.segments, example.kinds, strict=True):
        by_kind.setdefault(kind, []).append((text, trained))
    assert by_kind["tool_call"][0] == (CALL_TEXT, True)
    assert all(not trained for _, trained in by_kind["tool_result"])
    assert "18C, sunny" in "".join(t for t, _ in by_kind["tool_result"])
    assert by_kind["reasoning"] == [("Both results are in.", True)]
    segments = example.to_dict()["segments"]
    assert {s.get("kind") for s in segments} == {None, "tool_call", "tool_result", "reasoning"}
    assert "".join(s["text"] for s in segments).count("<tool_response>") == 2


def test_reasoning_goes_where_the_template_reads_it_else_into_a_think_block(tmp_path, qwen, qwen3, tokenizer):
    record = {
        "messages": [
            {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "4", "reasoning_content": "Two and two make four."},
        ]
    }
    data = DataSection(path=str(write_jsonl(tmp_path / "r.jsonl", record)))
    think = "<think>\nTwo and two make four.\n</think>\n\n4<|im_end|>"
    for tok in (qwen3, qwen, tokenizer):  # Qwen3 renders reasoning_content; the others get the block
        [example] = preview(data, tok, 1)
        assert "".join(text for text, trained in example.segments if trained) == think
        reasoning = [
            t for (t, _), kind in zip(example.segments, example.kinds, strict=True) if kind == "reasoning"
        ]
        assert reasoning == ["Two and two make four."]


def test_a_template_without_tool_support_is_one_clear_message(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "calls.jsonl", CALLING, CALLING, CALLING)
    with pytest.raises(DatasetError) as info:
        prepare_dataset(DataSection(path=str(path)), tokenizer)
    text = str(info.value)
    assert "3 of 3 conversations have tool calls (first: " in text and "line 1, record 1" in text
    assert "cannot render tool calls" in text and "Qwen2.5" in info.value.hint
    assert "function_call / observation" in info.value.hint
    # skipping invalid records leaves them out one by one, each located
    plain = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}
    path = write_jsonl(tmp_path / "mixed.jsonl", CALLING, plain)
    prepared = prepare_dataset(DataSection(path=str(path), skip_invalid=True, eval_fraction=0), tokenizer)
    assert len(prepared.train) == 1 and [e.line for e in prepared.skipped] == [1]
    assert "cannot render tool calls" in prepared.stats.skipped[0]


# -- training ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tool_model_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny model with Qwen2.5's tool-calling template instead of SmolLM2's."""
    folder = tmp_path_factory.mktemp("tool-model") / "tiny-tools"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "chat_template.jinja").write_text((TEMPLATES / "qwen2_5.jinja").read_text(encoding="utf-8"))
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


def test_a_tiny_model_trains_on_a_tool_calling_file_with_the_masks_checked(tool_model_dir, tmp_path):
    from lora_studio.core.models import load_tokenizer
    from lora_studio.core.train import events as ev
    from lora_studio.core.train import train

    records = []
    for i, city in enumerate(["Paris", "Rome", "Oslo", "Lima"] * 2):
        record = json.loads(json.dumps(CALLING))
        call = record["messages"][1]["tool_calls"]
        record["messages"][1]["tool_calls"] = [call[0]]
        call[0]["function"]["arguments"] = json.dumps({"city": city})
        record["messages"][0]["content"] = f"Weather in {city}?"
        record["messages"][2]["content"] = f"{10 + i}C"
        record["messages"][3:] = [{"role": "assistant", "content": f"{city}: {10 + i}C."}]
        records.append(record)
    path = write_jsonl(tmp_path / "weather.jsonl", *records)
    tok = load_tokenizer(tool_model_dir)
    data = DataSection(path=str(path), max_seq_len=512, eval_fraction=0)
    prepared = prepare_dataset(data, tok)
    for row, record in zip(prepared.train, records, strict=True):
        runs, masked = trained_runs(tok, row["input_ids"], row["labels"])
        city = json.loads(record["messages"][1]["tool_calls"][0]["function"]["arguments"])["city"]
        assert runs == [
            f'<tool_call>\n{{"name": "get_weather", "arguments": {{"city": "{city}"}}}}\n</tool_call><|im_end|>',
            record["messages"][3]["content"] + "<|im_end|>",
        ]
        assert f"<tool_response>\n{record['messages'][2]['content']}\n</tool_response>" in masked
    events = []
    config = RunConfig.from_dict(
        {
            "model": {"source": str(tool_model_dir)},
            "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
            "data": {"path": str(path), "max_seq_len": 512, "eval_fraction": 0},
            "training": {"max_steps": 2, "batch_size": 4, "logging_steps": 1, "sample_prompts": []},
            "output": {"runs_dir": str(tmp_path / "runs"), "run_name": "tools"},
        }
    )
    result = train(config, events.append)
    assert result.status == "completed" and result.step == 2
    started = next(e for e in events if isinstance(e, ev.RunStarted))
    assert started.dataset["trainable_tokens"] == prepared.stats.trainable_tokens
    assert started.dataset["examples"] == len(records)
    losses = [e.loss for e in events if isinstance(e, ev.Step)]
    assert len(losses) == 2 and all(loss == loss and loss > 0 for loss in losses)
