"""The Evaluate page on a tiny DPO run (#22), offscreen: preference accuracy and margin base vs
tuned with paired intervals, the fine-tune's reward accuracy with its own interval, the pairs in
the examples table, and the definitions in the legend."""

from __future__ import annotations

from pathlib import Path

import pytest
from gui_helpers import close_window, make_window, tiny_config, write_chat
from test_evaluate_preference import train_preference_run


@pytest.fixture(autouse=True)
def _isolated_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("LORA_STUDIO_SETTINGS", str(tmp_path / "settings.ini"))


@pytest.fixture(scope="module")
def dpo_run(tiny_model_dir, tmp_path_factory) -> Path:
    return train_preference_run(tmp_path_factory.mktemp("gui-dpo-eval"), tiny_model_dir)


@pytest.fixture
def window(qtbot, tiny_model_dir, dpo_run, tmp_path):
    config = tiny_config(tiny_model_dir, write_chat(tmp_path / "chat.jsonl"), dpo_run.parent)
    win = make_window(qtbot, config)
    yield win
    close_window(win)


def test_a_dpo_run_is_evaluated_on_its_held_out_pairs(qtbot, window, dpo_run):
    page = window.pages["evaluate"]
    window.show_page("evaluate")
    page.evaluate_run(dpo_run)
    qtbot.waitUntil(lambda: page.ready is not None or page.messages.kind == "error", timeout=60_000)
    assert page.ready is not None, page.messages.message()
    assert page.ready.metric == "preference"
    assert page.form.check_text.text().startswith("6 pairs from eval split of")
    page.start()
    qtbot.waitUntil(lambda: page.worker is None, timeout=180_000)
    assert page.messages.kind != "error", page.messages.message()
    assert page.progress.value() == page.progress.maximum()  # no generation stage left the bar short

    table = page.comparison.table
    headers = [table.horizontalHeaderItem(c).text() for c in range(table.columnCount())]
    assert headers == [
        "Model",
        "Prefers chosen ↑",
        "Mean margin ↑",
        "Reward accuracy ↑",
        "Reward margin ↑",
        "Chosen loss ↓",
    ]
    assert "Δ" in page.comparison.cell(1, 2) and "real gain" in page.comparison.cell(1, 2)  # the margin grew
    assert page.comparison.cell(0, 3) == "—"  # a base has no reward
    assert page.comparison.cell(1, 3) == "1.000\n[1.000, 1.000]  better than chance"
    lines = [page.comparison.headlines.itemAt(i).widget().property("plain") for i in range(2)]
    assert lines[0].startswith("dpo vs base: prefers chosen")
    assert lines[1].startswith("dpo vs base: reward accuracy 1.000") and "better than chance" in lines[1]
    legend = page.comparison.legend.text()
    assert "Prefers chosen: share of pairs with log p(chosen) > log p(rejected)" in legend
    assert not page.confusion.isVisibleTo(page) and "confusion" not in page.notes.text()

    view = page.examples
    headers = [view.table.horizontalHeaderItem(c).text() for c in range(view.table.columnCount())]
    assert headers == ["#", "Prompt", "Chosen", "Rejected", "Margin — base", "Margin — dpo"]
    assert view.table.rowCount() == 6 and view.column_values(3) == ["No."] * 6
    assert "log p(chosen)" in view.table.item(0, 5).toolTip()
