"""The Data page on the datasets of #25, offscreen: the Speakers table with guessed roles, the
positive-only choice beside the label warning, the media warning, and tool calls, results and
reasoning marked apart in the preview."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from gui_helpers import close_window, make_window, tiny_config, wait_idle, write_chat

PUBLIC = Path(__file__).parent / "data" / "public"
TEMPLATES = Path(__file__).parent / "data" / "templates"
CALL = {
    "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}],
    "messages": [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "18C"},
        {"role": "assistant", "content": "18C in Paris.", "reasoning_content": "The tool said 18C."},
    ],
}


@pytest.fixture(autouse=True)
def _isolated_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("LORA_STUDIO_SETTINGS", str(tmp_path / "settings.ini"))


def write_rows(path: Path, *rows: dict) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def window(qtbot, tiny_model_dir, tmp_path):
    win = make_window(
        qtbot, tiny_config(tiny_model_dir, write_chat(tmp_path / "chat.jsonl"), tmp_path / "runs")
    )
    yield win
    close_window(win)


def show(qtbot, window, path: Path, until=None):
    page = window.pages["data"]
    window.state.set_value("data.path", str(path))
    window.show_page("data")
    wait_idle(qtbot, window)
    qtbot.waitUntil(
        lambda: page.overview is not None and (until is None or bool(until(page))), timeout=60_000
    )
    return page


def test_unknown_speakers_get_a_table_of_guessed_roles_that_maps_them_in_one_click(qtbot, window, tmp_path):
    turns = [{"from": "Customer", "value": "Where is my order?"}, {"from": "Agent", "value": "On its way."}]
    path = write_rows(tmp_path / "support.jsonl", *[{"conversations": turns}] * 4)
    page = show(qtbot, window, path, until=lambda p: bool(p.overview.speakers))
    assert page.speaker_box.isVisibleTo(page) and page.overview.error is not None
    assert page.speakers.mapping() == {"Customer": "user", "Agent": "assistant"}
    assert (
        page.speakers.table.item(0, 0).text() == "Customer" and page.speakers.table.item(0, 1).text() == "4"
    )
    page.speakers.apply.click()
    assert window.state.config.data.role_map == {"Customer": "user", "Agent": "assistant"}
    wait_idle(qtbot, window)
    qtbot.waitUntil(lambda: page.overview.error is None and bool(page.preview.examples), timeout=60_000)
    assert "On its way.<|im_end|>" in page.preview.text.toPlainText()
    # the mapping stays listed, to change or forget
    assert page.speaker_box.isVisibleTo(page) and page.speakers.forget.isVisibleTo(page)
    page.speakers.forget.click()
    assert window.state.config.data.role_map == {}
    wait_idle(qtbot, window)
    qtbot.waitUntil(lambda: page.overview.error is not None and not page.speakers.forget.isVisibleTo(page))


def test_labelled_records_offer_to_keep_only_the_good_ones(qtbot, window):
    path = PUBLIC / "hiyouga--LLaMA-Factory/kto_en_demo.excerpt.json"
    window.state.set_value("data.max_seq_len", 1024)  # every answer whole: the count is the records kept
    page = show(qtbot, window, path, until=lambda p: p.overview.preference is not None)
    assert page.labels_form.isVisibleTo(page)  # a KTO file under SFT: the choice beside the hint
    assert "keep only the answers labelled true" in page.method_hint.text()
    box = page.labels_form.editors["data.positive_only"].widget
    box.click()
    assert window.state.config.data.positive_only
    wait_idle(qtbot, window)
    qtbot.waitUntil(
        lambda: page.overview.preference is None and page.overview.stats is not None, timeout=60_000
    )
    assert page.overview.stats.examples == 4 and page.labels_form.isVisibleTo(page)
    assert "2 labelled false left out" in page.evidence.text()


def test_media_references_are_a_warning_on_the_page(qtbot, window):
    page = show(qtbot, window, PUBLIC / "hiyouga--LLaMA-Factory/mllm_demo.excerpt.json")
    assert "3 of 3 records refer to images, audio or video" in page.evidence.text()
    assert "it will see '&lt;image&gt;' as ordinary text" in page.evidence.text()  # escaped: shown, not eaten


@pytest.fixture
def tool_model_dir(tiny_model_dir, tmp_path) -> Path:
    folder = tmp_path / "tiny-tools"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "chat_template.jinja").write_text((TEMPLATES / "qwen2_5.jinja").read_text(encoding="utf-8"))
    return folder


def test_the_preview_shows_calls_results_and_reasoning_apart(qtbot, window, tool_model_dir, tmp_path):
    from lora_studio.gui.widgets.data_views import segments_html

    window.state.set_values({"model.source": str(tool_model_dir), "data.max_seq_len": 1024})
    page = show(
        qtbot, window, write_rows(tmp_path / "calls.jsonl", CALL, CALL), until=lambda p: p.preview.examples
    )
    example = page.preview.examples[0]
    assert {"tool_call", "tool_result", "reasoning"} <= set(example.kinds)
    legend = page.preview.kinds_legend.text()
    assert page.preview.kinds_legend.isVisibleTo(page)
    assert "tool call" in legend and "tool result" in legend and "reasoning" in legend
    text = page.preview.text.toPlainText()
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>' in text
    assert (
        "<tool_response>\n18C\n</tool_response>" in text and "<think>\nThe tool said 18C.\n</think>" in text
    )
    theme = page.preview.theme
    markup = segments_html(example.segments, theme, example.kinds)
    assert f"color:{theme.accent}; font-weight:600" in markup and "font-style:italic" in markup


def test_tool_calls_with_a_model_without_tool_support_say_why_in_one_message(qtbot, window, tmp_path):
    page = show(
        qtbot, window, write_rows(tmp_path / "calls.jsonl", CALL, CALL), until=lambda p: p.overview.error
    )
    assert "cannot render tool calls" in page.messages.message()
    assert "2 of 2 conversations have tool calls" in page.messages.message()
