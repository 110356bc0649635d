"""Promise 2: the GUI survives every failure of the work it starts.

Each fault is injected into the real engine, chat or export (``LORA_STUDIO_FAULTS``, read by the
worker), with the whole window built on a tiny model. For each one: the event loop keeps turning
while the work fails (the GUI thread never works for ``BUSY_S`` without a break, nor waits longer
than ``WALL_S``), exactly one message
appears — on the page that started the work, naming what failed and what to do, no traceback, no
dialog — the run is marked as it should be (status.json, the status bar, the Runs page), and the
next action works: training again without the fault completes, chat answers, export succeeds.
"""

from __future__ import annotations

import pytest
import test_gui_chat_export
from gui_helpers import (
    GapMeter,
    close_window,
    make_window,
    tiny_config,
    wait_answered,
    wait_idle,
    write_chat,
)
from PySide6.QtWidgets import QApplication, QDialog

from lora_studio.core.runs import list_runs
from lora_studio.gui import workers

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

#: While the work fails, the GUI thread may not itself work for longer than BUSY_S without turning
#: its event loop (its own CPU time between two ticks of a 10 ms timer), nor be held up for longer
#: than WALL_S in all. Work done on the GUI thread — a model load, a training step, a modal dialog's
#: wait — is what the first catches. The second, generous, bound catches a freeze: the wall-clock
#: wait also counts a worker holding the GIL inside a library call (the Rust tokenizer parsing
#: tokenizer.json, 0.4 s of CPU here) and other jobs on a shared 2-core machine (1.3 s seen under a
#: load of 12), which are not the GUI's doing.
BUSY_S, WALL_S = 0.5, 10.0
tiny_adapter = test_gui_chat_export.tiny_adapter  # the fixture: a random tiny LoRA adapter


@pytest.fixture(autouse=True)
def _isolated_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("LORA_STUDIO_SETTINGS", str(tmp_path / "settings.ini"))


class Messages:
    """Every message shown on any page's message bar, as (page, kind, title, text, hint)."""

    def __init__(self, window) -> None:
        self.shown: list[tuple[str, str, str, str, str | None]] = []
        for page in window.pages.built():
            bar = page.messages
            original = bar.show_message

            def spy(kind, title, message, hint=None, *, key=page.key, original=original):
                self.shown.append((key, kind, title, message, hint))
                original(kind, title, message, hint)

            bar.show_message = spy

    def errors(self) -> list[tuple[str, str, str, str, str | None]]:
        return [m for m in self.shown if m[1] == "error"]


def no_dialogs() -> bool:
    return not any(isinstance(w, QDialog) and w.isVisible() for w in QApplication.topLevelWidgets())


def assert_one_clear_error(messages: Messages, page, *words: str) -> str:
    errors = messages.errors()
    assert len(errors) == 1, errors
    key, _, title, text, hint = errors[0]
    assert key == page.key
    assert title != "Something went wrong", "shown as an unexpected bug, not as the project's own error"
    shown = page.messages.message()
    assert page.messages.kind == "error" and shown.startswith(title)
    assert "Traceback" not in shown and 'File "' not in shown
    assert hint and "What to do:" in shown, f"no advice in: {shown}"
    for word in words:
        assert word in text, f"{word!r} not in {text!r}"
    assert no_dialogs()
    return shown


@pytest.fixture
def window(qtbot, tiny_model_dir, tmp_path):
    config = tiny_config(
        tiny_model_dir, write_chat(tmp_path / "chat.jsonl"), tmp_path / "runs", max_steps=3, save_steps=2
    )
    window = make_window(qtbot, config.with_overrides({"training.sample_prompts": []}))
    wait_idle(qtbot, window)
    yield window
    close_window(window)


def runs_page_states(qtbot, window) -> dict[str, str]:
    """What the Runs page's table shows: run id → status (after it has re-read the folder)."""
    from PySide6.QtCore import Qt

    from lora_studio.gui.pages.runs import COLUMNS

    wait_idle(qtbot, window)
    table = window.pages["runs"].table
    status = COLUMNS.index("Status")
    return {
        table.item(r, 0).data(Qt.ItemDataRole.UserRole): table.item(r, status).text()
        for r in range(table.rowCount())
    }


# fault, title of the message, words the message must contain, the run folder's state (None: no folder)
TRAINING_FAULTS = [
    ("load_error", "Training failed", ["while loading model", "injected fault"], "failed"),
    ("data_error", "Training failed", ["while preparing data", "tokenizing"], None),
    ("oom@2", "Out of memory", ["memory at step 2"], "failed"),
    ("nan@2", "Training failed", ["nan at step 2"], "failed"),
    ("disk_full@2", "Training failed", ["Disk full", "step 2"], "failed"),
    ("error@2", "Training failed", ["at step 2", "injected fault during a training step"], "failed"),
]


@pytest.mark.parametrize(
    "fault, title, words, state", TRAINING_FAULTS, ids=[f[0].split("@")[0] for f in TRAINING_FAULTS]
)
def test_a_training_fault_leaves_the_window_usable(
    fault, title, words, state, qtbot, window, tmp_path, monkeypatch
):
    page = window.pages["train"]
    messages = Messages(window)
    monkeypatch.setenv("LORA_STUDIO_FAULTS", fault)
    meter = GapMeter()
    with qtbot.waitSignal(window.runs.ended, timeout=180_000) as ended:
        assert page.start()
    gap = meter.check(busy_s=BUSY_S, wall_s=WALL_S)
    assert ended.args == ["failed"], page.messages.message()
    shown = assert_one_clear_error(messages, page, *words)
    assert shown.startswith(title), shown
    assert window.state.run_state == "failed" and window.run_label.text().startswith("Failed")
    assert page.start_button.isEnabled() and page.progress.format().startswith("Failed")
    runs = list_runs(tmp_path / "runs")
    if state is None:  # refused before anything was created: no half-made run to clean up
        assert runs == [] and runs_page_states(qtbot, window) == {}
    else:
        [run] = runs
        status = run.status()
        assert status["state"] == state and status["error"], status
        assert runs_page_states(qtbot, window) == {run.run_id: state}
    # the next action: the same run again without the fault completes
    monkeypatch.setenv("LORA_STUDIO_FAULTS", "")
    with qtbot.waitSignal(window.runs.ended, timeout=180_000) as ended:
        assert page.start()
    assert ended.args == ["completed"], page.messages.message()
    assert page.messages.kind == "info" and "Training completed" in page.messages.message()
    assert len(messages.errors()) == 1
    states = runs_page_states(qtbot, window)
    assert sorted(states.values()) == sorted(filter(None, ["completed", state])), states
    print(f"\n{fault}: {gap}; message: {shown!r}")


def test_a_generation_fault_shows_one_message_and_the_next_message_is_answered(qtbot, window, monkeypatch):
    page = window.pages["chat"]
    window.show_page("chat")
    messages = Messages(window)
    page.max_tokens.setValue(6)
    page.greedy.setChecked(True)
    monkeypatch.setenv("LORA_STUDIO_FAULTS", "generate_error@1")
    meter = GapMeter()
    page.prompt.setPlainText("What is your name?")
    page.send()  # loads the model first, then answers
    wait_answered(qtbot, page)
    gap = meter.check(busy_s=BUSY_S, wall_s=WALL_S)
    shown = assert_one_clear_error(messages, page, "Generation failed", "injected fault during generation")
    assert shown.startswith("Problem with the chat"), shown
    turns = page.views["main"].turns
    assert [t.role for t in turns] == ["user", "assistant"] and turns[1].stats == "no answer"
    assert page.history["main"] == []  # the failed question is not sent again as context
    assert page.send_button.isEnabled() and page.chat is not None
    # the status bar says what Chat has loaded, not only "(not loaded)" for the training model (#24)
    from lora_studio.gui.app import _short_paths

    assert window.model_label.text().endswith(f"· Chat: {_short_paths(page.state.chat_model)}")
    assert page.state.chat_model
    # the next action: the same model answers the next message (the fault hit the first only)
    page.prompt.setPlainText("Say hello.")
    page.send()
    wait_answered(qtbot, page)
    assert page.views["main"].turns[-1].stats.split(" tokens")[0].isdigit()
    assert [m["role"] for m in page.history["main"]] == ["user", "assistant"]
    assert page.messages.message() == "" and len(messages.errors()) == 1
    print(f"\ngenerate_error: {gap}; message: {shown!r}")


def test_an_export_fault_leaves_nothing_behind_and_the_next_export_succeeds(
    qtbot, window, tiny_adapter, tmp_path, monkeypatch
):
    page = window.pages["export"]
    window.show_page("export")
    out = tmp_path / "exported"
    page.picker.select("folder", str(tiny_adapter))
    page.out_dir.setText(str(out))
    for fmt, box in page.format_boxes.items():
        box.setChecked(fmt == "adapter")
    qtbot.waitUntil(lambda: page.plan is not None and not page.task.busy, timeout=60_000)
    messages = Messages(window)
    monkeypatch.setenv("LORA_STUDIO_FAULTS", "export_fail@1")
    meter = GapMeter()
    page.start()
    qtbot.waitUntil(lambda: page.worker is None and workers.live_count() == 0, timeout=60_000)
    gap = meter.check(busy_s=BUSY_S, wall_s=WALL_S)
    shown = assert_one_clear_error(messages, page, "Export of adapter failed", "injected fault")
    assert shown.startswith("Export failed") and "export again" in shown, shown
    assert page.report is None and not (out / "adapter").exists()
    assert not [p.name for p in out.iterdir() if p.name.endswith(".partial")]  # staging removed
    assert page.start_button.isEnabled()
    # the next action: the same export without the fault succeeds and is verified
    monkeypatch.setenv("LORA_STUDIO_FAULTS", "")
    page.start()
    qtbot.waitUntil(lambda: page.report is not None, timeout=60_000)
    qtbot.waitUntil(lambda: page.worker is None and workers.live_count() == 0, timeout=60_000)
    assert page.report.status == "completed" and page.report.verified is True
    assert (out / "adapter" / "adapter_config.json").is_file()
    assert page.messages.message() == "" and len(messages.errors()) == 1
    print(f"\nexport_fail: {gap}; message: {shown!r}")
