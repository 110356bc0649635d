"""Promises under faults: a killed run loses at most the steps since its last checkpoint.

`lora-studio train` runs in a subprocess on a tiny model and is SIGKILLed — after a step, inside a
checkpoint write, and at 20 seeded random places — then `--resume` finishes it. The metrics file
must hold every step exactly once with no torn line, and the loss curve must equal an uninterrupted
run's.

Kill points are chosen in steps and writes, never in seconds: fault injection holds the process at
the chosen point (``step_pause``, ``checkpoint_pause``, ``write_pause``), the process says so on
stderr, and only then is it killed. Every kill lands where it was meant to, and none can come too
late because the run already finished, on a fast machine as on a slow one.
"""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from lora_studio.core.config import RunConfig
from lora_studio.core.faults import HOLDING
from lora_studio.core.runs import RunFolder, list_runs
from lora_studio.core.train import train

STEPS = 24
SAVE_EVERY = 2  # checkpoint every 2 steps: a kill may lose at most this many logged steps
HOLD_S = 600  # how long a fault holds the process; only a guard: the test kills it long before

# The random kills. Each attempt resumes from checkpoint B and is killed at or before step B + AHEAD:
# after step B+1…B+AHEAD is logged, inside the write of checkpoint B+2 or B+4, or before the rename
# of its write 1…LAST_WRITE. A process writes 3 files before its first step (config or status,
# status or the metrics truncation, status at train start), then status after every step and a
# checkpoint every SAVE_EVERY steps, so write 7 comes by step B+3 at the latest. Each attempt thus
# completes at most one new checkpoint (B+2; the test asserts it), so kill k resumes from step
# 2(k-1) at most and is held by step 2(k-1) + AHEAD: RANDOM_STEPS leaves the run unfinished at kill 20.
KILLS = 20
AHEAD = 2 * SAVE_EVERY
LAST_WRITE = 7
RANDOM_STEPS = KILLS * SAVE_EVERY + AHEAD + SAVE_EVERY

#: The tiny model's steps take milliseconds on one thread; on a busy 2-core machine torch's threads
#: wait for each other's time slices and a step took 2.5 s (0.6 s on one thread, load average 5).
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


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


def config_file(tmp_path: Path, model: Path, data: Path, runs: Path, steps: int = STEPS) -> Path:
    config = RunConfig.from_dict(
        {
            "model": {"source": str(model)},
            "lora": {"r": 4, "dropout": 0.0},
            # these runs count their steps and events: nothing held out (the default holds out a tenth)
            "data": {"path": str(data), "max_seq_len": 64, "eval_fraction": 0.0},
            "training": {
                "max_steps": steps,
                "batch_size": 4,
                "learning_rate": 5e-3,
                "save_steps": SAVE_EVERY,
                "save_total_limit": 2,
                "sample_prompts": [],
            },
            "output": {"runs_dir": str(runs)},
        }
    )
    path = tmp_path / "run.toml"
    config.save(path)
    return path


def losses_of_a_clean_run(model: Path, data: Path, tmp: Path, steps: int) -> dict[int, float]:
    import torch

    config = RunConfig.load(config_file(tmp, model, data, tmp / "runs", steps))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the killed runs (see ONE_THREAD)
    try:
        result = train(config)
    finally:
        torch.set_num_threads(threads)
    return {m["step"]: m["loss"] for m in RunFolder.open(result.run_dir).metrics() if "loss" in m}


@pytest.fixture(scope="module")
def uninterrupted(tiny_model_dir, data, tmp_path_factory) -> dict[int, float]:
    return losses_of_a_clean_run(tiny_model_dir, data, tmp_path_factory.mktemp("clean"), STEPS)


@pytest.fixture(scope="module")
def uninterrupted_long(tiny_model_dir, data, tmp_path_factory) -> dict[int, float]:
    """The baseline of the random kills: in process, so it costs only the tiny model's steps."""
    return losses_of_a_clean_run(tiny_model_dir, data, tmp_path_factory.mktemp("clean-long"), RANDOM_STEPS)


def start(args: list[str], env_extra: dict[str, str] | None = None, stderr: Path | None = None):
    """`lora-studio train ARGS`; stderr to a file when given (where a fault's hold is announced)."""
    env = {**os.environ, **ONE_THREAD, "LORA_STUDIO_FAULTS": "", **(env_extra or {})}
    command = [sys.executable, "-m", "lora_studio", "train", *args]
    if stderr is None:
        return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    with stderr.open("wb") as sink:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=sink, env=env)


def wait_for(predicate, proc, timeout=300) -> bool:
    """True once ``predicate()`` holds, False if the process ended first; the timeout only catches a hang."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if proc.poll() is not None:
            return predicate()
        time.sleep(0.05)
    raise AssertionError("timed out waiting for the run")


def kill_when_held(proc: subprocess.Popen, stderr: Path, kind: str) -> None:
    """SIGKILL the process once it says that fault ``kind`` holds it: the kill lands exactly there."""
    try:
        held = wait_for(lambda: f"{HOLDING}{kind} holding" in stderr.read_text(errors="replace"), proc)
        assert held, f"the run ended before {kind} held it:\n{stderr.read_text(errors='replace')[-3000:]}"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


def logged_steps(run: RunFolder) -> int:
    return max((m["step"] for m in run.metrics() if "loss" in m), default=0)


def check_finished_like(run: RunFolder, expected: dict[int, float], steps: int = STEPS) -> None:
    text = run.metrics_path.read_text()
    assert text.endswith("\n")
    lines = [json.loads(line) for line in text.splitlines()]  # every line whole JSON
    logged = [m["step"] for m in lines if "loss" in m]
    assert logged == list(range(1, steps + 1)), logged
    assert run.status()["state"] == "completed"
    for m in lines:
        assert m["loss"] == pytest.approx(expected[m["step"]], rel=1e-4, abs=1e-4), m["step"]


def resume_until_done(run: RunFolder) -> None:
    proc = start(["--resume", str(run.path)])
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err.decode()[-2000:]


def test_kill_after_a_checkpoint_and_inside_a_checkpoint_write(tiny_model_dir, data, tmp_path, uninterrupted):
    runs = tmp_path / "runs"
    config = config_file(tmp_path, tiny_model_dir, data, runs)
    # 1. killed just after step 5 was logged (checkpoint 4 exists; step 6 never starts)
    log = tmp_path / "stderr-1.txt"
    proc = start(["--config", str(config)], {"LORA_STUDIO_FAULTS": f"step_pause@5:{HOLD_S}"}, log)
    kill_when_held(proc, log, "step_pause")
    [run] = list_runs(runs)
    assert run.status()["state"] == "interrupted"
    assert run.latest_checkpoint()[0] == 4
    assert logged_steps(run) == 5
    # 2. resumed, and killed again while checkpoint 8 is being written
    log = tmp_path / "stderr-2.txt"
    proc = start(["--resume", str(run.path)], {"LORA_STUDIO_FAULTS": f"checkpoint_pause@8:{HOLD_S}"}, log)
    kill_when_held(proc, log, "checkpoint_pause")
    staging = run.checkpoints_dir / ".staging"
    assert (staging / "checkpoint-8" / "trainer_state.json").is_file()  # its files are written
    assert run.status()["state"] == "interrupted"
    assert run.latest_checkpoint()[0] == 6  # the half-written checkpoint 8 does not count
    # 3. finished
    resume_until_done(run)
    check_finished_like(run, uninterrupted)
    assert not staging.exists()


def only_run(runs: Path) -> RunFolder | None:
    """The one run folder, listed or not: a kill while its config is being saved leaves it unlisted."""
    found = [p for p in runs.iterdir() if p.is_dir()] if runs.is_dir() else []
    assert len(found) <= 1, found
    return RunFolder(found[0]) if found else None


def random_fault(rng: random.Random, resumed_from: int) -> tuple[str, str, int]:
    """(kind, fault spec, step it names or 0) for one kill: a few steps past the last checkpoint."""
    kind = rng.choice(("step_pause", "checkpoint_pause", "write_pause"))
    if kind == "step_pause":  # after step N's metrics line and event
        step = resumed_from + rng.randint(1, AHEAD)
    elif kind == "checkpoint_pause":  # its files written into checkpoints/.staging, not renamed in
        step = resumed_from + SAVE_EVERY * rng.randint(1, AHEAD // SAVE_EVERY)
    else:  # the process's N-th save (config, status, metrics truncation, checkpoint) before its rename
        return kind, f"{kind}@{rng.randint(1, LAST_WRITE)}:{HOLD_S}", 0
    return kind, f"{kind}@{step}:{HOLD_S}", step


@pytest.mark.slow
def test_twenty_random_kills(tiny_model_dir, data, tmp_path, uninterrupted_long):
    """Kill at 20 seeded random places (after a step's log, inside a checkpoint write, before a save's
    rename), each a few steps past the last checkpoint; resume each time."""
    rng = random.Random(20261129)
    runs = tmp_path / "runs"
    config = config_file(tmp_path, tiny_model_dir, data, runs, RANDOM_STEPS)
    began = time.monotonic()
    kills: list[str] = []
    lost: list[int] = []
    for number in range(1, KILLS + 1):
        run = only_run(runs)
        resumed_from = (run.latest_checkpoint() or (0, None))[0] if run else 0
        assert resumed_from + AHEAD < RANDOM_STEPS  # the run cannot finish before this kill
        kind, fault, step = random_fault(rng, resumed_from)
        args = ["--resume", str(run.path)] if run else ["--config", str(config)]
        log = tmp_path / f"stderr-{number}.txt"
        kill_when_held(start(args, {"LORA_STUDIO_FAULTS": fault}, log), log, kind)
        kills.append(fault)
        run = only_run(runs)
        assert run is not None
        assert run.status()["state"] == "interrupted", fault
        checkpoint = (run.latest_checkpoint() or (0, None))[0]
        assert resumed_from <= checkpoint <= resumed_from + SAVE_EVERY, (fault, resumed_from, checkpoint)
        logged = logged_steps(run)
        if kind == "step_pause":
            assert logged == step, (fault, logged)
        elif kind == "checkpoint_pause":
            assert (run.checkpoints_dir / ".staging" / f"checkpoint-{step}" / "trainer_state.json").is_file()
            assert logged == step and checkpoint < step, (fault, logged, checkpoint)
        lost.append(logged - checkpoint)
        if checkpoint == 0:  # killed before the first checkpoint: nothing to resume, start again
            shutil.rmtree(runs)
    run = only_run(runs)
    assert run is not None
    resume_until_done(run)
    check_finished_like(run, uninterrupted_long, RANDOM_STEPS)
    by_kind = Counter(fault.split("@")[0] for fault in kills)
    print(
        f"\nrandom kills: {len(kills)} ({', '.join(f'{n} {k}' for k, n in sorted(by_kind.items()))}) "
        f"in {time.monotonic() - began:.0f} s on a {RANDOM_STEPS}-step run; steps lost per kill (logged "
        f"but after the last checkpoint): max {max(lost)}, mean {sum(lost) / len(lost):.2f}; "
        f"checkpoint every {SAVE_EVERY} steps"
    )
    assert len(kills) == KILLS
    assert max(lost) <= SAVE_EVERY  # never more than the steps since the last checkpoint
