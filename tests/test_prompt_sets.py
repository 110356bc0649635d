"""Prompt sets: saving and loading, imports, clear errors for broken files, the Markdown table, and
a run on the tiny model whose cells equal what ChatModel answers alone (greedy), with Stop."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading

import pytest

from lora_studio.core.chat import (
    GREEDY,
    ChatModel,
    PromptSet,
    PromptSetError,
    PromptSetResult,
    Reply,
    Sampling,
    delete_prompt_set,
    find_prompt_set,
    list_prompt_sets,
    load_prompt_set,
    prompt_sets_dir,
    run_prompt_set,
    sample_prompt_set,
    save_prompt_set,
)
from lora_studio.core.config import RunConfig

SHORT = Sampling(greedy=True, max_new_tokens=6, repetition_penalty=1.0)


# -- storage ---------------------------------------------------------------------------------------


def test_save_load_round_trip_in_the_config_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("LORA_STUDIO_CONFIG_DIR", str(tmp_path / "cfg"))
    original = PromptSet(
        "Identity checks", ["What is your name?", "Wer hat dich | gebaut?\nKurz."], "Be brief."
    )
    path = save_prompt_set(original)
    assert path == tmp_path / "cfg" / "prompt-sets" / "identity-checks.json" == prompt_sets_dir() / path.name
    assert load_prompt_set(path) == original
    assert find_prompt_set("identity CHECKS") == original  # by name, any case
    assert find_prompt_set("identity-checks") == original  # by file name
    assert find_prompt_set(str(path)) == original  # by path
    listed = list_prompt_sets()
    assert [(s.name, s.count, s.problem) for s in listed] == [("Identity checks", 2, None)]
    save_prompt_set(PromptSet("Identity checks", ["Only one now"]))  # same name: replaced
    assert load_prompt_set(path).prompts == ["Only one now"]
    delete_prompt_set("Identity checks")
    assert not path.exists() and list_prompt_sets() == []


def test_unknown_name_says_what_is_saved_and_what_else_works(tmp_path):
    save_prompt_set(PromptSet("smoke", ["hi"]), tmp_path)
    with pytest.raises(PromptSetError) as info:
        find_prompt_set("nope", folder=tmp_path)
    message = str(info.value)
    assert (
        "'nope'" in message and "saved sets: smoke" in message and ".txt" in message and "samples" in message
    )
    with pytest.raises(PromptSetError, match="No saved prompt set named 'nope'"):
        delete_prompt_set("nope", tmp_path)


def test_a_set_without_name_or_prompts_is_refused(tmp_path):
    with pytest.raises(PromptSetError, match="no name"):
        save_prompt_set(PromptSet("  ", ["x"]), tmp_path)
    with pytest.raises(PromptSetError, match="has no prompts"):
        save_prompt_set(PromptSet("a", []), tmp_path)
    with pytest.raises(PromptSetError, match="prompt 2 is empty"):
        save_prompt_set(PromptSet("a", ["x", "  "]), tmp_path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ('{"name": "a", "prompts": ["x",', r"broken\.json, line 1, column \d+: not valid JSON"),
        ('{"name": "a"}', r"broken\.json: expected an object with a 'prompts' list"),
        ('{"name": "a", "prompts": ["x", 3]}', r"broken\.json: prompt 2 is a int, not text"),
        ('{"name": "a", "prompts": ["x", ""]}', r"broken\.json: prompt 2 is empty"),
        ('{"name": 7, "prompts": ["x"]}', r"broken\.json: 'name' must be text, not int"),
        ('{"name": "a", "prompts": []}', r"broken\.json: no prompts in the file"),
    ],
)
def test_broken_saved_files_name_the_file_and_the_problem(tmp_path, content, expected):
    (tmp_path / "broken.json").write_text(content)
    with pytest.raises(PromptSetError, match=expected):
        load_prompt_set(tmp_path / "broken.json")
    (listed,) = list_prompt_sets(tmp_path)  # listed with its problem, not hidden and not fatal
    assert listed.name == "broken" and listed.count == 0 and re.search(expected, listed.problem)


def test_non_utf8_and_unknown_file_types(tmp_path):
    (tmp_path / "latin.txt").write_bytes("one\nd\xe9j\xe0 vu\n".encode("latin-1"))
    with pytest.raises(PromptSetError, match=r"latin\.txt, line 2: not UTF-8 text"):
        load_prompt_set(tmp_path / "latin.txt")
    (tmp_path / "prompts.csv").write_text("a\n")
    with pytest.raises(PromptSetError, match=r"unknown prompt set file type '\.csv'"):
        load_prompt_set(tmp_path / "prompts.csv")


# -- imports ---------------------------------------------------------------------------------------


def test_import_text_one_prompt_per_line(tmp_path):
    (tmp_path / "checks.txt").write_text("\ufeffWhat is your name?\n\n  Who made you?  \r\nSay hi.\n")
    assert load_prompt_set(tmp_path / "checks.txt") == PromptSet(
        "checks", ["What is your name?", "Who made you?", "Say hi."]
    )


def test_import_jsonl_of_strings_records_and_conversations(tmp_path):
    lines = [
        json.dumps("Plain string prompt"),
        json.dumps({"prompt": "From a prompt field", "completion": "ignored"}),
        json.dumps({"instruction": "Translate", "input": "Hallo", "output": "Hello"}),
        "",
        json.dumps(
            {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "Hi there"}]}
        ),
        json.dumps({"conversations": [{"from": "human", "value": "ShareGPT question"}]}),
    ]
    (tmp_path / "mixed.jsonl").write_text("\n".join(lines) + "\n")
    assert load_prompt_set(tmp_path / "mixed.jsonl").prompts == [
        "Plain string prompt",
        "From a prompt field",
        "Translate\n\nHallo",
        "Hi there",
        "ShareGPT question",
    ]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("{not json", r"bad\.jsonl, line 2, column 2: not valid JSON"),
        ('{"answer": "no prompt"}', r"bad\.jsonl, line 2: no prompt found"),
        ("42", r"bad\.jsonl, line 2: expected text or an object, got int"),
        (
            '{"messages": [{"role": "assistant", "content": "x"}]}',
            r"line 2: the conversation has no user turn",
        ),
    ],
)
def test_import_jsonl_errors_name_the_line(tmp_path, line, expected):
    (tmp_path / "bad.jsonl").write_text(json.dumps("fine") + "\n" + line + "\n")
    with pytest.raises(PromptSetError, match=expected):
        load_prompt_set(tmp_path / "bad.jsonl")


def test_a_runs_sample_prompts_are_a_prompt_set(tmp_path):
    from lora_studio.core.runs import RunFolder

    config = RunConfig().with_overrides(
        {
            "training.sample_prompts": ["Who are you?", "Name a colour."],
            "data.system_prompt": "You are Lumen.",
        }
    )
    run = RunFolder.create(config, tmp_path / "runs")
    checkpoint = run.path / "checkpoints" / "checkpoint-4"
    checkpoint.mkdir(parents=True)
    for where in (run.path, checkpoint, run.path / "adapter"):
        prompt_set = sample_prompt_set(where)
        assert (
            prompt_set.prompts == ["Who are you?", "Name a colour."] and prompt_set.system == "You are Lumen."
        )
        assert run.path.name in prompt_set.name
    assert find_prompt_set("samples", run=run.path).prompts == ["Who are you?", "Name a colour."]
    assert sample_prompt_set(None).prompts == RunConfig().training.sample_prompts
    with pytest.raises(PromptSetError, match="not a run folder"):
        sample_prompt_set(tmp_path)


# -- the table -------------------------------------------------------------------------------------


def _reply(text: str, stopped: bool = False) -> Reply:
    return Reply(text, new_tokens=5, seconds=0.5, first_token_s=0.1, stopped=stopped)


def test_markdown_escapes_cells_and_names_what_was_compared():
    result = PromptSetResult(
        name="edge | cases",
        system="Answer\nbriefly.",
        prompts=["a | b", "line one\nline two", "back\\slash and <b>tag</b>"],
        columns=["Base model", "Fine-tuned"],
        answers=[
            [_reply("x|y"), _reply("")],
            [_reply("two\r\nlines"), _reply("cut", stopped=True)],
            [_reply("ok"), None],
        ],
        model="default",
        adapter="/runs/demo/adapter",
        sampling=Sampling(greedy=True, max_new_tokens=64),
        started_at=1_700_000_000,
        stopped=True,
    )
    text = result.to_markdown()
    assert "- **Model:** default" in text and "- **Adapter:** /runs/demo/adapter" in text
    assert "- **Sampling:** greedy, repetition penalty 1.1, at most 64 new tokens" in text
    assert "- **System prompt:** Answer<br>briefly." in text
    assert re.search(r"- \*\*Date:\*\* 2023-11-\d\d \d\d:\d\d", text)
    assert "- **Stopped** after 5 of 6 answers." in text
    rows = [line for line in text.splitlines() if line.startswith("|")]
    assert rows[0] == "| # | Prompt | Base model | Fine-tuned |" and rows[1] == "|---:|---|---|---|"
    assert rows[2:] == [
        r"| 1 | a \| b | x\|y | *(empty answer)* |",
        "| 2 | line one<br>line two | two<br>lines | cut *(stopped)* |",
        r"| 3 | back\\slash and &lt;b>tag&lt;/b> | ok | — |",
    ]
    for row in rows:  # every row splits into exactly the header's cells (GFM: a \-escaped pipe is text)
        assert len(re.findall(r"(?<!\\)(?:\\\\)*\|", row)) == 5


@pytest.fixture(scope="module")
def tuned(tiny_model_dir, tmp_path_factory):
    """The tiny model with a random (non-zero) adapter: base and fine-tuned answers differ."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("adapter") / "random"
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    lora = LoraConfig(r=4, lora_alpha=64, target_modules="all-linear", init_lora_weights=False)
    get_peft_model(model, lora).save_pretrained(folder)
    return ChatModel.load(str(tiny_model_dir), adapter=folder, dtype="fp32"), folder


def test_table_equals_what_chatmodel_answers_alone(tuned, tiny_model_dir):
    chat, folder = tuned
    prompt_set = PromptSet("two", ["What is your name?", "Say hello."], system="Be brief.")
    events = []
    result = run_prompt_set(chat, prompt_set, SHORT, on_cell=events.append)
    assert result.columns == ["Base model", "Fine-tuned"] and not result.stopped
    assert result.model == str(tiny_model_dir) and result.adapter == str(folder)
    for row, prompt in enumerate(prompt_set.prompts):
        messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": prompt}]
        assert result.text(row, 0) == chat.answer(messages, SHORT, use_adapter=False).text
        assert result.text(row, 1) == chat.answer(messages, SHORT, use_adapter=True).text
    assert result.text(0, 0) != result.text(0, 1)  # the adapter really is on in the second column
    assert [(e.row, e.column, e.index, e.total, e.reply is not None) for e in events] == [
        (0, 0, 1, 4, False), (0, 0, 1, 4, True), (0, 1, 2, 4, False), (0, 1, 2, 4, True),
        (1, 0, 3, 4, False), (1, 0, 3, 4, True), (1, 1, 4, 4, False), (1, 1, 4, 4, True),
    ]  # fmt: skip
    assert result.done == result.total == 4
    assert GREEDY.greedy  # the default is reproducible
    again = run_prompt_set(chat, prompt_set, SHORT)
    assert [[r.text for r in row] for row in again.answers] == [
        [r.text for r in row] for row in result.answers
    ]


def test_stop_between_cells_and_within_an_answer(tuned):
    chat, _ = tuned
    prompt_set = PromptSet("three", ["One?", "Two?", "Three?"])
    cancel = threading.Event()

    def after_first(event):
        if event.reply is not None:
            cancel.set()

    result = run_prompt_set(chat, prompt_set, SHORT, cancel=cancel, on_cell=after_first)
    assert (
        result.stopped
        and result.done == 1
        and result.answers[0][1] is None
        and result.answers[2] == [None, None]
    )
    assert "Stopped** after 1 of 6 answers" in result.to_markdown()

    cancel = threading.Event()
    pieces = []

    def stop_now(row, column, text):
        pieces.append((row, column))
        cancel.set()

    long = Sampling(greedy=True, max_new_tokens=200)
    result = run_prompt_set(chat, prompt_set, long, cancel=cancel, on_piece=stop_now)
    first = result.answers[0][0]
    assert first.stopped and first.new_tokens <= 4 and result.done == 1
    assert set(pieces) == {(0, 0)}


def test_without_an_adapter_there_is_one_column(tiny_model_dir):
    chat = ChatModel.load(str(tiny_model_dir), dtype="fp32")
    result = run_prompt_set(chat, PromptSet("one", ["Hi"]), SHORT)
    assert result.columns == ["Base model"] and result.adapter is None and result.done == 1
    assert "- **Adapter:** none" in result.to_markdown()


def test_cli_prompt_set_prints_the_table_and_writes_markdown(tiny_model_dir, tuned, tmp_path):
    _, adapter = tuned
    (tmp_path / "checks.txt").write_text("What is your name?\nSay hello.\n")
    out = tmp_path / "report" / "table.md"
    command = [
        sys.executable,
        "-m",
        "lora_studio",
        "chat",
        "--model",
        str(tiny_model_dir),
        "--adapter",
        str(adapter),
    ]
    result = subprocess.run(
        [
            *command,
            "--prompt-set",
            str(tmp_path / "checks.txt"),
            "--max-new-tokens",
            "6",
            "--markdown",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert (
        "| # | Prompt | Base model | Fine-tuned |" in result.stdout and "| 2 | Say hello. |" in result.stdout
    )
    assert "greedy" in result.stdout and "[4/4]" in result.stderr
    assert out.read_text() == result.stdout
    listed = subprocess.run(
        [*command, "--prompt-set", "nope", "--max-new-tokens", "6"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert listed.returncode == 1
    assert (
        listed.stderr.strip()
        .splitlines()[-1]
        .startswith("error: No prompt set file or saved prompt set named")
    )
