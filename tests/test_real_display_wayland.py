"""The same look on Wayland: ``lora-studio`` on a headless Weston, the picture from the compositor.

Wayland gives clients no global window positions, so nothing can be clicked from outside; what is
checked is the first start — the main window with the first-run System check over it, after its
checks finished — in the picture Weston composited. A window that was never painted would be a
black (or missing) rectangle there. Without Weston the module skips with one line; in CI it fails.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from lora_studio.core.config import RunConfig
from lora_studio.gui import xserver

ROOT = Path(__file__).resolve().parents[1]
SHOTS = ROOT / "test-artifacts" / "real-display-wayland"
WAIT_S = 300  # a guard against hangs, never a speed requirement

missing = xserver.HeadlessWayland.missing_tools()
if missing:
    message = f"Wayland display tests need {', '.join(missing)}: apt-get install -y weston"
    if os.environ.get("CI"):
        pytest.fail(f"CI must run the Wayland display test; {message}", pytrace=False)
    pytest.skip(message, allow_module_level=True)


def read_png(path: Path) -> np.ndarray:
    from PySide6.QtGui import QImage

    image = QImage(str(path)).convertToFormat(QImage.Format.Format_RGB888)
    array = np.frombuffer(image.constBits(), np.uint8, image.sizeInBytes())
    rows = array.reshape(image.height(), image.bytesPerLine())
    return rows[:, : image.width() * 3].reshape(image.height(), image.width(), 3).copy()


def test_first_start_on_wayland_is_painted(tiny_model_dir, tmp_path):
    config = tmp_path / "run.toml"
    RunConfig().with_overrides({"model.source": str(tiny_model_dir), "data.path": "demo"}).save(config)
    map_path = tmp_path / "widgets.json"
    with xserver.HeadlessWayland() as compositor:
        env = compositor.env()
        env.update({
            "LORA_STUDIO_SETTINGS": str(tmp_path / "settings.ini"), "LORA_STUDIO_RUNS_DIR": str(tmp_path / "runs"),
            "LORA_STUDIO_CONFIG_DIR": str(tmp_path / "config"), "LORA_STUDIO_CACHE_DIR": str(tmp_path / "cache"),
            "XDG_CONFIG_HOME": str(tmp_path / "xdg-config"), "XDG_DATA_HOME": str(tmp_path / "xdg-data"),
            "LORA_STUDIO_WIDGET_MAP": str(map_path),
        })  # fmt: skip
        env.pop("LORA_STUDIO_NO_FIRST_RUN", None)
        proc = subprocess.Popen(
            [sys.executable, "-m", "lora_studio", "gui", "--config", str(config)],
            env=env,
            stderr=subprocess.PIPE,
        )
        try:
            deadline = time.monotonic() + WAIT_S
            windows: list[dict] = []
            while time.monotonic() < deadline:
                assert proc.poll() is None, proc.stderr.read().decode(errors="replace")[-3000:]
                try:
                    windows = json.loads(map_path.read_text())["windows"]
                except (FileNotFoundError, json.JSONDecodeError):
                    windows = []
                check = [w for w in windows if w["title"] == "System check"]
                if check and any(c["name"] in ("verdictOk", "verdictBad") for c in check[0]["controls"]):
                    break
                time.sleep(0.1)
            else:
                raise AssertionError(f"the System check did not finish; windows: {windows}")
            assert any(w["class"] == "MainWindow" for w in windows)
            time.sleep(1.5)  # the verdict's repaint reaches the compositor
            path = compositor.screenshot()
            SHOTS.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, SHOTS / "first-start.png")
            picture = read_png(path)
        finally:
            xserver.stop_process(proc, timeout_s=60)
    assert picture.shape[:2] == (900, 1400)
    assert xserver.unpainted_reasons(picture) == [], SHOTS / "first-start.png"
    luminance = picture.astype(np.int32) @ np.array([299, 587, 114]) // 1000
    # the System check alone covers a third of the output: unpainted, it would be that much black
    black = float((luminance < 12).mean())
    assert black < 0.1, f"{black:.0%} of the output is black ({SHOTS / 'first-start.png'})"
    # and its text is on screen: dark text on the light dialog, in the dialog's area of the output
    assert (luminance < 80).mean() > 0.005 and (luminance > 200).mean() > 0.2
