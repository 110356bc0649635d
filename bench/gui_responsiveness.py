"""GUI responsiveness: gaps between ticks of a 10 ms timer on the GUI thread, idle vs during training.

One process, one real ``MainWindow`` (offscreen). A 10 ms ``QTimer`` on the GUI thread records the
time between its ticks: a tick that comes late means the event loop was busy (metric handling,
plot redraws, the log, the Runs page...) or starved of the GIL by the training thread. Measured
(a) with the window idle for a few seconds — the baseline, in the same process — and (b) while a
tiny model trains through the Train page's own Start button with the live plots on screen and
updating (every step logged). Reported: longest and 99th-percentile gap of each, and the ratio.
Targets during training: p99 <= 50 ms, longest <= 200 ms.

``--profile`` also records what ran on the GUI thread during training (``cProfile`` only sees the
thread it was enabled on) and prints the most expensive functions: that is where to look when a
target is missed.

    python bench/gui_responsiveness.py [--quick] [--profile]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

from _common import WORK, identity_like_data, percentile, print_table, tiny_model_dir, write_results

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("LORA_STUDIO_SETTINGS", str(WORK / "settings.ini"))

TICK_MS = 10
TARGET_P99_S = 0.050
TARGET_LONGEST_S = 0.200


class GapMeter:
    """Intervals between ticks of a 10 ms timer on the GUI thread (how long the loop was held up)."""

    def __init__(self) -> None:
        from PySide6.QtCore import Qt, QTimer

        self.gaps: list[float] = []
        #: (gap s, seconds since start, what happened last) for every gap over 100 ms
        self.long: list[tuple[float, float, str]] = []
        self.last_event = ""
        self._last: float | None = None
        self._start = 0.0
        self.timer = QTimer()
        self.timer.setTimerType(Qt.TimerType.PreciseTimer)
        self.timer.setInterval(TICK_MS)
        self.timer.timeout.connect(self._tick)

    def _tick(self) -> None:
        now = time.perf_counter()
        if self._last is not None:
            gap = now - self._last
            self.gaps.append(gap)
            if gap > 0.100:
                self.long.append((gap, self._last - self._start, self.last_event))
        self._last = now

    def start(self) -> None:
        self.gaps, self.long, self._last = [], [], None
        self._start = time.perf_counter()
        self.timer.start()

    def stop(self) -> list[float]:
        self.timer.stop()
        return self.gaps


def summary(label: str, gaps: list[float], seconds: float) -> dict[str, Any]:
    return {
        "phase": label,
        "seconds": seconds,
        "ticks": len(gaps),
        "median ms": 1000 * percentile(gaps, 0.5),
        "p99 ms": 1000 * percentile(gaps, 0.99),
        "longest ms": 1000 * max(gaps, default=float("nan")),
        "gaps > 50 ms": sum(g > 0.050 for g in gaps),
    }


def spin(app: Any, until: Any, timeout_s: float) -> bool:
    """Run the event loop until ``until()`` is true (checked every 20 ms) or the time is up."""
    from PySide6.QtCore import QEventLoop, QTimer

    loop = QEventLoop()
    deadline = time.perf_counter() + timeout_s
    check = QTimer()
    check.setInterval(20)
    check.timeout.connect(lambda: loop.quit() if until() or time.perf_counter() > deadline else None)
    check.start()
    if not until():
        loop.exec()
    check.stop()
    return bool(until())


def make_config(model_dir: Path, data: Path, steps: int) -> Any:
    from lora_studio.core.config import RunConfig

    return RunConfig.from_dict(
        {
            "model": {"source": str(model_dir), "compute_dtype": "fp32"},
            "lora": {"r": 8, "alpha": 16, "dropout": 0.0},
            "data": {"path": str(data), "max_seq_len": 128, "eval_fraction": 0.1},
            "training": {
                "max_steps": steps,
                "batch_size": 4,
                "learning_rate": 1e-3,
                "logging_steps": 1,
                "eval_steps": max(5, steps // 4),
                "save_steps": max(10, steps // 2),
                "sample_prompts": [],
            },
            "output": {"runs_dir": str(WORK / "gui-runs"), "run_name": "bench"},
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="a shorter idle phase and run")
    parser.add_argument("--profile", action="store_true", help="profile the GUI thread during training")
    args = parser.parse_args()
    idle_s, steps = (3.0, 30) if args.quick else (10.0, 100)

    from lora_studio.core.models import quiet_library_defaults

    quiet_library_defaults()
    model_dir = tiny_model_dir(layers=2, hidden=64, intermediate=128, heads=4, kv_heads=2)
    data = identity_like_data(128)

    from lora_studio.core.train import events as ev
    from lora_studio.gui import workers
    from lora_studio.gui.app import MainWindow, create_app
    from lora_studio.gui.state import AppState
    from lora_studio.gui.workers import BackgroundTask

    app = create_app()
    window = MainWindow(state=AppState(make_config(model_dir, data, steps)))
    window.build_all_pages()
    window.confirm = lambda _title, _text: True
    window.save_settings = lambda: None  # keep the user's settings file out of it
    window.resize(1400, 900)
    window.show()
    window.show_page("train")

    def idle() -> bool:
        busy = any(task.busy for task in window.findChildren(BackgroundTask))
        return not busy and workers.live_count() == 0

    if not spin(app, idle, 300):
        raise SystemExit("the window's background tasks did not settle within 5 minutes")

    meter = GapMeter()
    meter.start()
    spin(app, lambda: False, idle_s)
    idle_gaps = meter.stop()

    page = window.pages["train"]
    ended: list[str] = []
    steps_seen: list[int] = []
    marks: dict[str, float] = {}

    def on_event(event: Any) -> None:
        step = getattr(event, "step", None)
        meter.last_event = type(event).__name__ + (f" {step}" if step is not None else "")
        if isinstance(event, ev.RunStarted):
            meter.start()
            marks["start"] = time.perf_counter()
            if args.profile:
                profiler.enable()
        elif isinstance(event, ev.Step):
            steps_seen.append(event.step)

    def on_ended(state: str) -> None:
        meter.last_event = f"ended ({state})"
        if args.profile:
            profiler.disable()
        marks["end"] = time.perf_counter()
        ended.append(state)
        meter.stop()

    import cProfile

    profiler = cProfile.Profile()
    window.runs.event.connect(on_event)
    window.runs.ended.connect(on_ended)
    if not page.start():
        raise SystemExit(f"the Train page refused to start: {page.messages.message()}")
    spin(app, lambda: bool(ended), 1800)
    if ended != ["completed"]:
        raise SystemExit(f"training did not complete: {ended} {page.messages.message()}")
    train_gaps = meter.gaps
    redraws = page.plots.redraws
    points = page.plots.loss.count("loss")
    window.runs.stop()
    workers.wait_all(60_000)
    window.close()

    rows = [
        summary("idle (no training)", idle_gaps, idle_s),
        summary(f"training ({steps} steps, live plots)", train_gaps, marks["end"] - marks["start"]),
    ]
    print_table(f"GUI thread: gaps between ticks of a {TICK_MS} ms timer", rows)
    p99, longest = rows[1]["p99 ms"], rows[1]["longest ms"]
    ratio_p99 = p99 / rows[0]["p99 ms"]
    met = p99 <= TARGET_P99_S * 1000 and longest <= TARGET_LONGEST_S * 1000
    print(
        f"steps seen {len(steps_seen)}, loss points plotted {points}, plot redraws {redraws}\n"
        f"training/idle p99: {ratio_p99:.2f}x; target p99 <= 50 ms and longest <= 200 ms during "
        f"training: {'met' if met else 'NOT met'}"
    )
    for gap, at, what in meter.long:
        print(f"  gap of {gap * 1000:.0f} ms at {at:.1f} s, after the event: {what or '(none yet)'}")
    if args.profile:
        import pstats

        print("\nGUI thread during training, by own time:")
        pstats.Stats(profiler).sort_stats("tottime").print_stats(15)
        print("\nGUI thread during training, by cumulative time:")
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(25)
    write_results(
        "gui_responsiveness",
        {
            "rows": rows,
            "steps": steps,
            "plot_redraws": redraws,
            "ratio_p99_training_vs_idle": ratio_p99,
            "target": "during training: p99 <= 50 ms, longest <= 200 ms",
            "met": met,
            "long_gaps": [{"ms": 1000 * g, "at_s": a, "after": w} for g, a, w in meter.long],
        },
    )


if __name__ == "__main__":
    main()
