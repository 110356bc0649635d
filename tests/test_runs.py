"""Run folders as the one record of a run: listing, old versions, diffs, the `runs` command."""

import json
import subprocess
import sys

import pytest

from lora_studio.core.config import RunConfig
from lora_studio.core.runs import RunFolder, RunFolderError, config_diff, find_run, list_runs, read_jsonl


def make_run(root, name, **overrides):
    config = RunConfig().with_overrides({"output.run_name": name, **overrides})
    run = RunFolder.create(config, root)
    for step, loss in enumerate([2.0, 1.5, 1.2], start=1):
        run.append_metrics({"step": step, "loss": loss, "mem": {"rss": 1000 * step}, "t": 0})
    run.write_status("completed", step=3, total_steps=3)
    return run


def test_listing_and_summary(tmp_path):
    a = make_run(tmp_path, "a")
    b = make_run(tmp_path, "b", **{"training.learning_rate": 1e-4})
    assert [r.path for r in list_runs(tmp_path)] == [a.path, b.path]
    summary = a.summary()
    assert summary["state"] == "completed" and summary["final_loss"] == 1.2 and summary["peak_memory"] == 3000
    assert summary["notes"] == []


def test_config_diff_shows_only_what_differs(tmp_path):
    a = make_run(tmp_path, "a")
    b = make_run(tmp_path, "b", **{"training.learning_rate": 1e-4, "lora.r": 8})
    diff = config_diff([a, b])
    assert diff == {"lora.r": [16, 8], "output.run_name": ["a", "b"], "training.learning_rate": [5e-4, 1e-4]}


def test_old_or_odd_config_opens_with_notes_not_a_crash(tmp_path):
    run = make_run(tmp_path, "old")
    run.config_path.write_text(
        'schema_version = 0\n[model]\nsource = "default"\nflash = true\n[lora]\nr = -3\n[training]\n'
        "learning_rate = 0.001\n[colour]\nx = 1\n"
    )
    config, notes = run.config_with_notes()
    assert config.training.learning_rate == 0.001 and config.lora.r == 16
    text = "\n".join(notes)
    for expected in (
        "schema 0",
        "model.flash is not a setting",
        "lora.r: must be at least 1",
        "[data] is missing",
        "colour is not a setting",
    ):
        assert expected in text, expected
    assert run.summary()["state"] == "completed"


def test_torn_metrics_line_is_ignored_and_removed_on_truncate(tmp_path):
    run = make_run(tmp_path, "torn")
    with open(run.metrics_path, "a") as handle:
        handle.write('{"step": 4, "loss": 1.')
    assert [m["step"] for m in read_jsonl(run.metrics_path)] == [1, 2, 3]
    run.truncate_metrics(2)
    assert run.metrics_path.read_text().count("\n") == 2


def test_find_run_by_unique_part(tmp_path):
    make_run(tmp_path, "alpha")
    make_run(tmp_path, "beta")
    assert find_run("alpha", tmp_path).run_id.endswith("alpha")
    with pytest.raises(RunFolderError, match="no run matches"):
        find_run("gamma", tmp_path)


def cli(*args, runs):
    return subprocess.run(
        [sys.executable, "-m", "lora_studio", "runs", "--runs-dir", str(runs), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_runs_cli_list_show_compare(tmp_path):
    make_run(tmp_path, "alpha")
    make_run(tmp_path, "beta", **{"lora.r": 4})
    listed = cli("--json", runs=tmp_path)
    assert listed.returncode == 0 and [r["state"] for r in json.loads(listed.stdout)] == ["completed"] * 2
    shown = cli("show", "alpha", runs=tmp_path)
    assert shown.returncode == 0 and "final loss 1.2000" in shown.stdout and "[training]" in shown.stdout
    compared = cli("compare", "alpha", "beta", runs=tmp_path)
    assert compared.returncode == 0 and "lora.r" in compared.stdout and "learning_rate" not in compared.stdout
    missing = cli("show", "zeta", runs=tmp_path)
    assert missing.returncode == 1 and missing.stderr.startswith("error: no run matches 'zeta'")


def test_a_paused_run_reads_paused_while_its_process_lives_and_interrupted_after(tmp_path):
    run = make_run(tmp_path, "p")
    run.write_status("paused", step=2)
    assert RunFolder.open(run.path).status()["state"] == "paused"  # this process wrote it: alive
    status = json.loads(run.status_path.read_text())
    status.update(pid=2**22 + 12345, pid_started=1.0)  # a writer that no longer exists
    run.status_path.write_text(json.dumps(status))
    gone = RunFolder.open(run.path).status()
    assert gone["state"] == "interrupted" and "stopped without finishing" in gone["error"]


def test_a_run_left_with_the_default_name_is_named_by_what_tells_it_apart(tmp_path):
    """Every run used to be "run": legends read "run loss" / "run loss" (#24)."""
    from lora_studio.core.runs import describe

    plain = RunFolder.create(RunConfig(), tmp_path)
    qlora = RunFolder.create(
        RunConfig().with_overrides(
            {"model.quantization": "nf4", "lora.r": 8, "training.learning_rate": 2e-4}
        ),
        tmp_path,
    )
    assert plain.path.name.endswith("-smollm2-135m-lora-r16-lr5e-4")
    assert qlora.path.name.endswith("-smollm2-135m-nf4-r8-lr2e-4")
    assert qlora.config().output.run_name == "smollm2-135m-nf4-r8-lr2e-4"  # folder and config agree
    named = RunFolder.create(RunConfig().with_overrides({"output.run_name": "mine"}), tmp_path)
    assert named.path.name.endswith("-mine")  # a name the user gave is kept
    gguf = RunConfig().with_overrides({"model.source": "/m/Qwen2.5-0.5B-Instruct.Q4_K_M.gguf"})
    assert describe(gguf) == "qwen2.5-0.5b-instruct-lora-r16-lr5e-4"
    assert describe(RunConfig().with_overrides({"training.learning_rate": 1.5e-5})).endswith("-lr1.5e-5")


def test_runs_with_the_same_name_get_their_start_time_in_legends_and_columns():
    from lora_studio.gui.widgets.run_compare import short_names

    assert short_names(["20261202-140000-a", "20261202-140500-b"]) == ["a", "b"]
    assert short_names(["20261202-140000-run", "20261202-140500-run"]) == ["run 14:00:00", "run 14:05:00"]
    same = ["20261202-140000-run", "20261203-140000-run"]  # same time on two days: the whole id
    assert short_names(same) == same
