"""The Data page on preference data (#22), offscreen: pairs side by side with the trained tokens
marked, KTO answers with their label, the counts, the method hint, and supervised data unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from gui_helpers import close_window, make_window, tiny_config, wait_idle, write_chat

PAIRS = [
    {"prompt": "What is 2 + 2?", "chosen": "4.", "rejected": "Probably 5, or so."},
    {"prompt": "Capital of France?", "chosen": "Paris.", "rejected": "London."},
    {"prompt": "Colour of the sky?", "chosen": "Blue.", "rejected": "Green, " * 40},
]


@pytest.fixture(autouse=True)
def _isolated_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("LORA_STUDIO_SETTINGS", str(tmp_path / "settings.ini"))


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def window(qtbot, tiny_model_dir, tmp_path):
    win = make_window(
        qtbot, tiny_config(tiny_model_dir, write_chat(tmp_path / "chat.jsonl"), tmp_path / "runs")
    )
    yield win
    close_window(win)


def show(qtbot, window, path: Path):
    page = window.pages["data"]
    window.state.set_value("data.path", str(path))
    window.show_page("data")
    wait_idle(qtbot, window)
    qtbot.waitUntil(
        lambda: page.overview is not None and page.overview.preference is not None, timeout=60_000
    )
    return page


def test_pairs_show_side_by_side_with_counts_and_the_method_hint(qtbot, window, tmp_path):
    page = show(qtbot, window, write_rows(tmp_path / "pairs.jsonl", PAIRS * 4))
    assert page.overview.preference is not None, page.messages.message()
    preview = page.preview
    assert (
        preview.mode() == "pair" and preview.second.isVisibleTo(page) and preview.headers[1].isVisibleTo(page)
    )
    chosen, rejected = preview.side_texts()
    assert "What is 2 + 2?" in chosen and "What is 2 + 2?" in rejected  # each side is prompt + answer
    assert chosen.rstrip().endswith("4.<|im_end|>") and "Probably 5, or so.<|im_end|>" in rejected
    assert "Chosen" in preview.headers[0].text() and "Rejected" in preview.headers[1].text()
    assert preview.position.text().startswith("Pair 1 of 8 shown (of 12 records)")
    # the trained tokens are the answer alone, on both sides
    pair = preview.examples[0]
    for side, answer in ((pair.chosen, "4.<|im_end|>"), (pair.rejected, "Probably 5, or so.<|im_end|>")):
        assert [t for t, trained in side.segments if trained] == [answer]
    assert "12 records → 12 pairs" in page.status.text()
    assert page.number_names["examples"].text() == "Training pairs"
    assert (
        page.numbers["examples"].text() == "12"
        and page.numbers["padding"].text() == "DPO, ORPO, SimPO or KTO"
    )
    hint = page.method_hint
    assert hint.isVisibleTo(page) and "DPO, ORPO, SimPO or KTO" in hint.text() and "Method" in hint.text()

    window.state.set_value("data.max_seq_len", 48)  # the long rejected answer no longer fits
    qtbot.waitUntil(lambda: page.numbers["cut"].text().startswith("4 pairs"), timeout=60_000)
    assert "Longer side of each pair" in page.histogram.title_text

    window.state.set_value("training.method", "orpo")
    qtbot.waitUntil(lambda: "Shown as ORPO" in page.method_hint.text(), timeout=60_000)
    assert "also fits DPO, SimPO, KTO" in page.method_hint.text()


def test_kto_answers_show_their_label_and_a_pair_method_is_refused(qtbot, window, tmp_path):
    rows = [
        {"prompt": "Say hi.", "completion": "Hello!" if i % 3 else "Go away.", "label": bool(i % 3)}
        for i in range(9)
    ]
    page = show(qtbot, window, write_rows(tmp_path / "kto.jsonl", rows))
    preview = page.preview
    assert preview.mode() == "answer" and not preview.second.isVisibleTo(page)
    assert "bad" in preview.headers[0].text() and "Go away." in preview.side_texts()[0]
    preview.show_example(1)
    assert "good" in preview.headers[0].text()
    assert "6 good and 3 bad answers" in page.status.text()
    assert page.numbers["examples"].text() == "9 (6 good, 3 bad)" and page.numbers["padding"].text() == "KTO"

    window.state.set_value("training.method", "dpo")
    qtbot.waitUntil(lambda: page.messages.kind == "error", timeout=60_000)
    assert "chosen/rejected" in page.method_hint.text() and "KTO" in page.method_hint.text()
    assert "labelled good or bad" in page.messages.message()


def test_supervised_data_keeps_its_single_column(qtbot, window):
    page = window.pages["data"]
    window.show_page("data")
    wait_idle(qtbot, window)
    assert page.overview.preference is None and page.preview.mode() == "example"
    assert not page.preview.second.isVisibleTo(page) and not page.preview.headers[0].isVisibleTo(page)
    assert not page.method_hint.isVisibleTo(page)
    assert page.number_names["examples"].text() == "Training examples"
    assert page.preview.position.text().startswith("Example 1 of 8 shown (of 16 records)")


def test_the_preference_demo_button_sets_up_the_dpo_demo_and_the_demo_button_returns_to_sft(qtbot, window):
    from PySide6.QtWidgets import QPushButton

    from lora_studio.core.config import DEMOS

    page = window.pages["data"]
    buttons = {b.text(): b for b in page.findChildren(QPushButton)}
    buttons["Preference demo"].click()
    config = window.state.config
    assert config.training.method == "dpo" and config.data.path == "demo-dpo"
    assert config.preference.sft_weight == DEMOS["dpo"]["preference.sft_weight"]
    assert config.training.max_steps == DEMOS["dpo"]["training.max_steps"]
    assert config.output.run_name != "demo-dpo"  # the run's name stays the user's
    window.show_page("data")
    wait_idle(qtbot, window)
    qtbot.waitUntil(
        lambda: page.overview is not None and page.overview.preference is not None, timeout=60_000
    )
    assert page.preview.mode() == "pair"
    buttons["Use the demo data"].click()
    assert window.state.config.training.method == "sft" and window.state.config.data.path == "demo"
