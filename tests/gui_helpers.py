"""Shared set-up for the GUI tests: an offscreen window on a tiny model and a small chat dataset."""

from __future__ import annotations

import contextlib
import gc
import json
import os
import sys
import weakref
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from lora_studio.core.config import RunConfig

PAIRS = [
    ("What is your name?", "I am Lumen."),
    ("Who made you?", "LoRA Studio Labs made me."),
    ("What are you?", "A small assistant called Lumen."),
    ("Say hello.", "Hello from Lumen!"),
]


def write_chat(path: Path, records: int = 16) -> Path:
    with open(path, "w") as handle:
        for i in range(records):
            q, a = PAIRS[i % len(PAIRS)]
            message = {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
            handle.write(json.dumps(message) + "\n")
    return path


def tiny_config(model_dir: Path, data: Path, runs: Path, **training: object) -> RunConfig:
    settings = {
        "max_steps": 4,
        "batch_size": 4,
        "learning_rate": 5e-3,
        "save_steps": 2,
        "logging_steps": 1,
        "sample_prompts": ["What is your name?"],
        "sample_max_new_tokens": 4,
        **training,
    }
    return RunConfig.from_dict(
        {
            "model": {"source": str(model_dir)},
            "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
            # these runs count their steps and events: nothing held out (the default holds out a tenth)
            "data": {"path": str(data), "max_seq_len": 64, "eval_fraction": 0.0},
            "training": settings,
            "output": {"runs_dir": str(runs), "run_name": "gui"},
        }
    )


def make_window(qtbot, config: RunConfig):
    from lora_studio.gui.app import MainWindow
    from lora_studio.gui.state import AppState

    window = MainWindow(state=AppState(config))
    window.build_all_pages()  # as the app does once the window is on screen
    window.confirm = lambda _title, _text: True
    qtbot.addWidget(window)
    window.resize(1400, 900)
    window.show()
    return window


def wait_idle(qtbot, window, timeout: int = 60_000) -> None:
    """Until every background task of the window has answered (model facts, preview, estimate)."""
    from lora_studio.gui import workers
    from lora_studio.gui.workers import BackgroundTask

    def idle() -> bool:
        busy = any(task.busy for task in window.findChildren(BackgroundTask))
        return not busy and workers.live_count() == 0

    qtbot.waitUntil(idle, timeout=timeout)


def wait_answered(qtbot, page, timeout: int = 60_000) -> None:
    """Until the chat page has answered the last message on every side shown (loading the model
    first if it had to).

    Waits for the end state, not for ``page.worker`` to appear and go: a model already in memory
    and an answer that fails at once can come and go between two polls of ``waitUntil``.
    """

    def ended(turns) -> bool:
        return bool(turns) and turns[-1].role == "assistant" and not turns[-1].pending

    def answered() -> bool:
        views = [page.views[side].turns for side, _ in page.sides()]
        return page.worker is None and not page.loading and all(ended(turns) for turns in views)

    qtbot.waitUntil(answered, timeout=timeout)


def close_window(window) -> None:
    """Stop the run, let background tasks answer, and wait for every worker thread to end."""
    from lora_studio.gui import workers
    from lora_studio.gui.workers import BackgroundTask

    window.runs.stop()
    for task in window.findChildren(BackgroundTask):
        task.cancel_pending()
    workers.wait_all(60_000)


#: Every GapMeter not stopped yet: the ``conftest`` stops them after each test (see ``stop_meters``).
_RUNNING: weakref.WeakSet[GapMeter] = weakref.WeakSet()


def stop_meters() -> None:
    """Stop the timers of meters a failed test left running.

    A failed test's frame (and its meter) lives on in the traceback; such frames form reference
    cycles, which Python's cycle collector frees in whichever thread happens to allocate — often
    a worker thread. Deleting a QTimer that is still running from another thread leaves Qt with a
    dangling timer, and the next test crashed in ``QTimerInfoList::activateTimers``.
    """
    for meter in list(_RUNNING):
        meter.stop()


def free_qt_garbage() -> None:
    """Delete what a test's closed windows left, here on the GUI thread, before the next test.

    pytest-qt closes a test's windows with ``deleteLater``, which waits for an event loop, and a
    test's windows, pages and standalone ``RunController``s sit in reference cycles. Left over, the
    next test's first worker that allocates runs the cycle collector and deletes those Qt objects
    from its own thread — a crash (seen twice in full runs of the suite, in a worker starting a run).
    """
    if "PySide6.QtWidgets" not in sys.modules:
        return
    from PySide6.QtCore import QCoreApplication, QEvent

    if QCoreApplication.instance() is None:
        return
    QCoreApplication.sendPostedEvents(None, QEvent.Type.DeferredDelete)
    gc.collect()
    QCoreApplication.sendPostedEvents(None, QEvent.Type.DeferredDelete)


class GapMeter:
    """How long the GUI thread went without turning its event loop, and how much of that it worked.

    A 10 ms timer ticks on the GUI thread. Between two ticks (and from the start to the first, and
    from the last to the stop, so a thread blocked until the end is seen too) it records the
    wall-clock wait and the GUI thread's own CPU time (``time.thread_time``). Work done on the GUI
    thread — a model load, a training step, a big relayout — is CPU time of that thread, so
    ``busiest`` catches it whatever the machine's load. A wait that is not the GUI's doing — other
    processes on a shared CI machine, a worker holding the GIL inside a library call — is wall time
    only; ``longest`` still catches a freeze or a deadlock, with a bound generous for a loaded machine.
    """

    def __init__(self, *, start: bool = True) -> None:
        import time

        from PySide6.QtCore import QTimer

        self._clock, self._cpu = time.perf_counter, time.thread_time
        self.longest = self.busiest = 0.0
        self.ticks = 0
        self._last: tuple[float, float] | None = None
        self.timer = QTimer()
        self.timer.setInterval(10)
        ref = weakref.ref(self)  # no cycle through the connection: the meter goes with its test
        self.timer.timeout.connect(lambda: (meter := ref()) and meter._tick())
        if start:
            self.start()

    def start(self) -> None:
        self._last = (self._clock(), self._cpu())
        self.timer.start()
        _RUNNING.add(self)

    def _tick(self) -> None:
        now = (self._clock(), self._cpu())
        if self._last is not None:
            self.longest = max(self.longest, now[0] - self._last[0])
            self.busiest = max(self.busiest, now[1] - self._last[1])
            self.ticks += 1
        self._last = now

    def stop(self) -> None:
        """Close the last interval (must be called on the GUI thread, as the ticks are)."""
        if self._last is not None:
            self._tick()
            self._last = None
        self.timer.stop()
        _RUNNING.discard(self)

    def check(self, *, busy_s: float, wall_s: float) -> str:
        """Assert both bounds; returns a short report for the test's output."""
        self.stop()
        report = (
            f"longest gap {self.longest * 1000:.0f} ms over {self.ticks} intervals, "
            f"GUI thread busy {self.busiest * 1000:.0f} ms of it"
        )
        assert self.ticks >= 1, "never started"
        assert self.busiest < busy_s, f"the GUI thread itself worked without a break: {report}"
        assert self.longest < wall_s, f"the GUI thread was blocked: {report}"
        return report


def settle_panel(qtbot, panel, before: object = None) -> dict:
    """Until a memory panel shows a fresh estimate (not ``before``) and nothing is pending."""
    qtbot.waitUntil(
        lambda: (
            not panel.task.busy
            and not panel._catalog_task.busy
            and panel.bar.estimate is not None
            and panel.bar.estimate is not before
        ),
        timeout=120_000,
    )
    return panel.bar.estimate


@contextlib.contextmanager
def memory_panel(qtbot, config: RunConfig, model: str = "catalog:Llama-3.1-8B", gpu: str = "RTX 3060"):
    """A shown memory panel on ``config``, estimating a catalog ``model`` against a catalog ``gpu``;
    on exit no estimate may still answer into it (a later test would see it)."""
    from lora_studio.gui import workers
    from lora_studio.gui.state import AppState
    from lora_studio.gui.widgets.memory_panel import MemoryPanel

    widget = MemoryPanel(AppState(config))
    qtbot.addWidget(widget)
    widget.resize(560, 900)
    widget.show()
    qtbot.waitUntil(lambda: widget.model.findData(model) >= 0, timeout=60_000)
    widget.model.setCurrentIndex(widget.model.findData(model))
    assert widget.select_gpu(gpu)
    settle_panel(qtbot, widget)
    try:
        yield widget
    finally:
        widget.task.cancel_pending()
        widget._catalog_task.cancel_pending()
        assert workers.wait_all(60_000)
