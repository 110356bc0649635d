"""The window and its pages, offscreen: navigation, validation before Start, dataset errors with their
location, drag and drop, themes, persistence, and a window that appears before torch is imported."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from gui_helpers import close_window, make_window, tiny_config, wait_idle, write_chat
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QLineEdit, QPlainTextEdit, QSplitter, QWidget

from lora_studio.gui.pages import PAGES
from lora_studio.gui.widgets.forms import Form

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _isolated_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("LORA_STUDIO_SETTINGS", str(tmp_path / "settings.ini"))


@pytest.fixture
def window(qtbot, tiny_model_dir, tmp_path):
    data = write_chat(tmp_path / "chat.jsonl")
    win = make_window(qtbot, tiny_config(tiny_model_dir, data, tmp_path / "runs"))
    yield win
    close_window(win)


def test_the_window_opens_with_every_page_and_navigates_by_keyboard(qtbot, window):
    assert list(window.pages) == PAGES and PAGES[:3] == ["model", "data", "train"] and PAGES[-1] == "runs"
    for key, page in window.pages.items():
        assert page.title and page.summary.endswith(".")
        window.show_page(key)
        assert window.current_page() == key and window.nav_buttons[key].isChecked()
    window.activateWindow()
    qtbot.keyClick(window, Qt.Key.Key_2, Qt.KeyboardModifier.ControlModifier)
    assert window.current_page() == "data"
    # every real page only: the later pages (chat, export, runs) are absent, not placeholders
    titles = [window.pages.classes[key].title for key in PAGES]
    assert [b.text() for b in window.nav_buttons.values()] == titles
    wait_idle(qtbot, window)
    model = window.pages["model"]
    assert model.facts["layers"].text() == "2"  # the tiny model's facts, read without weights
    assert "q_proj" in model.targets.boxes
    assert window.state.device is not None and window.device_label.text() == "Device: CPU only"
    assert window.model_label.text() == "Model: tiny-llama (not loaded)"
    assert window.state.estimate is not None and window.state.estimate["bytes"]["total"] > 0
    assert "Fits in this computer" in model.memory.bar.verdict.text()
    data = window.pages["data"]
    assert data.preview.examples and data.histogram.bar_count > 0
    assert "16 records" in data.status.text()
    # the preview says it shows the first few of the records, not that the data has 8 (#24)
    assert data.preview.position.text().startswith("Example 1 of 8 shown (of 16 records)")


def test_every_control_of_the_form_has_its_fields_documentation_as_tooltip(window):
    from lora_studio.core.config import field_docs

    docs = field_docs()
    editors = [e for page in window.pages.values() for e in page.findChildren(QLineEdit)]
    assert editors
    for name, (page, label) in window.state.field_labels.items():
        widget = window.findChild(QWidget, "field:" + name)
        if widget is not None:
            assert widget.toolTip() == docs[name], name
            assert page and label


def test_an_optional_number_showing_its_none_text_hides_its_unit(window):
    """ "Stop after: Use epochs steps" read wrong (#24): the unit shows only with a number."""
    editor = next(
        e for f in window.findChildren(Form) for d, e in f.editors.items() if d == "training.max_steps"
    )
    window.state.set_value("training.max_steps", None)
    assert editor.widget.text() == "Use epochs" and editor.unit is not None and editor.unit.isHidden()
    window.state.set_value("training.max_steps", 30)
    assert not editor.unit.isHidden() and editor.unit.text() == "steps"


def test_at_the_default_size_no_unit_of_the_settings_columns_is_cut_off(qtbot, window):
    """At 1360×860 "passes", "examples" and "checkpoints" ran past the Train column's edge (#24)."""
    from PySide6.QtCore import QPoint
    from PySide6.QtWidgets import QLabel

    window.resize(1360, 860)
    for key in ("model", "data", "train"):
        window.show_page(key)
        qtbot.wait(50)
        for form in window.pages[key].findChildren(Form):
            area = form.parentWidget()
            while area is not None and not hasattr(area, "viewport"):
                area = area.parentWidget()
            for unit in form.findChildren(QLabel, "unit"):
                if not unit.isVisibleTo(window):
                    continue
                right = unit.mapTo(area.viewport(), QPoint(unit.width(), 0)).x()
                assert unit.width() >= unit.sizeHint().width(), (key, unit.text())
                assert right <= area.viewport().width(), (key, unit.text(), right, area.viewport().width())


def test_a_message_never_resizes_the_window_and_pages_fit_the_default_size(qtbot, window):
    """A broken file's message grew the window from 860 to 885 px for good (#24): a page taller
    than the window now scrolls inside it, and at the default size none needs to."""
    window.resize(1360, 860)
    window.show()
    for key in window.pages:
        window.show_page(key)
        qtbot.wait(50)
        holder = window._holders[key]
        assert not holder.verticalScrollBar().isVisible(), key
        assert window.pages[key].height() == holder.viewport().height(), key
    window.show_page("data")
    page = window.pages["data"]
    page.messages.show_message(
        "error",
        "Problem with the dataset",
        "/home/someone/datasets/a-rather-long-folder-name/broken.jsonl, line 2, column 48, record 2: "
        "invalid JSON: Expecting ',' delimiter " * 3,
        "each line of a .jsonl file must be one JSON object",
    )
    qtbot.wait(100)
    assert window.height() == 860
    assert page.geometry().bottom() >= window._holders["data"].viewport().height() - 1  # fills it
    page.messages.clear()
    qtbot.wait(100)
    assert window.height() == 860


def test_invalid_settings_block_start_and_show_the_field(qtbot, window):
    page = window.pages["train"]
    rate = page.findChild(QLineEdit, "field:training.learning_rate")
    rate.setText("fast please")
    rate.editingFinished.emit()
    assert "training.learning_rate" in window.state.problems
    assert window.state.config.training.learning_rate == 5e-3  # the config itself stays valid
    window.state.set_value("data.path", str(Path(window.state.config.data.path).with_name("missing.jsonl")))
    qtbot.mouseClick(page.start_button, Qt.MouseButton.LeftButton)
    assert not window.runs.active and window.state.run_state == "idle"
    text = page.messages.message()
    assert "Train › Learning rate" in text and "Data › File or folder" in text and "missing.jsonl" in text
    editor = next(
        f.editors["training.learning_rate"]
        for f in page.findChildren(Form)
        if f.editors.get("training.learning_rate")
    )
    assert editor.error.isVisibleTo(page) and editor.error.text()
    rate.setText("1e-4")
    rate.editingFinished.emit()
    assert window.state.config.training.learning_rate == 1e-4
    assert "training.learning_rate" not in window.state.problems and not editor.error.isVisibleTo(page)


def test_a_dataset_error_shows_its_location_and_the_offending_record(qtbot, window, tmp_path):
    broken = tmp_path / "broken.jsonl"
    good = json.dumps(
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
    )
    broken.write_text(f"{good}\n{good}\n{{not json\n{good}\n")
    data = window.pages["data"]
    window.state.set_value("data.path", str(broken))
    window.show_page("data")

    def listed():
        assert any("line 3" in text for text in data.problems.texts()), data.problems.texts()

    qtbot.waitUntil(listed, timeout=60_000)
    assert "broken.jsonl" in data.messages.message() and "line 3" in data.messages.message()
    item = next(
        data.problems.item(i)
        for i in range(data.problems.count())
        if "line 3" in data.problems.item(i).text()
    )
    dialog = data.show_record(item.data(Qt.ItemDataRole.UserRole))
    texts = "\n".join(w.toPlainText() for w in dialog.findChildren(QPlainTextEdit))
    assert "▶     3  {not json" in texts, texts
    dialog.close()


def test_dropping_a_model_folder_or_a_dataset_file_uses_it(window, tiny_model_dir, tmp_path):
    other = write_chat(tmp_path / "other.jsonl", records=4)
    assert window.open_path(other) == "data"
    assert window.state.config.data.path == str(other) and window.current_page() == "data"
    assert window.open_path(tiny_model_dir) == "model"
    assert window.state.config.model.source == str(tiny_model_dir) and window.current_page() == "model"
    (tmp_path / "notes.md").write_text("hello")
    assert window.open_path(tmp_path / "notes.md") is None
    assert "Not a model or a dataset" in window.pages["model"].messages.message()


def test_theme_toggle_and_settings_persist_between_sessions(qtbot, tiny_model_dir, tmp_path):
    from lora_studio.gui import theme

    data = write_chat(tmp_path / "chat.jsonl")
    first = make_window(qtbot, tiny_config(tiny_model_dir, data, tmp_path / "runs"))
    first.set_theme_mode("light")
    first.toggle_theme()
    assert first.state.theme is theme.DARK
    first.state.set_value("training.learning_rate", 2e-4)
    first.show_page("train")
    first.findChild(QSplitter, "trainSplitter").setSizes([500, 800])
    geometry = first.saveGeometry()
    splitter = first.findChild(QSplitter, "trainSplitter").saveState()
    first.close()
    close_window(first)

    from lora_studio.gui.app import MainWindow

    second = MainWindow()  # no state given: the last-used config comes back
    qtbot.addWidget(second)
    try:
        assert second.state.config.training.learning_rate == 2e-4
        assert second.state.config.model.source == str(tiny_model_dir)
        assert second.theme_mode == "dark" and second.current_page() == "train"
        assert second.store.value("geometry") == geometry
        assert second.store.value("splitters/trainSplitter") == splitter
    finally:
        second.save_settings = lambda: None
        close_window(second)


def test_the_window_appears_before_torch_is_imported(tmp_path):
    env = {"QT_QPA_PLATFORM": "offscreen", "LORA_STUDIO_SETTINGS": str(tmp_path / "s.ini"), "PATH": ""}
    result = subprocess.run(
        [sys.executable, "-m", "lora_studio", "gui", "--startup-check"],
        capture_output=True, text=True, timeout=120, cwd=ROOT, env={**env, "HOME": str(tmp_path)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["heavy_imported"] == []
    assert report["shown_s"] < 10


def test_memory_plot_shows_gpu_series_and_the_estimate_as_a_dashed_line(qtbot):
    from lora_studio.gui.widgets.training_plots import GIB, TrainingPlots

    plots = TrainingPlots()
    qtbot.addWidget(plots)
    plots.reset(10)
    plots.set_estimate(6 * GIB)
    for step in (1, 2, 3):
        mem = {"cuda_allocated": 4 * GIB, "cuda_reserved": 5 * GIB, "cuda_peak": 5.5 * GIB, "rss": 2 * GIB}
        plots.add_step(step, 2.0 / step, 1e-4, 0.5, 1000.0, mem)
    plots.refresh()
    memory = plots.memory
    assert [memory.count(k) for k in ("allocated", "reserved", "peak", "rss")] == [3, 3, 3, 0]
    assert memory.lines["estimate"].isVisible() and memory.lines["estimate"].value() == 6.0
    assert memory.viewRange()[1][0] == 0  # memory is drawn from zero, up to the estimate
    assert memory.viewRange()[1][1] >= 6.0


def test_a_single_point_is_drawn_as_a_dot_on_an_axis_around_it(qtbot):
    """A line through one point drew nothing, on an x axis from −4 to 6 (#24)."""
    from lora_studio.gui.widgets.plots import LivePlot

    plot = LivePlot("Loss", "Loss")
    qtbot.addWidget(plot)
    plot.add_series("loss", "Loss", "#1f77b4")
    plot.append("loss", 1, 2.5)
    plot.refresh()
    item = plot.series["loss"].item
    assert item.opts["symbol"] == "o"
    low, high = plot.getPlotItem().getViewBox().viewRange()[0]
    assert 0 <= low < 1 < high <= 2.5
    plot.append("loss", 2, 2.0)
    plot.refresh()
    assert item.opts["symbol"] is None  # a line again, on the automatic range
    assert plot.getPlotItem().getViewBox().autoRangeEnabled() == [True, True]
    # a learning rate of 5e-4 sat on "0" of a −0.5…0.5 axis: its y range follows its magnitude
    rate = LivePlot("Learning rate", "Learning rate")
    qtbot.addWidget(rate)
    rate.add_series("lr", "Learning rate", "#1f77b4")
    rate.append("lr", 1, 5e-4)
    rate.refresh()
    bottom, top = rate.getPlotItem().getViewBox().viewRange()[1]
    assert 3e-4 < bottom < 5e-4 < top < 7e-4


def test_legend_labels_take_the_new_theme_colour(qtbot):
    """In the dark theme the legend kept the light theme's dark text (#24)."""
    from PySide6.QtGui import QColor

    from lora_studio.gui import theme as th
    from lora_studio.gui.widgets.plots import LivePlot

    plot = LivePlot("Loss", "Loss")
    qtbot.addWidget(plot)
    plot.add_series("loss", "Loss", "#1f77b4")
    plot.append("loss", 1, 2.5)  # joins the legend in the light theme
    plot.apply_theme(th.DARK)
    ((_sample, label),) = plot.legend.items
    assert QColor(th.DARK.plot_fg).name() in label.item.toHtml().lower()


def test_the_plot_timer_redraws_one_plot_a_tick_in_turn_and_refresh_redraws_all(qtbot):
    from lora_studio.gui.widgets.training_plots import TrainingPlots

    plots = TrainingPlots()
    qtbot.addWidget(plots)
    plots.timer.stop()  # ticks are driven here
    plots.reset(100)
    drawn: list[str] = []
    for plot in plots.plots:
        plot.refresh = lambda plot=plot, original=plot.refresh: (
            original() and not drawn.append(plot.title_text)
        )
    plots.add_step(1, 2.0, 1e-4, 0.5, 1000.0, {"rss": 2**30})
    for _ in range(7):
        plots.refresh_next()
    assert drawn == ["Training loss", "Memory", "Learning rate", "Gradient norm", "Speed"]
    assert plots.redraws == 5 and plots.lr.series["lr"].item.getData()[0].tolist() == [1.0]
    drawn.clear()
    plots.add_step(2, 1.5, 1e-4, 0.5, 1000.0, {"rss": 2**30})
    plots.refresh()  # an explicit refresh draws every plot at once
    assert sorted(drawn) == sorted(plot.title_text for plot in plots.plots) and plots.redraws == 10


def test_the_smoothed_loss_is_downsampled_by_mean_the_noisy_loss_by_peak(qtbot):
    import numpy as np

    from lora_studio.gui.widgets.training_plots import TrainingPlots

    plots = TrainingPlots()
    qtbot.addWidget(plots)
    plots.resize(900, 500)
    plots.show()
    plots.reset(20_000)
    for step in range(1, 20_001):
        plots.add_step(step, 1.0 + (-1) ** step, 1e-4, 0.5, 1000.0, {})  # loss 0, 2, 0, 2...
    plots.refresh()
    qtbot.wait(50)
    raw = plots.loss.series["loss"].item.getData()[1]
    smooth = plots.loss.series["loss_smooth"].item.getData()[1]
    assert len(raw) < 5000 and len(smooth) < 5000  # downsampled: about a sample per pixel
    assert raw.min() == 0 and raw.max() == 2  # peaks keep the spread of the noisy curve
    assert np.ptp(smooth[len(smooth) // 2 :]) < 0.1  # means flatten the smoothed one (~1 +- 0.18)


def test_thousands_of_signal_emits_do_not_crash_the_interpreter():
    """PySide6 6.12.0 leaks a reference to True on every emit (fatal on CPython 3.11 after a few
    thousand); importing the app's package guards against it (``gui/qt_fixes.py``)."""
    code = (
        "import lora_studio.gui\n"
        "from PySide6.QtCore import QObject, Signal\n"
        "class O(QObject):\n    sig = Signal(object)\n"
        "o = O()\nfor i in range(20000):\n    o.sig.emit(i)\nprint('ok')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]
