"""What a person sees: the app started as ``lora-studio`` on a real X server, pictures from the server.

Offscreen tests render widgets into images with ``grab()`` and never show whether a window is
painted on a screen. Here Xvfb and the openbox window manager run (``lora_studio.gui.xserver``),
``lora-studio`` opens its windows there, ``xdotool`` presses keys and moves the pointer on the X
server as a person does, and every picture is read from the server's framebuffer — what a monitor
shows. Each one must look painted (several colours, not mostly black or one background colour,
text in its top rows) and is saved under ``test-artifacts/real-display/`` for a person to look at.

The app writes where its windows and controls are (``LORA_STUDIO_WIDGET_MAP``), so the test knows
where to click and when a window has appeared. Without Xvfb, openbox and xdotool the module skips
with one line saying what to install; in CI (``CI`` set) it fails instead, so it never goes unseen.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lora_studio.core.config import RunConfig
from lora_studio.gui import xserver

ROOT = Path(__file__).resolve().parents[1]
SHOTS = ROOT / "test-artifacts" / "real-display"
#: Waits guard against hangs only: nothing here passes or fails by how fast the machine is.
WAIT_S = 300

if xserver.missing_tools():
    message = f"real-display tests need {', '.join(xserver.missing_tools())}: {xserver.install_line()}"
    if os.environ.get("CI"):
        pytest.fail(f"CI must run the real-display tests; {message}", pytrace=False)
    pytest.skip(message, allow_module_level=True)


class App:
    """``lora-studio`` running on the virtual display, and how to find and look at its windows."""

    def __init__(
        self, display: xserver.VirtualDisplay, proc: subprocess.Popen[bytes], map_path: Path
    ) -> None:
        self.display = display
        self.proc = proc
        self.map_path = map_path

    def windows(self) -> list[dict[str, Any]]:
        if self.proc.poll() is not None:
            raise AssertionError(f"the app exited with code {self.proc.returncode}: {self.stderr()}")
        try:
            return json.loads(self.map_path.read_text())["windows"]
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            return []

    def stderr(self) -> str:
        if self.proc.poll() is None or self.proc.stderr is None:
            return ""
        return self.proc.stderr.read().decode(errors="replace")[-3000:]

    def wait(self, what: str, found: Callable[[list[dict[str, Any]]], Any]) -> Any:
        """Until ``found(windows)`` returns something true (then that), polling the widget map."""
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            result = found(self.windows())
            if result:
                return result
            time.sleep(0.1)
        raise AssertionError(
            f"timed out waiting for {what}; windows: {[w['title'] or w['class'] for w in self.windows()]}"
        )

    def window(self, what: str, match: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        return self.wait(what, lambda windows: next((w for w in windows if match(w)), None))

    def gone(self, what: str, match: Callable[[dict[str, Any]], bool]) -> None:
        self.wait(f"{what} to close", lambda windows: not any(match(w) for w in windows))

    def main(self) -> dict[str, Any]:
        return self.window("the main window", lambda w: w["class"] == "MainWindow")

    def settle(self) -> None:
        """Two map cycles with no change: the window has painted what its last events asked for."""
        before = self.map_path.read_text() if self.map_path.exists() else ""
        while True:
            time.sleep(0.5)
            now = self.map_path.read_text() if self.map_path.exists() else ""
            if now == before:
                return
            before = now

    def key(self, *keys: str) -> None:
        self.display.xdotool("key", "--clearmodifiers", *keys)

    def click(self, rect: list[int]) -> None:
        x, y, w, h = rect
        self.display.xdotool("mousemove", str(x + w // 2), str(y + h // 2), "click", "1")

    def look(self, name: str, rect: list[int], *, title_band: int = 0) -> None:
        """Screenshot ``rect`` from the server, save it, and fail if it does not look painted."""
        self.settle()
        picture = xserver.crop(self.display.screenshot(), tuple(rect))
        path = xserver.write_png(SHOTS / f"{name}.png", picture)
        reasons = xserver.unpainted_reasons(picture, title_band=title_band)
        assert not reasons, f"{name} is not painted on screen ({path}): {'; '.join(reasons)}"


def control(
    window: dict[str, Any], *, cls: str | None = None, name: str | None = None, text: str | None = None
) -> dict[str, Any] | None:
    for item in window["controls"]:
        if (
            (cls is None or item["class"] == cls)
            and (name is None or item["name"] == name)
            and (text is None or item["text"] == text)
        ):
            return item
    return None


@pytest.fixture(scope="module")
def display():
    with xserver.VirtualDisplay() as server:
        yield server


@pytest.fixture(scope="module")
def app(display, tiny_model_dir, tmp_path_factory):
    home = tmp_path_factory.mktemp("real-display")
    config = home / "run.toml"
    RunConfig().with_overrides({"model.source": str(tiny_model_dir), "data.path": "demo"}).save(config)
    cache = home / "cache"
    entry = cache / "models" / "some-converted-model"  # the About dialog's "Clear cache…" needs one
    entry.mkdir(parents=True)
    (entry / "lora_studio_source.json").write_text("{}")
    map_path = home / "widgets.json"
    env = display.env()
    env.update({
        "LORA_STUDIO_SETTINGS": str(home / "settings.ini"), "LORA_STUDIO_RUNS_DIR": str(home / "runs"),
        "LORA_STUDIO_CONFIG_DIR": str(home / "config"), "LORA_STUDIO_CACHE_DIR": str(cache),
        "XDG_CONFIG_HOME": str(home / "xdg-config"), "XDG_DATA_HOME": str(home / "xdg-data"),
        "LORA_STUDIO_WIDGET_MAP": str(map_path),
    })  # fmt: skip
    env.pop("LORA_STUDIO_NO_FIRST_RUN", None)
    script = Path(sys.executable).parent / "lora-studio"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "lora_studio"]
    proc = subprocess.Popen([*command, "gui", "--config", str(config)], env=env, stderr=subprocess.PIPE)
    running = App(display, proc, map_path)
    if SHOTS.exists():
        shutil.rmtree(SHOTS)
    yield running
    xserver.stop_process(proc, timeout_s=60)
    print(f"\nreal-display screenshots: {SHOTS}")


def is_check(window: dict[str, Any]) -> bool:
    return window["title"] == "System check"


def test_first_run_system_check_is_painted_after_its_checks(app):
    app.main()
    done = app.window(
        "the System check to finish",
        lambda w: is_check(w) and any(c["name"] in ("verdictOk", "verdictBad") for c in w["controls"]),
    )
    app.look("system-check", done["rect"], title_band=60)
    app.click(control(done, cls="QPushButton", text="Close")["rect"])
    app.gone("the System check", is_check)


def test_every_page_is_painted_in_both_themes(app):
    app.gone("the System check", is_check)
    main = app.main()
    pages = [c["text"] for c in main["controls"] if c["name"] == "navButton" and c["text"] != "Theme"]
    assert len(pages) >= 6, pages
    for theme in ("light", "dark"):
        for number, title in enumerate(pages, start=1):
            app.key(f"ctrl+{number}")
            main = app.window(
                f"the {title} page",
                lambda w, title=title: (
                    w["class"] == "MainWindow" and control(w, name="pageTitle", text=title)
                ),
            )
            app.look(f"page-{number}-{title.lower()}-{theme}", main["rect"], title_band=80)
        app.click(control(main, name="navButton", text="Theme")["rect"])
    app.key("ctrl+1")


@pytest.mark.parametrize("letter", ["g", "r", "v", "h"])
def test_each_menu_is_painted(app, letter):
    app.main()
    app.key(f"alt+{letter}")
    menu = app.window("the menu", lambda w: w["class"] == "QMenu")
    app.look(f"menu-{letter}", menu["rect"], title_band=menu["rect"][3])
    app.key("Escape")
    app.gone("the menu", lambda w: w["class"] == "QMenu")


def test_combo_drop_down_is_painted(app):
    app.key("ctrl+1")
    main = app.window(
        "the Model page", lambda w: w["class"] == "MainWindow" and control(w, name="pageTitle", text="Model")
    )
    combo = next(c for c in main["controls"] if c["class"] == "QComboBox" and c["enabled"])
    app.click(combo["rect"])
    popup = app.window("the drop-down", lambda w: w["class"] == "QComboBoxPrivateContainer")
    app.look("combo-drop-down", popup["rect"], title_band=popup["rect"][3])
    app.key("Escape")
    app.gone("the drop-down", lambda w: w["class"] == "QComboBoxPrivateContainer")


def test_tooltip_is_painted(app):
    main = app.main()
    button = control(main, name="navButton")
    x, y, w, h = button["rect"]
    app.display.xdotool("mousemove", str(x + w // 2 - 3), str(y + h // 2))
    app.display.xdotool("mousemove", str(x + w // 2), str(y + h // 2))
    tip = app.window("the tooltip", lambda w: w["class"] == "QTipLabel")
    app.look("tooltip", tip["rect"], title_band=tip["rect"][3])
    app.display.xdotool("mousemove", "5", "5")


def test_about_dialog_and_a_message_box_are_painted(app):
    app.main()
    app.key("alt+h")
    menu = app.window("the Help menu", lambda w: w["class"] == "QMenu")
    x, y, w, h = menu["rect"]
    app.click([x, y + h // 2, w, h // 2])  # the second of its two items: About
    about = app.window("About", lambda w: w["title"] == "About LoRA Studio")
    app.look("about", about["rect"], title_band=60)
    clear = control(about, cls="QPushButton", text="Clear cache…")
    assert clear is not None and clear["enabled"], about["controls"]
    app.click(clear["rect"])
    box = app.window("the question", lambda w: w["class"] == "QMessageBox")
    app.look("message-box", box["rect"], title_band=box["rect"][3])
    app.click(control(box, cls="QPushButton", text="&No")["rect"])
    app.gone("the question", lambda w: w["class"] == "QMessageBox")
    app.click(control(app.window("About", lambda w: w["title"] == "About LoRA Studio"), text="Close")["rect"])
    app.gone("About", lambda w: w["title"] == "About LoRA Studio")


def test_file_dialog_is_painted(app):
    app.key("ctrl+2")
    main = app.window(
        "the Data page", lambda w: w["class"] == "MainWindow" and control(w, name="pageTitle", text="Data")
    )
    app.click(control(main, cls="QPushButton", text="Browse…")["rect"])
    dialog = app.window("the file dialog", lambda w: w["class"] == "QFileDialog")
    app.look("file-dialog", dialog["rect"], title_band=80)
    app.key("Escape")
    app.gone("the file dialog", lambda w: w["class"] == "QFileDialog")


def test_checker_rejects_what_a_black_window_looks_like():
    """The painted-check itself: what the bug looked like (a black rectangle) must fail it."""
    import numpy as np

    black = np.zeros((200, 300, 3), np.uint8)
    assert xserver.unpainted_reasons(black, title_band=40)
    grey = np.full((200, 300, 3), 239, np.uint8)
    assert xserver.unpainted_reasons(grey)
    grey[10:30, 10:150] = 20  # a line of dark "text"
    assert xserver.unpainted_reasons(grey, title_band=40) == []
