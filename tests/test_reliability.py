"""Promises under faults: a killed run loses at most the steps since its last checkpoint.

`lora-studio train` runs in a subprocess on a tiny model and is SIGKILLed — after a checkpoint,
inside a checkpoint write (fault injection pauses there), and at random points — then `--resume`
finishes it. The metrics file must hold every step exactly once with no torn line, and the loss
curve must equal an uninterrupted run's.
"""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lora_studio.core.config import RunConfig
from lora_studio.core.engine import train
from lora_studio.core.runs import RunFolder, list_runs

STEPS = 24


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("rel") / "d.jsonl"
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"Question {i}?"},
                {"role": "assistant", "content": f"Answer {i}, says Lumen."},
            ]
        }
        for i in range(24)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def config_file(tmp_path, model, data, runs) -> Path:
    config = RunConfig.from_dict(
        {
            "model": {"source": str(model)},
            "lora": {"r": 4, "dropout": 0.0},
            "data": {"path": str(data), "max_seq_len": 64},
            "training": {
                "max_steps": STEPS,
                "batch_size": 4,
                "learning_rate": 5e-3,
                "save_steps": 2,
                "save_total_limit": 2,
                "sample_prompts": [],
            },
            "output": {"runs_dir": str(runs)},
        }
    )
    path = tmp_path / "run.toml"
    config.save(path)
    return path


@pytest.fixture(scope="module")
def uninterrupted(tiny_model_dir, data, tmp_path_factory) -> dict[int, float]:
    tmp = tmp_path_factory.mktemp("clean")
    config = RunConfig.load(config_file(tmp, tiny_model_dir, data, tmp / "runs"))
    result = train(config)
    return {m["step"]: m["loss"] for m in RunFolder.open(result.run_dir).metrics() if "loss" in m}


def start(args, env_extra=None):
    env = dict(os.environ, **(env_extra or {}))
    return subprocess.Popen(
        [sys.executable, "-m", "lora_studio", "train", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
    )


def wait_for(predicate, proc, timeout=180):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.05)
    raise AssertionError("timed out waiting for the run")


def logged_steps(runs: Path) -> int:
    found = list_runs(runs)
    if not found:
        return 0
    steps = [m.get("step", 0) for m in found[0].metrics()]
    return max(steps, default=0)


def check_finished_like(run: RunFolder, expected: dict[int, float]) -> None:
    text = run.metrics_path.read_text()
    assert text.endswith("\n")
    lines = [json.loads(line) for line in text.splitlines()]  # every line whole JSON
    steps = [m["step"] for m in lines if "loss" in m]
    assert steps == list(range(1, STEPS + 1)), steps
    assert run.status()["state"] == "completed"
    for m in lines:
        assert m["loss"] == pytest.approx(expected[m["step"]], rel=1e-4, abs=1e-4), m["step"]


def resume_until_done(run: RunFolder) -> None:
    proc = start(["--resume", str(run.path)])
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()[-2000:]


def test_kill_after_a_checkpoint_and_inside_a_checkpoint_write(tiny_model_dir, data, tmp_path, uninterrupted):
    runs = tmp_path / "runs"
    config = config_file(tmp_path, tiny_model_dir, data, runs)
    # 1. killed just after step 5 was logged (checkpoint 4 exists)
    proc = start(["--config", str(config)])
    wait_for(lambda: logged_steps(runs) >= 5, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    [run] = list_runs(runs)
    assert run.status()["state"] == "interrupted"
    assert run.latest_checkpoint()[0] == 4
    # 2. resumed, and killed again while checkpoint 8 is being written
    proc = start(["--resume", str(run.path)], {"LORA_STUDIO_FAULTS": "checkpoint_pause@8:60"})
    staging = run.checkpoints_dir / ".staging"
    wait_for(lambda: (staging / "checkpoint-8" / "trainer_state.json").exists(), proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert run.status()["state"] == "interrupted"
    assert run.latest_checkpoint()[0] == 6  # the half-written checkpoint 8 does not count
    # 3. finished
    resume_until_done(run)
    check_finished_like(run, uninterrupted)
    assert not staging.exists()


@pytest.mark.slow
def test_twenty_random_kills(tiny_model_dir, data, tmp_path, uninterrupted):
    """Kill at 20 seeded random moments while training (mid-step, mid-log, mid-checkpoint); resume each time."""
    rng = random.Random(20261129)
    runs = tmp_path / "runs"
    config = config_file(tmp_path, tiny_model_dir, data, runs)
    kills, lost = 0, []
    args = ["--config", str(config)]
    while kills < 20:
        found = list_runs(runs)
        base = (found[0].latest_checkpoint() or (0, None))[0] if found else 0
        proc = start(args)
        if not wait_for(lambda base=base: logged_steps(runs) > base, proc):
            break  # the run finished before training resumed far enough
        time.sleep(rng.uniform(0.0, 1.5))
        if proc.poll() is not None:
            break
        run = list_runs(runs)[0]
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        checkpoint = run.latest_checkpoint()
        lost.append(logged_steps(runs) - (checkpoint[0] if checkpoint else 0))
        if run.status()["state"] == "completed":
            break
        if checkpoint is None:  # killed before the first checkpoint: nothing to resume, start again
            import shutil

            shutil.rmtree(run.path)
            continue
        args = ["--resume", str(run.path)]
    run = list_runs(runs)[0]
    if run.status()["state"] != "completed":
        resume_until_done(run)
    check_finished_like(run, uninterrupted)
    print(
        f"\nrandom kills: {kills}; steps lost per kill (logged but after the last checkpoint): "
        f"max {max(lost)}, mean {sum(lost) / len(lost):.2f}; checkpoint every 2 steps"
    )
    assert kills >= 10
    assert max(lost) <= 2  # never more than the steps since the last checkpoint
