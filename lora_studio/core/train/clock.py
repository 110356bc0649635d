"""The run's one clock: how long a run has worked, the same number everywhere it is shown.

A run's time was once measured three ways — the Train page from the first step, the finished
banner from the engine's start, the Runs page from the folder's creation to its last write — and a
person saw three different durations for one run. Now the engine keeps this clock and every place
reads it: the log and banner (``Finished.elapsed_s``), the Train page's Elapsed (synced from each
event's ``elapsed_s``), ``metrics.jsonl`` and ``status.json`` (``elapsed_s``), the Runs page and
``lora-studio runs``.

Definition: working time since the run started — loading, tokenizing, sample answers and training
steps — with earlier sessions of a resumed run added and time spent paused (a person chatting with
the half-trained model) left out. The time a stopped run sat waiting to be resumed is not the run's.
"""

from __future__ import annotations

import time


class RunClock:
    def __init__(self, before_s: float = 0.0) -> None:
        self._before = before_s
        self._since = time.monotonic()
        self._paused_at: float | None = None

    def elapsed(self) -> float:
        now = self._paused_at if self._paused_at is not None else time.monotonic()
        return self._before + now - self._since

    @property
    def paused(self) -> bool:
        return self._paused_at is not None

    def pause(self) -> None:
        if self._paused_at is None:
            self._paused_at = time.monotonic()

    def resume(self) -> float:
        """Continue; returns how long the pause was (what rates measured across it must leave out)."""
        if self._paused_at is None:
            return 0.0
        held = time.monotonic() - self._paused_at
        self._since += held
        self._paused_at = None
        return held


def format_duration(seconds: float | None, none: str = "—") -> str:
    """'3:55' or '1:02:07': the one way a duration is written — the Train page, its banner and log,
    the Runs page and the command line (seconds cut, not rounded, so every place says the same)."""
    if seconds is None:
        return none
    whole = max(0, int(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
