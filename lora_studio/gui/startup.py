"""Start-up timing: when the main window has really been painted, and how long that took.

"Shown" means the first paint of the window has finished, not merely that ``show()`` was called:
``show()`` only asks the platform for a window, and a timer posted right after it can fire before
anything is on screen. The time is counted from the process's start (as the operating system
recorded it), so it includes the interpreter and every import — what a user waits for.
``lora-studio --print-startup-time`` prints it; ``--startup-check`` prints it as JSON and quits
(the tests and ``bench/startup.py`` use that).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QEvent, QObject, QTimer
from PySide6.QtWidgets import QApplication, QWidget

#: Libraries that must not be imported before the window shows (they take seconds).
HEAVY = ("torch", "transformers", "peft", "datasets", "bitsandbytes")
#: If no paint event arrives (a platform that never exposes the window), go on after this long.
FALLBACK_MS = 10_000


class FirstPaint(QObject):
    """Calls ``callback`` once, just after the first paint of ``window`` (or of anything in it).

    The filter sits on the application, not the window: a window whose children cover it (and
    that has no style sheet background) never receives a paint event itself.
    """

    def __init__(self, window: QWidget, callback: Callable[[], None]) -> None:
        super().__init__(window)
        self._window = window
        self._callback = callback
        self._done = False
        self._app = QApplication.instance()
        if self._app is not None:
            self._app.installEventFilter(self)
        QTimer.singleShot(FALLBACK_MS, self._fire)

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        if (
            event.type() == QEvent.Type.Paint
            and not self._done
            and isinstance(watched, QWidget)
            and watched.window() is self._window
        ):
            QTimer.singleShot(0, self._fire)  # runs once this paint (and its flush) is over
        return False

    def _fire(self) -> None:
        if self._done:
            return
        self._done = True
        if self._app is not None:
            self._app.removeEventFilter(self)
        self._callback()


def since_process_start() -> float:
    """Seconds since the operating system started this process.

    On Linux both ends are read on the boot clock (``/proc/self/stat``'s start time in clock ticks,
    10 ms): psutil's ``create_time`` adds the boot time, which the kernel gives in whole seconds,
    and can be up to a second off. Elsewhere psutil's wall-clock start time is used.
    """
    try:
        with open("/proc/self/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        return time.clock_gettime(time.CLOCK_BOOTTIME) - int(fields[19]) / ticks
    except (OSError, ValueError, IndexError, AttributeError):
        import psutil

        return time.time() - psutil.Process().create_time()


def startup_report(main_started: float) -> dict[str, Any]:
    """What the start-up cost: from process start, inside ``main()``, and which heavy imports ran."""
    return {
        "shown_s": round(time.perf_counter() - main_started, 3),
        "since_process_start_s": round(since_process_start(), 3),
        "heavy_imported": [name for name in HEAVY if name in sys.modules],
    }


def startup_line(report: dict[str, Any]) -> str:
    """One line for a person: 'Start-up: window shown 0.62 s after the process started ...'."""
    heavy = report["heavy_imported"]
    imported = f"already imported: {', '.join(heavy)}" if heavy else "torch not imported yet"
    return (
        f"Start-up: window shown {report['since_process_start_s']:.2f} s after the process started "
        f"({report['shown_s']:.2f} s of it in the app's own start-up; {imported})"
    )
