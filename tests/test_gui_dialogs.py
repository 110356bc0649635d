"""The Help menu's dialogs, offscreen: System check (the doctor's lines, in a worker, once on first
start) and About / Settings (versions, folders with Open, the model cache and Clear cache…)."""

from __future__ import annotations

import os
import platform
import time
from importlib.metadata import version
from pathlib import Path

import pytest
from gui_helpers import close_window, make_window, tiny_config, write_chat
from PySide6.QtCore import QSettings
from PySide6.QtWidgets import QApplication, QLabel

from lora_studio.core import doctor
from lora_studio.core.cache import STALE_AFTER_S
from lora_studio.gui import workers
from lora_studio.gui.dialogs import system_check
from lora_studio.gui.dialogs.about import AboutDialog
from lora_studio.gui.dialogs.system_check import SystemCheckDialog

MB = 1024**2


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("LORA_STUDIO_SETTINGS", str(tmp_path / "settings.ini"))
    monkeypatch.delenv(system_check.NO_FIRST_RUN_ENV, raising=False)
    yield
    workers.wait_all(60_000)


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """A model cache with one converted model (3 MB), an old crash leftover (1 MB), a conversion
    in progress (1 MB), and a runs folder that the user pointed inside the cache."""
    root = tmp_path / "cache"
    monkeypatch.setenv("LORA_STUDIO_CACHE_DIR", str(root))
    monkeypatch.setenv("LORA_STUDIO_RUNS_DIR", str(root / "models" / "my-runs"))
    models = root / "models"
    converted = models / "SmolLM2-135M-Instruct.Q4_1-0123456789ab"
    converted.mkdir(parents=True)
    (converted / "model.safetensors").write_bytes(b"\0" * (3 * MB))
    (converted / "lora_studio_source.json").write_text("{}")
    leftover = models / ".SmolLM2.crashed"
    leftover.mkdir()
    (leftover / "model.safetensors").write_bytes(b"\0" * MB)
    old = time.time() - STALE_AFTER_S - 60
    os.utime(leftover, (old, old))
    running = models / ".SmolLM2.converting"
    running.mkdir()
    (running / "model.safetensors").write_bytes(b"\0" * MB)
    run = models / "my-runs" / "20260101-120000-demo"
    (run / "adapter").mkdir(parents=True)
    (run / "adapter" / "adapter_model.safetensors").write_bytes(b"\1" * MB)
    return root


def _texts(widget) -> str:
    return "\n".join(label.text() for label in widget.findChildren(QLabel))


# -- About / Settings -------------------------------------------------------------------------------


def test_about_shows_versions_folders_and_the_cache_size(qtbot, cache, tmp_path):
    dialog = AboutDialog()
    qtbot.addWidget(dialog)
    text = _texts(dialog)
    assert "Version 0.1.0" in text and "Apache-2.0" in text
    assert platform.python_version() in dialog.versions["Python"]
    assert version("torch").split("+")[0] in dialog.versions["torch"]
    for folder in (tmp_path / "config", cache, cache / "models" / "my-runs"):
        assert str(folder) in text
    # the converted model and the stale leftover count; the conversion in progress does not
    assert dialog.cache_label.text() == "4.0 MB in 1 converted model, 1 unfinished conversion"
    assert dialog.cache_size == 4 * MB + len("{}") and dialog.clear_button.isEnabled()


def test_clear_cache_asks_first_and_deletes_only_recreatable_files(qtbot, cache):
    dialog = AboutDialog()
    qtbot.addWidget(dialog)
    questions = []
    dialog.confirm = lambda title, text: questions.append(text) or False
    dialog.clear_cache()
    assert "4.0 MB" in questions[0] and "runs are not touched" in questions[0].lower()
    assert (cache / "models" / "SmolLM2-135M-Instruct.Q4_1-0123456789ab").is_dir()  # said no

    dialog.confirm = lambda _title, _text: True
    dialog.clear_cache()
    left = sorted(p.name for p in (cache / "models").iterdir())
    assert left == [".SmolLM2.converting", "my-runs"]
    assert (
        cache / "models" / "my-runs" / "20260101-120000-demo" / "adapter" / "adapter_model.safetensors"
    ).is_file()
    assert dialog.cache_label.text() == "Empty" and not dialog.clear_button.isEnabled()
    assert "Freed 4.0 MB" in dialog.messages.message()


def test_clear_cache_is_refused_while_a_run_is_in_progress(qtbot, cache):
    dialog = AboutDialog(run_state="running")
    qtbot.addWidget(dialog)
    assert not dialog.clear_button.isEnabled()
    assert "training run" in dialog.clear_button.toolTip()


def test_a_clear_that_fails_says_which_file_and_what_to_do(qtbot, cache, monkeypatch):
    import shutil

    def refuse(path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(shutil, "rmtree", refuse)
    dialog = AboutDialog()
    qtbot.addWidget(dialog)
    dialog.confirm = lambda _title, _text: True
    dialog.clear_cache()
    message = dialog.messages.message()
    assert "could not be cleared" in message and "Permission denied" in message
    assert "SmolLM2" in message and "What to do:" in message


def test_open_buttons_open_each_folder_and_a_failure_is_explained(qtbot, cache, tmp_path):
    dialog = AboutDialog(runs_folder=tmp_path / "elsewhere" / "runs")
    qtbot.addWidget(dialog)
    opened = []
    dialog.open_folder = lambda folder: opened.append(folder) or True
    for button in dialog.open_buttons.values():
        button.click()
    assert opened == [tmp_path / "config", cache, tmp_path / "elsewhere" / "runs"]
    assert dialog.messages.message() == ""

    dialog.open_folder = lambda _folder: False
    dialog.open_buttons["Runs"].click()
    assert "No file manager opened the runs folder" in dialog.messages.message()
    assert str(tmp_path / "elsewhere" / "runs") in dialog.messages.message()


# -- System check ---------------------------------------------------------------------------------

FOUND = [
    doctor.Check("Python", doctor.OK, "3.11.7"),
    doctor.Check("GPU", doctor.WARNING, "no CUDA GPU", "use a machine with an NVIDIA GPU"),
    doctor.Check("bitsandbytes nf4", doctor.PROBLEM, "cannot be imported", "pip install -U bitsandbytes"),
]


def _fake_checks(monkeypatch, found):
    def run_checks(progress=None):
        for check in found:
            progress(check)
        return list(found)

    monkeypatch.setattr(system_check, "run_checks", run_checks)
    # these checks need no libraries: skip importing torch first (the real-checks test does it)
    monkeypatch.setattr(system_check.jobs, "ensure_libraries", lambda: None)


def test_system_check_lists_each_finding_with_its_fix_and_the_verdict(qtbot, monkeypatch):
    _fake_checks(monkeypatch, FOUND)
    dialog = SystemCheckDialog()
    qtbot.addWidget(dialog)
    with qtbot.waitSignal(dialog.finished_checks, timeout=30_000) as verdict:
        dialog.start()
    assert verdict.args == [False]
    text = _texts(dialog)
    for word in ("OK", "Warning", "Problem", "no CUDA GPU", "→ pip install -U bitsandbytes"):
        assert word in text
    assert dialog.verdict.text() == "Training cannot work here until the 1 problem below is fixed."
    assert dialog.again_button.isEnabled() and dialog.progress.isHidden()
    dialog.copy_report()
    copied = QApplication.clipboard().text()
    assert "Problem  bitsandbytes nf4" in copied and "→ use a machine with an NVIDIA GPU" in copied


def test_system_check_runs_the_real_checks_off_the_gui_thread(qtbot):
    dialog = SystemCheckDialog()
    qtbot.addWidget(dialog)
    with qtbot.waitSignal(dialog.finished_checks, timeout=300_000) as verdict:
        dialog.start()
        assert dialog.running and not dialog.again_button.isEnabled()  # start() returned at once
    assert verdict.args == [True]  # this machine trains on its CPU (as `lora-studio doctor` says)
    names = [check.name for check in dialog.checks]
    assert names[0] == "Python" and "bitsandbytes nf4" in names and "default model" in names
    assert dialog.verdict.text().startswith("This machine can train.")


def test_first_start_opens_the_system_check_once(qtbot, monkeypatch, tmp_path):
    _fake_checks(monkeypatch, FOUND[:1])
    store = QSettings(str(tmp_path / "first.ini"), QSettings.Format.IniFormat)
    assert system_check.first_run_due(store)
    parent = AboutDialog()  # any window will do as the parent
    qtbot.addWidget(parent)
    assert system_check.open_on_first_run(parent, store)
    opened = parent.findChildren(SystemCheckDialog)
    assert len(opened) == 1 and opened[0].isVisible()
    qtbot.waitUntil(lambda: not opened[0].running, timeout=30_000)
    again = QSettings(str(tmp_path / "first.ini"), QSettings.Format.IniFormat)  # the next start
    assert not system_check.first_run_due(again)
    assert not system_check.open_on_first_run(parent, again)


def test_the_first_start_dialog_can_be_turned_off_by_environment(tmp_path, monkeypatch):
    store = QSettings(str(tmp_path / "fresh.ini"), QSettings.Format.IniFormat)
    monkeypatch.setenv(system_check.NO_FIRST_RUN_ENV, "1")
    assert not system_check.first_run_due(store)
    monkeypatch.setenv(system_check.NO_FIRST_RUN_ENV, "0")
    assert system_check.first_run_due(store)


def test_the_help_menu_opens_both_dialogs_and_a_test_window_opens_neither_by_itself(
    qtbot, monkeypatch, tiny_model_dir, tmp_path
):
    _fake_checks(monkeypatch, FOUND[:1])
    window = make_window(
        qtbot, tiny_config(tiny_model_dir, write_chat(tmp_path / "c.jsonl"), tmp_path / "runs")
    )
    try:
        assert not window.findChildren(SystemCheckDialog) and not window.findChildren(AboutDialog)
        titles = [action.text() for action in window.menuBar().actions()]
        assert titles[-1] == "&Help"
        help_menu = window.menuBar().actions()[-1].menu()
        entries = {action.text(): action for action in help_menu.actions()}
        entries["System check…"].trigger()
        check = window.findChildren(SystemCheckDialog)[0]
        qtbot.waitUntil(lambda: not check.running, timeout=30_000)
        assert check.verdict.text() == "This machine can train."
        entries["About LoRA Studio…"].trigger()
        about = window.findChildren(AboutDialog)[0]
        assert about.isVisible() and about.runs_folder == tmp_path / "runs"
        assert not window.windowIcon().isNull()
    finally:
        close_window(window)
