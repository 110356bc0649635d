"""``lora-studio inspect-data``: located answers on good and broken files, and the exit status."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lora_studio.cli import main
from lora_studio.cli.inspect_data import _marked

PUBLIC = Path(__file__).parent / "data" / "public"
GOOD = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}


@pytest.fixture(autouse=True)
def _model_converted(default_model_dir):
    """Every command here loads the default model's tokenizer (converted once per test cache)."""


def run(capsys, *args):
    code = main(["inspect-data", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_demo_report_marks_trained_spans_with_brackets(capsys):
    code, out, err = run(capsys, "demo")
    assert code == 0, err
    assert "Format    messages (detected)" in out and "Records   102 read, 102 usable, 0 with problems" in out
    assert "[[My name is Lumen. I'm an AI assistant made by LoRA Studio Labs.<|im_end|>]]" in out
    assert "<|im_start|>user\nWhat is your name?<|im_end|>" in out and "Lengths" in out and "Padding" in out


def test_json_output(capsys):
    code, out, _ = run(capsys, "demo", "--json", "--max-seq-len", "48", "--train-on", "all")
    payload = json.loads(out)
    assert code == 0 and payload["usable"] and payload["errors"] == []
    stats = payload["stats"]
    assert stats["max_seq_len"] == 48 and stats["train_on"] == "all" and stats["truncated"] > 0
    assert payload["preview"][0]["segments"][0]["trained"] is True


def test_broken_real_file_lists_each_problem_with_its_location(capsys):
    code, out, err = run(capsys, str(PUBLIC / "axolotl-ai-cloud--axolotl/pr1155-dfa8f25/data.jsonl"))
    assert code == 1
    assert "Problems (2):" in out
    assert "data.jsonl, line 1, column 1, record 1: invalid JSON" in out
    assert "data.jsonl, line 2, record 2, field 'conversations[0].from': unknown role 'Customer'" in out
    assert err.startswith("error: no usable records") and "Traceback" not in err


def test_some_bad_records_fail_unless_skipping(tmp_path, capsys):
    path = tmp_path / "mixed.jsonl"
    path.write_text(json.dumps(GOOD) + "\n{oops\n" + json.dumps(GOOD) + "\n", encoding="utf-8")
    code, out, err = run(capsys, str(path))
    assert code == 1 and "line 2, column 2, record 2: invalid JSON" in out
    assert "1 of 3 records have problems" in err and "--skip-invalid" in err
    code, out, _ = run(capsys, str(path), "--skip-invalid")
    assert code == 0 and "3 read, 2 usable, 1 with problems" in out


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("missing.jsonl", None, "file or folder does not exist"),
        ("empty.json", "", "empty file"),
        ("latin1.txt", b"caf\xe9\n", "byte offset 3"),
        ("bad.json", '[{"text": "a"} {"text": "b"}]', "line 1, column 16"),
        ("fake.parquet", "x", "not a Parquet file"),
    ],
)
def test_unusable_files_are_one_located_line(tmp_path, capsys, name, content, expected):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content, encoding="utf-8")
    code, out, err = run(capsys, str(path))
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and expected in err and str(path) in err


def test_column_mapping_and_format_flags(tmp_path, capsys):
    path = tmp_path / "qa.csv"
    path.write_text("q,a\nWhat is 2+2?,4\n", encoding="utf-8")
    code, out, err = run(capsys, str(path), "--column", "prompt=q", "--column", "completion=a")
    assert code == 0, err
    assert "prompt_completion" in out and "[[4<|im_end|>]]" in out
    code, _, err = run(capsys, str(path), "--format", "text")
    assert code == 1 and "missing required field" in err and "line 2, record 1, field 'text'" in err


def test_bad_flag_values_name_the_setting(capsys):
    code, _, err = run(capsys, "demo", "--max-seq-len", "2")
    assert code == 2 and "data.max_seq_len" in err


def test_colour_on_a_terminal():
    text = _marked([("<|im_start|>user\nHi", False), ("Hello", True)], color=True)
    assert "\033[1;32mHello\033[0m" in text and "\033[2m<|im_start|>user\nHi\033[0m" in text


@pytest.mark.slow  # a fresh interpreter imports transformers and datasets again (~10 s)
def test_entry_point_runs_as_a_command():
    result = subprocess.run(
        [sys.executable, "-m", "lora_studio", "inspect-data", "demo", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    stats = json.loads(result.stdout)["stats"]
    assert (stats["examples"], stats["eval_examples"]) == (92, 10)  # a tenth held out by default (#24)


def test_a_preference_file_is_reported_as_pairs_with_every_bad_pair_located(capsys, tmp_path):
    """Pairs are read as preference data: which methods fit, how many pairs, each side as the model
    sees it, every bad pair located; a clean file exits 0, one with problems 1 (#22)."""
    rows = [
        {
            "conversations": [{"from": "human", "value": "What is 2 + 2?"}],
            "chosen": {"from": "gpt", "value": "4."},
            "rejected": {"from": "gpt", "value": "Probably 5."},
        }
    ] * 3
    rows.append({**rows[0], "rejected": {"from": "gpt", "value": "4."}})
    path = tmp_path / "dpo.json"
    path.write_text(json.dumps(rows, indent=2), encoding="utf-8")
    code, out, err = run(capsys, str(path))
    assert code == 1 and "1 of 4 records have problems" in err and "--skip-invalid" in err
    assert "Format        preference data, sharegpt (detected)" in out
    assert "3 pairs of a chosen and a rejected answer read" in out
    assert "Methods       DPO, ORPO, SimPO or KTO — choose one with `lora-studio train --method dpo`" in out
    assert "Training      3 pairs for training, 0 held out" in out
    assert "-- Chosen: " in out and "[[4.<|im_end|>]]" in out and "[[Probably 5.<|im_end|>]]" in out
    assert "record 4, field 'rejected': chosen and rejected are the same answer" in out
    assert "cannot train on it" not in out + err
    code, out, err = run(capsys, str(path), "--skip-invalid")
    assert code == 0 and err == ""


def test_preference_json_has_the_documented_keys_and_counts(capsys, tmp_path):
    from lora_studio.cli import inspect_data

    rows = [{"prompt": f"Question {i}?", "chosen": "Yes.", "rejected": "No."} for i in range(10)]
    rows[3]["rejected"] = "No, " * 40 + "no."
    rows[7]["chosen"] = ""
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    code, out, _ = run(capsys, str(path), "--json", "--max-seq-len", "64", "--examples", "2")
    payload = json.loads(out)
    assert code == 1 and payload["usable"] is False
    keys = {"usable", "kind", "format", "method", "method_requested", "methods", "counts", "stats"}
    keys |= {"longest_side", "preview", "preference", "errors", "error"}
    assert set(payload) == keys and all(f"    {k} " in inspect_data.__doc__ for k in keys)
    assert (payload["kind"], payload["method"], payload["method_requested"]) == ("pairs", "dpo", None)
    counts = payload["counts"]
    assert (counts["records"], counts["pairs"], counts["train"], counts["eval"]) == (10, 9, 9, 0)
    assert (counts["truncated"], counts["skipped"]) == (1, 1) and counts["truncated_tokens"] > 0
    assert payload["errors"][0]["record"] == 8 and payload["errors"][0]["field"] == "chosen"
    assert payload["error"]["record"] == 8
    first = payload["preview"][0]
    assert first["kind"] == "pair" and len(payload["preview"]) == 2
    trained = {
        side: [s["text"] for s in first[side]["segments"] if s["trained"]] for side in ("chosen", "rejected")
    }
    assert trained == {"chosen": ["Yes.<|im_end|>"], "rejected": ["No.<|im_end|>"]}
    assert payload["preference"]["pairs"] == 9 and payload["stats"]["truncated"] == 1
    code, out, _ = run(
        capsys, str(path), "--json", "--max-seq-len", "64", "--skip-invalid", "--method", "kto"
    )
    payload = json.loads(out)
    assert code == 0 and payload["method"] == "kto" and payload["counts"]["train"] == 18  # a pair: 2 answers
    assert (payload["counts"]["train_desirable"], payload["counts"]["train_undesirable"]) == (9, 9)


def test_pairs_as_supervised_data_say_which_methods_fit(capsys, tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text(
        json.dumps({"prompt": "Q?", "chosen": "Yes.", "rejected": "No."}) + "\n", encoding="utf-8"
    )
    code, out, err = run(capsys, str(path), "--method", "sft")
    assert code == 1 and out == "" and err.count("\n") == 1
    assert "supervised fine-tuning cannot train on them" in err and "DPO, ORPO, SimPO or KTO" in err
    assert "--method dpo" in err and "Method on the Train page" in err


def test_kto_labels_are_preference_data_unless_read_as_supervised(capsys):
    kto = str(PUBLIC / "hiyouga--LLaMA-Factory" / "kto_en_demo.excerpt.json")
    code, out, err = run(capsys, kto, "--json", "--max-seq-len", "4096")
    payload = json.loads(out)
    assert code == 0, err
    assert payload["kind"] == "labels" and payload["methods"] == ["kto"] and payload["method"] == "kto"
    assert (payload["counts"]["desirable"], payload["counts"]["undesirable"]) == (4, 2)
    assert payload["preview"][0]["kind"] == "answer" and payload["preview"][0]["label"] in ("good", "bad")
    code, out, err = run(capsys, kto, "--method", "dpo")
    assert code == 1 and "DPO learns from pairs" in err and "choose KTO" in err
    for flags in (["--method", "sft"], ["--format", "messages"]):  # the old reading, as supervised data
        code, out, _ = run(capsys, kto, *flags)
        assert code == 0 and "Format    messages" in out and "label = false" in out
