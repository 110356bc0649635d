"""Promise 6: configs and exports are never half-written.

A subprocess saving a config (``RunConfig.save`` → ``atomic_write_text``) or exporting an adapter
(``lora-studio export``) is SIGKILLed in the middle of the save. Fault injection
(``write_pause@0:S``) holds every save after its content is on disk and before it is renamed into
place — the moment where a plain ``open(dest, "w")`` would leave a torn file — and a second test
kills a process that saves in a loop at seeded random moments, with no injection at all. Afterwards
the destination is always the old complete file (or absent when there was none) or the new one.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import test_gui_chat_export

from lora_studio.core.config import RunConfig
from lora_studio.core.export import STAGING_PREFIX

PAUSE = "write_pause@0:120"  # every save of the subprocess waits 2 minutes before its rename
RANDOM_KILLS = 12
tiny_adapter = test_gui_chat_export.tiny_adapter  # the fixture: a random tiny LoRA adapter

SAVE = """
import os, sys
from lora_studio.core.config import RunConfig
configs = [RunConfig.from_dict({"training": {"learning_rate": rate}}) for rate in (1e-4, 2e-4)]
done = os.open(sys.argv[3], os.O_WRONLY | os.O_CREAT) if len(sys.argv) > 3 else None
print("ready", flush=True)
for i in range(int(sys.argv[2])):
    configs[i % 2].save(sys.argv[1])
    if done is not None:  # how many saves are complete, for the test to pick its moment
        os.pwrite(done, b"%12d" % (i + 1), 0)
"""


def run_python(code: str, *args: str, faults: str = "") -> subprocess.Popen:
    env = dict(os.environ, LORA_STUDIO_FAULTS=faults)
    return subprocess.Popen(
        [sys.executable, "-c", code, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def wait_until(predicate, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"the writer ended early: {proc.stderr.read().decode()[-2000:]}")
        assert time.monotonic() < deadline, "timed out waiting for the writer"
        time.sleep(0.02)


def kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL


def temp_files(folder: Path, name: str) -> list[Path]:
    return sorted(folder.glob(f".{name}.*.tmp"))


@pytest.mark.parametrize("old", [True, False], ids=["replacing", "new"])
def test_a_config_save_killed_before_its_rename_leaves_the_old_file_or_none(old, tmp_path):
    dest = tmp_path / "run.toml"
    old_text = RunConfig.from_dict({"training": {"learning_rate": 5e-5}}).to_toml()
    new_text = RunConfig.from_dict({"training": {"learning_rate": 1e-4}}).to_toml()
    if old:
        RunConfig.from_dict({"training": {"learning_rate": 5e-5}}).save(dest)
    proc = run_python(SAVE, str(dest), "1", faults=PAUSE)
    # the new content is complete in its temporary file: the writer now sits just before the rename
    wait_until(lambda: any(p.read_text() == new_text for p in temp_files(tmp_path, dest.name)), proc)
    kill(proc)
    if old:
        assert dest.read_text() == old_text  # byte for byte the old file
        assert RunConfig.load(dest).training.learning_rate == 5e-5
    else:
        assert not dest.exists()
    # without the pause the same save goes through: the kill above is what kept the new file out
    proc = run_python(SAVE, str(dest), "1")
    assert proc.wait(timeout=120) == 0, proc.stderr.read().decode()
    assert dest.read_text() == new_text


def saves_done(counter: Path) -> int:
    text = counter.read_bytes().strip() if counter.exists() else b""
    return int(text) if text.isdigit() else 0


def test_config_saves_killed_at_random_moments_are_always_whole(tmp_path):
    dest = tmp_path / "run.toml"
    whole = {RunConfig.from_dict({"training": {"learning_rate": r}}).to_toml() for r in (1e-4, 2e-4)}
    rng = random.Random(20261129)
    seen = set()
    for number in range(RANDOM_KILLS):
        counter = tmp_path / f"saves-{number}"
        proc = run_python(SAVE, str(dest), "100000", str(counter))
        # the moment is counted in saves, not seconds (a slow disk may take longer than a guessed
        # sleep for the first one): once the seeded number is complete, the kill lands somewhere in
        # one of the saves that follow, with 100000 still to go
        target = rng.randint(1, 60)
        wait_until(lambda counter=counter, target=target: saves_done(counter) >= target, proc)
        kill(proc)
        text = dest.read_text()
        assert text in whole, f"a torn config:\n{text}"
        seen.add(text)
    assert len(seen) == 2  # both contents were seen: the kills did land on different saves


def tree_digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def export_command(adapter: Path, out: Path, *more: str) -> list[str]:
    return [sys.executable, "-m", "lora_studio", "export", str(adapter), "--format", "adapter",
            "--out", str(out), "--no-verify", *more]  # fmt: skip


@pytest.mark.slow
def test_an_adapter_export_killed_mid_save_leaves_the_old_export_or_none(tiny_adapter, tmp_path):
    out = tmp_path / "out"
    target = out / "adapter"
    # 1. no earlier export: killed while the new one waits in staging → nothing named "adapter"
    env = dict(os.environ, LORA_STUDIO_FAULTS=PAUSE)
    proc = subprocess.Popen(export_command(tiny_adapter, out), env=env, stderr=subprocess.PIPE)
    staged = lambda: [p for p in out.glob(f"{STAGING_PREFIX}*.partial/adapter/adapter_model.safetensors")]  # noqa: E731
    wait_until(lambda: bool(staged()) and (staged()[0].parent / "adapter_config.json").is_file(), proc)
    time.sleep(0.5)  # the README and tokenizer files follow; then the rename waits for the kill
    kill(proc)
    assert not target.exists()
    # 2. an export that completes, then one with --overwrite killed mid-save → the first one, intact
    done = subprocess.run(export_command(tiny_adapter, out), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert not list(out.glob(f"{STAGING_PREFIX}*.partial"))  # the killed run's staging was cleaned up
    before = tree_digest(target)
    assert "adapter_model.safetensors" in before
    proc = subprocess.Popen(export_command(tiny_adapter, out, "--overwrite"), env=env, stderr=subprocess.PIPE)
    wait_until(lambda: bool(staged()) and (staged()[0].parent / "adapter_config.json").is_file(), proc)
    time.sleep(0.5)
    kill(proc)
    assert tree_digest(target) == before  # every file of the old export, byte for byte
