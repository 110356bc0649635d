"""Training from the Train page on a tiny real model: live plots, stop, pause/resume, failures, and a
GUI event loop that stays responsive while the engine works in its QThread."""

from __future__ import annotations

from pathlib import Path

import pytest
from gui_helpers import GapMeter, close_window, make_window, tiny_config, write_chat
from PySide6.QtCore import Qt

from lora_studio.core.runs import RunFolder
from lora_studio.core.train import events as ev
from lora_studio.core.train import format_duration

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(autouse=True)
def _isolated_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("LORA_STUDIO_SETTINGS", str(tmp_path / "settings.ini"))


@pytest.fixture
def chat_file(tmp_path) -> Path:
    return write_chat(tmp_path / "chat.jsonl")


class EventLog:
    def __init__(self, window):
        self.events: list[ev.Event] = []
        window.runs.event.connect(self.events.append)

    def steps(self) -> list[int]:
        return [e.step for e in self.events if isinstance(e, ev.Step)]

    def of(self, kind: type) -> list[ev.Event]:
        return [e for e in self.events if isinstance(e, kind)]


def test_a_tiny_run_from_the_train_page_completes_with_live_plots_and_a_responsive_gui(
    qtbot, tiny_model_dir, chat_file, tmp_path, monkeypatch
):
    # a half-second hold after step 3: the meter sees more than 10 ticks even where the 6 steps
    # take a few milliseconds
    monkeypatch.setenv("LORA_STUDIO_FAULTS", "step_pause@3:0.5")
    config = tiny_config(
        tiny_model_dir, chat_file, tmp_path / "runs", max_steps=6, save_steps=3, eval_steps=3
    )
    config = config.with_overrides({"data.eval_fraction": 0.25})
    window = make_window(qtbot, config)
    page = window.pages["train"]
    log = EventLog(window)
    meter = GapMeter(start=False)
    window.runs.event.connect(lambda e: meter.start() if isinstance(e, ev.RunStarted) else None)
    # measured while the engine trains, up to its Finished event (the end-of-run message bar's
    # one-time relayout of the plots comes after; bench/gui_responsiveness.py reports it)
    window.runs.event.connect(lambda e: meter.stop() if isinstance(e, ev.Finished) else None)
    try:
        with qtbot.waitSignal(window.runs.ended, timeout=180_000) as ended:
            qtbot.mouseClick(page.start_button, Qt.MouseButton.LeftButton)
            assert window.state.run_state == "starting"
        assert ended.args == ["completed"], window.pages["train"].messages.message()
        assert log.steps() == [1, 2, 3, 4, 5, 6]
        plots = page.plots
        plots.refresh()
        assert plots.loss.count("loss") == 6 and plots.loss.count("loss_smooth") == 6
        assert plots.loss.count("eval_loss") >= 1
        assert plots.lr.count("lr") == 6 and plots.speed.count("tokens_per_s") == 6
        assert plots.memory.count("rss") + plots.memory.count("allocated") == 6
        assert plots.redraws >= 1
        assert page.progress.value() == page.progress.maximum() == 6
        assert "6 of 6" in page.progress.text() and "100%" in page.progress.text()
        assert page.samples.count() == 2  # one prompt, before and after
        assert "Run completed" in page.log.toPlainText()
        assert window.state.run_state == "completed" and window.run_label.text().startswith("Completed")
        assert page.start_button.isEnabled() and not page.stop_button.isEnabled()
        run_dir = log.of(ev.Finished)[0].run_dir
        assert RunFolder.open(run_dir).status()["state"] == "completed"
        # the event loop kept turning while the engine trained in its thread
        # the event loop kept turning while the engine trained in its thread: the GUI thread never
        # worked a quarter of a second without a break (wall time also counts other jobs on a
        # shared machine, so its bound only catches a freeze)
        assert meter.ticks > 10
        print("\n" + meter.check(busy_s=0.25, wall_s=5.0))
    finally:
        close_window(window)


def test_stop_mid_run_leaves_a_cancelled_run_with_an_adapter(
    qtbot, tiny_model_dir, chat_file, tmp_path, monkeypatch
):
    monkeypatch.setenv("LORA_STUDIO_FAULTS", "step_pause@2:600")  # held until the stop asked on step 2
    config = tiny_config(tiny_model_dir, chat_file, tmp_path / "runs", max_steps=500, save_steps=400)
    window = make_window(qtbot, config)
    log = EventLog(window)
    window.runs.event.connect(
        lambda e: window.runs.stop() if isinstance(e, ev.Step) and e.step == 2 else None
    )
    try:
        with qtbot.waitSignal(window.runs.ended, timeout=180_000) as ended:
            assert window.pages["train"].start()
        assert ended.args == ["cancelled"]
        finished = log.of(ev.Finished)[0]
        assert finished.status == "cancelled" and finished.step == 2
        assert Path(finished.adapter_path, "adapter_model.safetensors").is_file()
        assert RunFolder.open(finished.run_dir).status()["state"] == "cancelled"
        assert window.run_label.text().startswith("Stopped")
    finally:
        close_window(window)


def test_pause_then_resume_loses_no_step(qtbot, tiny_model_dir, chat_file, tmp_path, monkeypatch):
    # the run holds after step 2 until the pause asked on its event arrives, however late a loaded
    # GUI sees it; the pause then takes hold right there, after step 2's point was logged: the
    # plots, the progress bar, the log and status.json all say step 2
    monkeypatch.setenv("LORA_STUDIO_FAULTS", "step_pause@2:600")
    config = tiny_config(tiny_model_dir, chat_file, tmp_path / "runs", max_steps=30, save_steps=100)
    window = make_window(qtbot, config)
    page = window.pages["train"]
    log = EventLog(window)
    window.runs.event.connect(
        lambda e: window.runs.pause() if isinstance(e, ev.Step) and e.step == 2 else None
    )
    try:
        with qtbot.waitSignal(
            window.runs.event,
            timeout=180_000,
            check_params_cb=lambda e: isinstance(e, ev.Paused) and e.paused,
        ):
            assert page.start()
        held_at = log.of(ev.Paused)[0].step
        assert held_at == 2 and log.steps() == [1, 2]  # its point is drawn before it holds
        assert page.progress.value() == 2 and page.progress.text().startswith("Step 2 of 30")
        assert window.state.run_state == "paused"
        run_dir = log.of(ev.RunStarted)[0].run_dir
        status = RunFolder.open(run_dir).status()  # what the Runs page and `lora-studio runs` read
        assert (status["state"], status["step"]) == ("paused", 2)
        # the clock stands still while paused: Elapsed, the banner and the Runs page agree
        paused_at = log.of(ev.Paused)[0].elapsed_s
        assert paused_at is not None and status["elapsed_s"] == pytest.approx(paused_at, abs=0.01)
        page._tick()
        assert page.timing.text() == f"Elapsed {format_duration(paused_at)} · Paused"
        assert window.run_label.text().startswith("Paused")
        assert page.pause_button.text() == "Resume"
        assert window.state.shared_model.loaded  # free for chat while paused
        # the Chat page's "current paused run" answers with the model exactly as it is now
        from lora_studio.core.chat import Sampling
        from lora_studio.gui.pages.chat import load_chat

        chat, _ = load_chat("paused", "", window.state.config, window.state.shared_model)
        reply = chat.answer(
            [{"role": "user", "content": "What is your name?"}], Sampling(greedy=True, max_new_tokens=4)
        )
        assert reply.new_tokens >= 1
        assert chat.model.training  # handed back in training mode, gradients untouched
        with qtbot.waitSignal(window.runs.ended, timeout=180_000) as ended:
            qtbot.mouseClick(page.pause_button, Qt.MouseButton.LeftButton)
        assert ended.args == ["completed"]
        assert RunFolder.open(run_dir).status()["state"] == "completed"
        assert log.steps() == list(range(1, 31)), f"held at {held_at}"
        assert [e.paused for e in log.of(ev.Paused)] == [True, False]
        resumed = log.of(ev.Paused)[1].elapsed_s
        assert resumed == pytest.approx(paused_at, abs=0.05)  # the paused time is not the run's
    finally:
        close_window(window)


def test_a_failing_run_shows_one_clear_message_and_leaves_the_app_usable(qtbot, tiny_model_dir, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')
    config = tiny_config(tiny_model_dir, bad, tmp_path / "runs")
    window = make_window(qtbot, config)
    page = window.pages["train"]
    try:
        with qtbot.waitSignal(window.runs.ended, timeout=120_000) as ended:
            assert window.runs.start(config)  # past the page's checks: the engine itself refuses
        assert ended.args == ["failed"]
        text = page.messages.message()
        assert "bad.jsonl" in text and "line 1" in text, text
        assert "Traceback" not in text
        assert window.state.run_state == "failed" and window.run_label.text().startswith("Failed")
        assert page.start_button.isEnabled()
    finally:
        close_window(window)


def test_closing_the_window_during_a_run_asks_then_stops_and_waits_for_the_adapter(
    qtbot, tiny_model_dir, chat_file, tmp_path, monkeypatch
):
    monkeypatch.setenv("LORA_STUDIO_FAULTS", "step_pause@1:600")  # still running when "no" is answered
    config = tiny_config(tiny_model_dir, chat_file, tmp_path / "runs", max_steps=500, save_steps=400)
    window = make_window(qtbot, config)
    log = EventLog(window)
    answers = [False, True]
    asked: list[str] = []
    window.confirm = lambda title, _text: asked.append(title) or answers.pop(0)
    try:
        with qtbot.waitSignal(
            window.runs.event, timeout=180_000, check_params_cb=lambda e: isinstance(e, ev.Step)
        ):
            assert window.pages["train"].start()
        assert not window.close()  # "no": the run goes on
        assert window.isVisible() and window.runs.active
        assert window.close()  # "yes": stop, wait for the adapter, then close
        assert not window.runs.active and not window.isVisible()
        assert asked == ["Stop training?", "Stop training?"]
        finished = log.of(ev.Finished)[0]
        assert finished.status == "cancelled" and Path(finished.adapter_path).is_dir()
    finally:
        close_window(window)


def start_and_wait_in_the_samples(qtbot, window) -> None:
    """Start; return once the run holds at the first sample answer's first token (sample_pause@1)."""
    with qtbot.waitSignal(
        window.runs.event,
        timeout=180_000,
        check_params_cb=lambda e: isinstance(e, ev.SampleProgress) and e.tokens == 1,
    ):
        assert window.pages["train"].start()


def test_the_samples_before_step_1_show_their_progress_and_a_pause_holds_after_step_1(
    qtbot, tiny_model_dir, chat_file, tmp_path, monkeypatch
):
    # the run holds while writing the first sample answer (as a 4-bit model on a CPU takes minutes
    # there): the page says which prompt and how far, Pause is pressed then, and it takes hold
    # after the first step, whose point is drawn
    monkeypatch.setenv("LORA_STUDIO_FAULTS", "sample_pause@1:600")
    config = tiny_config(
        tiny_model_dir, chat_file, tmp_path / "runs", max_steps=3, save_steps=100,
        sample_prompts=["What is your name?", "Who made you?"], sample_max_new_tokens=8,
    )  # fmt: skip
    window = make_window(qtbot, config)
    page = window.pages["train"]
    log = EventLog(window)
    try:
        start_and_wait_in_the_samples(qtbot, window)
        assert page.progress.text() == "Sample answers before training: prompt 1 of 2, 1 of up to 8 tokens"
        assert list(page.samples.writing) == ["What is your name?"]
        assert "writing…" in page.samples.toPlainText()
        assert "Answering sample prompt 1 of 2 first" in page.plots.loss.empty.toPlainText()
        assert page.pause_button.isEnabled() and page.stop_button.isEnabled()
        with qtbot.waitSignal(
            window.runs.event,
            timeout=180_000,
            check_params_cb=lambda e: isinstance(e, ev.Paused) and e.paused,
        ):
            qtbot.mouseClick(page.pause_button, Qt.MouseButton.LeftButton)
            assert window.state.run_state == "paused" and window.run_label.text().endswith("after step 1")
        assert log.of(ev.Paused)[0].step == 1 and log.steps() == [1]
        assert page.progress.text().startswith("Step 1 of 3") and page.samples.writing == {}
        assert [stage for stage, _step, _answers in page.samples.batches] == ["before"]
        with qtbot.waitSignal(window.runs.ended, timeout=180_000) as ended:
            qtbot.mouseClick(page.pause_button, Qt.MouseButton.LeftButton)
        assert ended.args == ["completed"] and log.steps() == [1, 2, 3]
    finally:
        close_window(window)


def test_stop_while_the_first_samples_are_written_says_nothing_was_trained(
    qtbot, tiny_model_dir, chat_file, tmp_path, monkeypatch
):
    monkeypatch.setenv("LORA_STUDIO_FAULTS", "sample_pause@1:600")
    config = tiny_config(tiny_model_dir, chat_file, tmp_path / "runs", sample_max_new_tokens=8)
    window = make_window(qtbot, config)
    page = window.pages["train"]
    try:
        start_and_wait_in_the_samples(qtbot, window)
        with qtbot.waitSignal(window.runs.ended, timeout=180_000) as ended:
            qtbot.mouseClick(page.stop_button, Qt.MouseButton.LeftButton)
        assert ended.args == ["cancelled"]
        assert "Stopped before the first step: nothing was trained" in page.messages.message()
        assert page.progress.text() == "Stopped before the first step"
    finally:
        close_window(window)
