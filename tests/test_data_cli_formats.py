"""``inspect-data`` and ``train`` on tool calls, speaker names, labels and media (#25): the documented
``--json`` keys, the flags, and one line for what cannot be trained."""

import json
import re
from pathlib import Path

import pytest

from lora_studio.cli import inspect_data, main

PUBLIC = Path(__file__).parent / "data" / "public"
CALL = {
    "messages": [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "18C"},
        {"role": "assistant", "content": "18C in Paris."},
    ]
}


@pytest.fixture(autouse=True)
def _model_converted(default_model_dir):
    """Every command here loads the default model's tokenizer (converted once per test cache)."""


def run(capsys, *args):
    code = main(["inspect-data", *args])
    out, err = capsys.readouterr()
    return code, out, err


def write_jsonl(path: Path, *records) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return str(path)


def support_file(tmp_path) -> str:
    turns = [{"from": "Customer", "value": "Where is my order?"}, {"from": "Agent", "value": "On its way."}]
    return write_jsonl(tmp_path / "support.jsonl", {"conversations": turns}, {"conversations": turns})


def documented_keys() -> list[str]:
    """The top-level keys the module docstring documents for supervised data."""
    doc = inspect_data.__doc__
    block = doc[doc.index("Supervised data (``--json``)") :]
    return re.findall(r"^    (\w+)\s{2,}", block.split("\n\n", 2)[1], flags=re.MULTILINE)


def test_json_has_the_documented_top_level_keys(capsys):
    code, out, _ = run(capsys, str(PUBLIC / "modelscope--ms-swift/swift_single.jsonl"), "--json")
    payload = json.loads(out)
    assert code == 0 and list(payload) == documented_keys()
    assert (payload["format"], payload["detected"], payload["records"]) == ("alpaca", True, 3)
    assert payload["evidence"][0].endswith("(read as instruction = 'query', output = 'response')")
    assert payload["speakers"] == {} and payload["labels"] == {} and payload["error"] is None


def test_the_readme_documents_the_same_keys():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("### `inspect-data --json`") :]
    for key in documented_keys():
        assert f"`{key}`" in section, key


def test_unknown_speakers_get_a_guessed_role_map_and_the_flag_reads_them(tmp_path, capsys):
    path = support_file(tmp_path)
    code, out, err = run(capsys, path, "--json")
    payload = json.loads(out)
    assert code == 1 and payload["usable"] is False and payload["stats"] is None
    assert payload["speakers"]["Customer"] == {"turns": 2, "records": 2, "guess": "user"}
    assert any("--role-map 'Customer=user,Agent=assistant'" in w for w in payload["warnings"])
    code, out, err = run(capsys, path)
    assert "Warning  support.jsonl: speakers with no known role: 'Customer' (2 records)" in out
    code, out, err = run(capsys, path, "--role-map", "Customer=user,Agent=assistant")
    assert code == 0, err
    assert "[[On its way.<|im_end|>]]" in out and "role_map: Customer=user,Agent=assistant" in out


def test_a_bad_role_map_names_the_setting(tmp_path, capsys):
    code, _, err = run(capsys, support_file(tmp_path), "--role-map", "Customer=client")
    assert code != 0 and "data.role_map" in err and "'Customer' maps to 'client'" in err


def test_positive_only_keeps_the_good_answers(capsys):
    path = str(PUBLIC / "hiyouga--LLaMA-Factory/kto_en_demo.excerpt.json")
    code, out, err = run(capsys, path, "--positive-only", "--json")
    payload = json.loads(out)
    assert code == 0, err
    assert (payload["format"], payload["records"], payload["left_out"]) == ("messages", 6, 2)
    assert payload["labels"] == {"true": 4, "false": 2} and payload["stats"]["examples"] == 4


def test_tool_calls_the_template_cannot_render_are_one_line(tmp_path, capsys):
    path = write_jsonl(tmp_path / "calls.jsonl", CALL, CALL)
    code, out, err = run(capsys, path)
    assert code == 1 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "2 of 2 conversations have tool calls" in lines[0]
    assert "cannot render tool calls" in lines[0] and "Qwen2.5" in lines[0]
    code, out, err = run(capsys, path, "--json")
    payload = json.loads(out)
    assert (
        code == 1 and payload["usable"] is False and "cannot render tool calls" in payload["error"]["message"]
    )


def test_media_references_are_a_warning(capsys):
    code, out, _ = run(capsys, str(PUBLIC / "hiyouga--LLaMA-Factory/mllm_demo.excerpt.json"))
    assert code == 0
    assert "Warning   mllm_demo.excerpt.json: 3 of 3 records refer to images, audio or video" in out
    assert "it will see '<image>' as ordinary text" in out


def test_train_has_flags_for_the_new_data_settings(tmp_path):
    import argparse

    from lora_studio.cli import train

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    train.register(sub)
    args = parser.parse_args(
        ["train", "--role-map", "Customer=user,Agent=assistant", "--positive-only", "--tools", "tools.json"]
    )
    data = train.build_config(args).data
    assert data.role_map == {"Customer": "user", "Agent": "assistant"}
    assert data.positive_only and data.tools_path == "tools.json"
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--role-map", "Customer"])


def test_the_example_says_which_parts_are_calls_results_and_reasoning(tiny_model_dir, tmp_path, capsys):
    import shutil

    model = tmp_path / "tiny-tools"
    shutil.copytree(tiny_model_dir, model)
    template = Path(__file__).parent / "data" / "templates" / "qwen2_5.jinja"
    (model / "chat_template.jinja").write_text(template.read_text(encoding="utf-8"))
    record = json.loads(json.dumps(CALL))
    record["messages"][3]["reasoning_content"] = "The tool said 18C."
    path = write_jsonl(tmp_path / "calls.jsonl", record)
    code, out, err = run(capsys, path, "--model", str(model), "--max-seq-len", "1024")
    assert code == 0, err
    assert "  tool calls: learnt · tool results: context only · reasoning: learnt" in out
    assert '[[<tool_call>\n{"name": "get_weather", "arguments": {}}\n</tool_call><|im_end|>]]' in out
    assert "[[<think>\nThe tool said 18C.\n</think>\n\n18C in Paris.<|im_end|>]]" in out
    code, out, _ = run(capsys, path, "--model", str(model), "--max-seq-len", "1024", "--json")
    kinds = {s.get("kind") for s in json.loads(out)["preview"][0]["segments"]}
    assert kinds == {None, "tool_call", "tool_result", "reasoning"}
