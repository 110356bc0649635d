"""The run's one clock: working time, pauses left out, earlier sessions added."""

import pytest

from lora_studio.core.train import clock as clock_module
from lora_studio.core.train.clock import RunClock


@pytest.fixture
def now(monkeypatch):
    moment = [100.0]
    monkeypatch.setattr(clock_module.time, "monotonic", lambda: moment[0])
    return moment


def test_a_pause_stands_the_clock_still_and_resume_says_how_long_it_was(now):
    clock = RunClock()
    now[0] += 30
    assert clock.elapsed() == 30
    clock.pause()
    now[0] += 600  # a person chats with the paused run for ten minutes
    assert clock.elapsed() == 30 and clock.paused
    assert clock.resume() == 600
    now[0] += 5
    assert clock.elapsed() == 35 and not clock.paused
    assert clock.resume() == 0.0  # not paused: nothing to leave out


def test_a_resumed_run_counts_on_from_its_earlier_sessions(now):
    clock = RunClock(before_s=125.0)
    now[0] += 10
    assert clock.elapsed() == 135.0
    clock.pause()
    clock.pause()  # a second pause call does not move the start of the pause
    now[0] += 50
    assert clock.resume() == 50
