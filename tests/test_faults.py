"""The fault-injection seam (``core/faults.py``): parsing, and the holds that tests act on.

A hold announces itself on stderr before it waits, so a test acts on "the process is held here",
never on a guessed number of seconds; ``step_pause`` holds a run after a step and lets a stop or a
pause asked meanwhile take effect at once.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from gui_helpers import tiny_config, write_chat

from lora_studio.core.faults import HOLDING, KINDS, Fault, due, hold, parse_faults
from lora_studio.core.train import events as ev


def test_parse_faults_reads_kind_step_and_seconds():
    faults = parse_faults("oom@3, step_pause@5:2.5,write_pause@0:120")
    assert faults == {
        "oom": Fault("oom", 3),
        "step_pause": Fault("step_pause", 5, 2.5),
        "write_pause": Fault("write_pause", 0, 120.0),
    }
    assert due(faults, "step_pause", 5) == Fault("step_pause", 5, 2.5)
    assert due(faults, "step_pause", 4) is None and due(faults, "nan", 5) is None
    assert "step_pause" in KINDS
    assert parse_faults("") == {}
    with pytest.raises(ValueError, match="unknown fault 'step_hold'"):
        parse_faults("step_hold@1")


def test_parse_faults_reads_the_environment_without_a_spec(monkeypatch):
    monkeypatch.setenv("LORA_STUDIO_FAULTS", "step_pause@2:60")
    assert parse_faults() == {"step_pause": Fault("step_pause", 2, 60.0)}


def test_a_hold_announces_itself_then_ends_as_soon_as_it_is_asked_to(capsys):
    answers = iter([False, False, True])
    asked: list[bool] = []

    def until() -> bool:
        asked.append(next(answers))
        return asked[-1]

    hold(Fault("step_pause", 2, 600), "after step 2", until=until)  # 600 s unless asked
    assert asked == [False, False, True]
    assert capsys.readouterr().err == f"{HOLDING}step_pause holding after step 2 for 600 s\n"


def test_a_hold_nobody_ends_lasts_its_seconds(capsys):
    began = time.monotonic()
    hold(Fault("write_pause", 0, 0.2), "write 1 before its rename")
    assert time.monotonic() - began >= 0.2
    assert "write_pause holding write 1 before its rename" in capsys.readouterr().err


class HeldRun:
    """``engine.train`` in a thread with a ``step_pause`` fault; the test acts once the hold is announced."""

    def __init__(self, tiny_model_dir: Path, tmp_path: Path, fault: str, steps: int) -> None:
        from lora_studio.core.train import train

        chat = write_chat(tmp_path / "chat.jsonl")
        config = tiny_config(
            tiny_model_dir, chat, tmp_path / "runs", max_steps=steps, save_steps=100, sample_prompts=[]
        )
        self.cancel, self.pause = threading.Event(), threading.Event()
        self.events: list[ev.Event] = []
        self.outcome: list[Any] = []
        self.thread = threading.Thread(
            target=lambda: self.outcome.append(
                train(config, self.events.append, cancel=self.cancel, pause=self.pause, faults=fault)
            ),
            daemon=True,
        )
        self.thread.start()

    def steps(self) -> list[int]:
        return [e.step for e in self.events if isinstance(e, ev.Step)]

    def wait_until(self, predicate, what: str, timeout: float = 300) -> None:
        """Only a guard against a hang: the run reaches each state however slow the machine."""
        deadline = time.monotonic() + timeout
        while not predicate():
            assert self.thread.is_alive() or predicate(), f"the run ended before {what}: {self.outcome}"
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.02)

    def finish(self) -> Any:
        self.thread.join(timeout=300)
        assert not self.thread.is_alive() and self.outcome, "the run did not end"
        return self.outcome[0]


def wait_for_hold(run: HeldRun, capfd, line: str) -> None:
    seen: list[str] = []

    def announced() -> bool:
        seen.append(capfd.readouterr().err)
        return line in "".join(seen)

    run.wait_until(announced, f"'{line}'")


def test_step_pause_holds_a_run_after_that_step_until_it_is_stopped(tiny_model_dir, tmp_path, capfd):
    run = HeldRun(tiny_model_dir, tmp_path, "step_pause@2:600", steps=6)
    wait_for_hold(run, capfd, f"{HOLDING}step_pause holding after step 2 for 600 s")
    assert run.steps() == [1, 2]  # step 2's event went out before the hold
    assert run.thread.is_alive()
    run.cancel.set()  # what the Stop button and Ctrl-C do: the hold ends, the run stops at step 2
    result = run.finish()
    assert result.status == "cancelled" and result.step == 2
    assert run.steps() == [1, 2]


def test_a_pause_asked_during_a_step_pause_holds_at_that_step_once_it_is_logged(
    tiny_model_dir, tmp_path, capfd
):
    run = HeldRun(tiny_model_dir, tmp_path, "step_pause@2:600", steps=4)
    wait_for_hold(run, capfd, "step_pause holding after step 2")
    run.pause.set()
    run.wait_until(lambda: any(isinstance(e, ev.Paused) and e.paused for e in run.events), "the pause")
    paused = next(e for e in run.events if isinstance(e, ev.Paused))
    # held right after step 2's log: the step it says it is paused at is the last one drawn (#24)
    assert paused.step == 2 and run.steps() == [1, 2]
    run.pause.clear()
    result = run.finish()
    assert result.status == "completed" and run.steps() == [1, 2, 3, 4]
