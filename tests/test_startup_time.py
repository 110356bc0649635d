"""``--print-startup-time`` (the app's own start-up timer) and the guard against PySide6's leaked
reference to ``None`` on every Python paint override (fatal after a few minutes of live plots)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _env(tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "QT_QPA_PLATFORM": "offscreen",
        "LORA_STUDIO_SETTINGS": str(tmp_path / "s.ini"),
        "HOME": str(tmp_path),
    }


def test_print_startup_time_reports_the_first_paint_since_process_start(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "lora_studio", "--print-startup-time", "gui", "--startup-check"],
        capture_output=True, text=True, timeout=180, cwd=ROOT, env=_env(tmp_path),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    human, machine = result.stdout.strip().splitlines()[-2:]
    report = json.loads(machine)
    assert human.startswith("Start-up: window shown") and "torch not imported yet" in human
    # the process-start clock includes the interpreter and imports, so it is the larger one
    assert 0 < report["shown_s"] <= report["since_process_start_s"] < 120
    assert f"{report['since_process_start_s']:.2f} s" in human


def test_print_startup_time_is_refused_for_other_commands(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "lora_studio", "--print-startup-time", "runs"],
        capture_output=True, text=True, timeout=60, cwd=ROOT, env=_env(tmp_path),
    )  # fmt: skip
    assert result.returncode == 2
    assert "--print-startup-time is for the app" in result.stderr and "'runs'" in result.stderr


def test_repainting_live_plots_cannot_exhaust_the_reference_count_of_none(tmp_path):
    code = (
        "import sys\n"
        "from lora_studio.gui.app import create_app\n"
        "from lora_studio.gui.widgets.plots import LivePlot\n"
        "app = create_app()\n"
        "plot = LivePlot('Loss', 'Loss')\n"
        "plot.add_series('loss', 'Loss', '#3366cc')\n"
        "plot.resize(400, 300)\n"
        "plot.show()\n"
        "for i in range(50):\n"
        "    plot.append('loss', i, 1.0 / (i + 1))\n"
        "plot.refresh()\n"
        "app.processEvents()\n"
        "before = sys.getrefcount(None)\n"
        "for _ in range(200):\n"
        "    plot.repaint()\n"
        "print(before - sys.getrefcount(None), sys.getrefcount(None))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env=_env(tmp_path),
    )
    assert result.returncode == 0, result.stderr
    lost, count = (int(v) for v in result.stdout.split())
    # either these bindings do not leak, or None has been given headroom no session can use up
    assert lost < 100 or count > 2**39
