"""Start-up: process start to the main window painted, against two floors measured in the same run.

Three commands, started in turn (floor, floor, app, floor, floor, app, ...) so machine noise hits
them alike, each timed by this script from the moment it is spawned to the moment it prints its
line (the interpreter's start and every import included, the process's exit not):

* ``import PySide6.QtWidgets`` — the issue's floor: Qt alone, no window;
* a minimal window — PySide6 + pyqtgraph imported, a ``QMainWindow`` holding one ``PlotWidget``
  shown and painted (the floor DESIGN.md §8 names: what any pyqtgraph app must pay);
* ``lora-studio gui --startup-check`` — the app, which prints when its first paint has finished,
  its own timer from process start, and whether torch & co. were imported before that.

Target: app <= 1.5x the minimal window (DESIGN.md §8); the ratio to the bare import is printed too,
and torch must not be imported before the window shows.

    python bench/startup.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from typing import Any

from _common import ROOT, WORK, median, print_table, write_results

TARGET = 1.5
IMPORT_FLOOR = "import PySide6.QtWidgets; print('ready', flush=True)"
MINIMAL_WINDOW = """
import os, time
from PySide6.QtCore import QEvent, QObject, QTimer
from PySide6.QtWidgets import QApplication, QMainWindow
import pyqtgraph as pg

class Painted(QObject):  # the first paint of anything in the window (as gui/startup.py does)
    def eventFilter(self, obj, event):
        if event.type() == QEvent.Type.Paint and getattr(obj, "window", lambda: None)() is window:
            app.removeEventFilter(self)
            QTimer.singleShot(0, done)
        return False

def done():  # seconds since process start on the boot clock, as gui/startup.py measures it
    start = int(open("/proc/self/stat").read().rsplit(")", 1)[1].split()[19]) / os.sysconf("SC_CLK_TCK")
    print(round(time.clock_gettime(time.CLOCK_BOOTTIME) - start, 3), flush=True)
    app.quit()

app = QApplication([])
window = QMainWindow()
window.setCentralWidget(pg.PlotWidget())
window.resize(1000, 700)
painted = Painted()
app.installEventFilter(painted)
window.show()
app.exec()
"""


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, str]:
    """Seconds from spawning ``argv`` until it prints its first line of output (and that line)."""
    start = time.perf_counter()
    process = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT, env=env
    )
    assert process.stdout is not None
    timer = threading.Timer(120, process.kill)  # a window that never paints must not hang the bench
    timer.start()
    line = process.stdout.readline()
    elapsed = time.perf_counter() - start
    process.stdout.read()
    code = process.wait()
    timer.cancel()
    if code != 0 or not line:
        raise SystemExit(f"{' '.join(argv)} failed (exit code {code}, output {line!r})")
    return elapsed, line.strip()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="3 repetitions instead of 7")
    args = parser.parse_args()
    reps = 3 if args.quick else 7
    env = {
        **os.environ,
        "QT_QPA_PLATFORM": os.environ.get("QT_QPA_PLATFORM", "offscreen"),
        "LORA_STUDIO_SETTINGS": str(WORK / "startup-settings.ini"),
    }
    commands = {
        "import PySide6.QtWidgets": [sys.executable, "-c", IMPORT_FLOOR],
        "minimal pyqtgraph window": [sys.executable, "-c", MINIMAL_WINDOW],
        "LoRA Studio window": [sys.executable, "-m", "lora_studio", "gui", "--startup-check"],
    }
    times: dict[str, list[float]] = {name: [] for name in commands}
    own: dict[str, list[float]] = {name: [] for name in commands}
    heavy: set[str] = set()
    for argv in commands.values():  # warm the disk cache; not counted
        timed(argv, env)
    for _ in range(reps):
        for name, argv in commands.items():
            elapsed, line = timed(argv, env)
            times[name].append(elapsed)
            if name == "minimal pyqtgraph window":
                own[name].append(float(line))
            elif name == "LoRA Studio window":
                report: dict[str, Any] = json.loads(line)
                own[name].append(report["since_process_start_s"])
                heavy.update(report["heavy_imported"])
    floor = median(times["import PySide6.QtWidgets"])
    window_floor = median(times["minimal pyqtgraph window"])
    rows = [
        {
            "what": name,
            "median s": median(values),
            "min s": min(values),
            "own timer s": median(own[name]) if own[name] else float("nan"),
            "vs import": median(values) / floor,
            "vs minimal window": median(values) / window_floor,
        }
        for name, values in times.items()
    ]
    print_table(f"Start-up, spawn to first line printed (median of {reps}, interleaved)", rows)
    ratio = rows[2]["vs minimal window"]
    met = ratio <= TARGET and not heavy
    print(
        f"heavy libraries imported before the window showed: {sorted(heavy) or 'none'}\n"
        f"app / minimal window: {ratio:.2f}x, app / bare PySide6 import: {rows[2]['vs import']:.2f}x; "
        f"target <= {TARGET}x the minimal window with torch not imported: {'met' if met else 'NOT met'}"
    )
    write_results(
        "startup",
        {
            "rows": rows,
            "reps": reps,
            "heavy_imported_before_show": sorted(heavy),
            "ratio_vs_minimal_window": ratio,
            "ratio_vs_import": rows[2]["vs import"],
            "target": f"app <= {TARGET}x the minimal pyqtgraph window, torch not imported before show",
            "met": met,
        },
    )


if __name__ == "__main__":
    main()
