"""Chat and Export pages, offscreen on the tiny model: a streamed chat round-trip, Stop, side by side
with a tiny adapter, errors in the message bar, and an adapter export verified and shown as passed."""

from __future__ import annotations

from pathlib import Path

import pytest
from gui_helpers import tiny_config, write_chat

from lora_studio.gui import workers


@pytest.fixture(autouse=True)
def _isolated_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("LORA_STUDIO_SETTINGS", str(tmp_path / "settings.ini"))


@pytest.fixture(scope="module")
def tiny_adapter(tiny_model_dir, tmp_path_factory) -> Path:
    """A random (non-zero) LoRA adapter for the tiny model, made with peft directly."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    folder = tmp_path_factory.mktemp("adapter") / "my-adapter"
    get_peft_model(model, lora).save_pretrained(folder)
    return folder


def make_page(qtbot, name: str, tiny_model_dir: Path, tmp_path: Path):
    import importlib

    from lora_studio.gui.run_controller import RunController
    from lora_studio.gui.state import AppState

    state = AppState(tiny_config(tiny_model_dir, write_chat(tmp_path / "chat.jsonl"), tmp_path / "runs"))
    page = importlib.import_module(f"lora_studio.gui.pages.{name}").PAGE(state, RunController(state))
    qtbot.addWidget(page)
    page.resize(1200, 800)
    page.show()
    return page


def wait_workers(qtbot) -> None:
    qtbot.waitUntil(lambda: workers.live_count() == 0, timeout=60_000)


def send(qtbot, page, text: str) -> None:
    page.prompt.setPlainText(text)
    page.send()
    qtbot.waitUntil(lambda: page.worker is not None, timeout=60_000)  # loads first if needed
    qtbot.waitUntil(lambda: page.worker is None, timeout=60_000)


def test_chat_streams_an_answer_then_stops_and_reports_errors(qtbot, tiny_model_dir, tmp_path):
    page = make_page(qtbot, "chat", tiny_model_dir, tmp_path)
    page.max_tokens.setValue(12)
    page.greedy.setChecked(True)
    page.prompt.setPlainText("")
    page.send()
    assert "empty" in page.messages.message() and "type a question" in page.messages.message()

    pieces = []
    page.prompt.setPlainText("What is your name?")
    page.send()
    assert page.model_status.text() == "Loading…" and not page.send_button.isEnabled()
    qtbot.waitUntil(lambda: page.worker is not None, timeout=60_000)
    page.worker.piece.connect(lambda side, text: pieces.append((side, text)))
    qtbot.waitUntil(lambda: page.worker is None, timeout=60_000)
    assert "Loaded:" in page.model_status.text() and pieces and {s for s, _ in pieces} == {"main"}
    turns = page.views["main"].turns
    assert [t.role for t in turns] == ["user", "assistant"] and not turns[1].pending
    assert "tokens/s" in turns[1].stats and "first token" in turns[1].stats
    assert turns[1].text == "".join(t for _, t in pieces).strip()
    assert [m["role"] for m in page.history["main"]] == ["user", "assistant"]

    # Stop: cancel as soon as the first piece arrives; the answer ends early and is marked stopped
    page.max_tokens.setValue(400)
    page.greedy.setChecked(False)
    page.prompt.setPlainText("Tell me a long story.")
    page.send()
    qtbot.waitUntil(lambda: page.worker is not None, timeout=10_000)
    with qtbot.waitSignal(page.worker.piece, timeout=30_000):
        pass
    page.stop()
    qtbot.waitUntil(lambda: page.worker is None, timeout=30_000)
    last = page.views["main"].turns[-1]
    assert last.stats.startswith("stopped") and int(last.stats.split("stopped · ")[1].split()[0]) < 400
    page.clear()
    assert page.views["main"].turns == [] and page.history["main"] == []
    wait_workers(qtbot)


def test_chat_side_by_side_with_an_adapter_and_a_bad_adapter_folder(
    qtbot, tiny_model_dir, tiny_adapter, tmp_path
):
    page = make_page(qtbot, "chat", tiny_model_dir, tmp_path)
    page.max_tokens.setValue(8)
    page.greedy.setChecked(True)
    bad = tmp_path / "not-an-adapter"
    bad.mkdir()
    page.picker.select("folder", str(bad))
    qtbot.waitUntil(lambda: not page.loading, timeout=60_000)
    assert "adapter_config.json" in page.messages.message() and page.chat is None

    page.picker.select("folder", str(tiny_adapter))
    qtbot.waitUntil(lambda: page.chat is not None, timeout=60_000)
    assert page.chat.has_adapter and "adapter loaded" in page.model_status.text()
    page.side_by_side.setChecked(True)
    send(qtbot, page, "Say hello.")
    base, tuned = page.views["base"].turns, page.views["tuned"].turns
    assert len(base) == len(tuned) == 2 and base[1].stats and tuned[1].stats
    assert base[1].text != tuned[1].text  # the adapter changes the answer
    assert not page.views["main"].isVisible() and page.views["tuned"].isVisible()
    assert page.messages.message() == ""
    wait_workers(qtbot)


def test_export_page_exports_an_adapter_and_shows_verification(qtbot, tiny_model_dir, tiny_adapter, tmp_path):
    page = make_page(qtbot, "export", tiny_model_dir, tmp_path)
    out = tmp_path / "exported"
    page.picker.select("folder", str(tiny_adapter))
    page.out_dir.setText(str(out))
    for fmt, box in page.format_boxes.items():
        box.setChecked(fmt == "adapter")
    qtbot.waitUntil(lambda: page.plan is not None and not page.task.busy, timeout=60_000)
    assert "adapter" in page.plan_text.text() and "disk" in page.plan_text.text()
    page.start()
    qtbot.waitUntil(lambda: page.report is not None, timeout=60_000)
    wait_workers(qtbot)
    assert page.report.status == "completed" and page.report.verified is True
    row = page.results.topLevelItem(0)
    assert row.text(0) == "adapter" and row.text(3) == "passed"
    assert (out / "adapter" / "adapter_config.json").is_file()
    assert page.open_button.isEnabled() and page.progress.value() == page.progress.maximum()
    assert page.messages.message() == ""
