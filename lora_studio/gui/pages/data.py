"""Data page: the dataset file, how it was read, what the model will learn from it, and what is wrong.

Every change (file, format, mapping, sequence length, train-on...) re-reads and re-tokenizes the
data in a background task exactly as training will, so the statistics and the preview are the
truth, not a guess. Problems are listed with file, line, record and field.
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QComboBox,
    QDialog,
    QFileDialog,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from lora_studio.core.data import FIELDS
from lora_studio.gui import jobs
from lora_studio.gui.pages import Page
from lora_studio.gui.pages.model import scroll
from lora_studio.gui.widgets.forms import Card, Foldable, Form
from lora_studio.gui.workers import BackgroundTask

FORMATS = [
    ("auto", "Detect automatically"), ("messages", "OpenAI messages"), ("sharegpt", "ShareGPT"),
    ("alpaca", "Alpaca"), ("prompt_completion", "Prompt / completion"), ("text", "Plain text"),
]  # fmt: skip
TRAIN_ON = [("assistant", "Assistant answers only"), ("all", "Every token")]
DATA_FILES = "Datasets (*.jsonl *.json *.csv *.tsv *.parquet *.txt);;All files (*)"
DEBOUNCE_MS = 400


class DataPage(Page):
    key = "data"
    title = "Data"
    summary = "Pick the training data and see each example exactly as the model will learn it."
    icon = "data"

    def __init__(self, state: Any, runs: Any, parent: QWidget | None = None) -> None:
        super().__init__(state, runs, parent)
        from lora_studio.gui.widgets import data_views  # pyqtgraph: imported when the page is built

        self.views = data_views
        self.task = BackgroundTask(self, delay_ms=DEBOUNCE_MS)
        self.task.busy_changed.connect(self._busy)
        self.overview: jobs.DataOverview | None = None
        self.content.addWidget(self._file_card())
        splitter = QSplitter(Qt.Orientation.Horizontal)
        splitter.setObjectName("dataSplitter")
        splitter.setChildrenCollapsible(False)
        splitter.addWidget(scroll(self._format_card(), self._learning_card()))
        right = QSplitter(Qt.Orientation.Vertical)
        right.setObjectName("dataRightSplitter")
        right.setChildrenCollapsible(False)
        right.addWidget(self._stats_card())
        right.addWidget(self._preview_card())
        right.addWidget(self._problems_card())
        right.setSizes([230, 330, 120])
        splitter.addWidget(right)
        splitter.setSizes([470, 790])
        self.content.addWidget(splitter, 1)
        state.config_changed.connect(self._on_config)
        self.refresh()

    # -- cards ----------------------------------------------------------------------------------

    def _file_card(self) -> Card:
        card = Card("Dataset")
        form = Form(self.state, self.title)
        self.path = form.add_field("data.path", "File or folder")
        browse = QPushButton("Browse…")
        browse.setToolTip("Choose a .jsonl, .json, .csv, .tsv, .parquet or .txt file.")
        browse.clicked.connect(self._browse)
        demo = QPushButton("Use the demo data")
        demo.setToolTip("The bundled identity dataset: ~100 questions about who the assistant is.")
        demo.clicked.connect(lambda: self.state.set_value("data.path", "demo"))
        row = QHBoxLayout()
        row.addWidget(form, 1)
        row.addWidget(browse, 0, Qt.AlignmentFlag.AlignTop)
        row.addWidget(demo, 0, Qt.AlignmentFlag.AlignTop)
        card.body.addLayout(row)
        self.status = QLabel("Reading…")
        self.status.setObjectName("muted")
        self.status.setWordWrap(True)
        card.add(self.status)
        return card

    def _format_card(self) -> Card:
        card = Card("Format")
        form = Form(self.state, self.title)
        form.add_field("data.format", "Record format", choices=FORMATS)
        card.add(form)
        self.evidence = QLabel()
        self.evidence.setWordWrap(True)
        self.evidence.setObjectName("muted")
        self.evidence.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        card.add(self.evidence)
        self.mapping = Foldable("Column mapping")
        self.mapping_grid = QGridLayout(self.mapping.content)
        self.mapping_grid.setContentsMargins(0, 0, 0, 0)
        card.add(self.mapping)
        return card

    def _learning_card(self) -> Card:
        card = Card("What the model learns")
        form = Form(self.state, self.title)
        form.add_field("data.train_on", "Learn from", choices=TRAIN_ON)
        form.add_field("data.max_seq_len", "Longest example", unit="tokens", minimum=8, maximum=1_048_576)
        form.add_field("data.eval_fraction", "Held out for evaluation", kind="float", unit="(0 to 0.5)")
        form.add_field("data.packing", "Pack several examples per row (faster on mixed lengths)")
        card.add(form)
        advanced = Foldable("Advanced: eval file, system prompt, invalid records")
        inner = Form(self.state, self.title, advanced.content)
        QVBoxLayout(advanced.content).addWidget(inner)
        inner.add_field("data.eval_path", "Separate eval file", kind="optional_text")
        inner.add_field("data.system_prompt", "System prompt", kind="optional_text")
        inner.add_field("data.skip_invalid", "Skip invalid records (and list them) instead of stopping")
        inner.add_field(
            "data.txt_split",
            "Plain-text documents",
            choices=[("paragraph", "One per paragraph"), ("line", "One per line")],
        )
        card.add(advanced)
        return card

    def _stats_card(self) -> Card:
        card = Card("Statistics")
        grid = QGridLayout()
        grid.setHorizontalSpacing(16)
        grid.setVerticalSpacing(4)
        self.numbers: dict[str, QLabel] = {}
        names = [("records", "Records"), ("examples", "Training examples"), ("eval", "Eval examples"),
                 ("lengths", "Tokens per example"), ("trainable", "Trained tokens"), ("cut", "Cut to fit"),
                 ("dropped", "Dropped"), ("padding", "Padding")]  # fmt: skip
        for i, (key, label) in enumerate(names):
            name = QLabel(label)
            name.setObjectName("muted")
            value = QLabel("—")
            value.setObjectName("factValue")
            grid.addWidget(name, i, 0)
            grid.addWidget(value, i, 1)
            self.numbers[key] = value
        grid.setRowStretch(len(names), 1)
        self.histogram = self.views.LengthHistogram()
        row = QHBoxLayout()
        row.addLayout(grid)
        row.addWidget(self.histogram, 1)
        card.body.addLayout(row, 1)
        return card

    def _preview_card(self) -> Card:
        card = Card("Preview — what the model sees")
        self.preview = self.views.PreviewView()
        card.add(self.preview, 1)
        return card

    def _problems_card(self) -> Card:
        card = Card("Problems")
        self.problems = self.views.ProblemList()
        self.problems.record_requested.connect(self.show_record)
        self.problems_empty = QLabel("No problems found.")
        self.problems_empty.setObjectName("muted")
        card.add(self.problems_empty)
        card.add(self.problems, 1)
        card.body.addStretch(0)
        return card

    # -- refresh --------------------------------------------------------------------------------

    def _on_config(self, _config: Any, changed: frozenset[str]) -> None:
        if any(name.startswith("data.") for name in changed) or changed & {"model.source", "training.seed"}:
            self.refresh()

    def refresh(self) -> None:
        config = self.state.config
        data, source, seed = config.data, config.model.source, config.training.seed
        trust = config.model.trust_remote_code
        self.task.request(
            lambda cancel: jobs.data_overview(
                data, source, seed=seed, trust_remote_code=trust, cancel=cancel
            ),
            self._show,
            self._failed,
        )

    def _busy(self, busy: bool) -> None:
        if busy:
            self.status.setText("Reading and tokenizing the data…")

    def _show(self, overview: jobs.DataOverview) -> None:
        self.overview = overview
        stats, error = overview.stats, overview.error
        self.evidence.setText("<br>".join(overview.evidence + [f"⚠ {w}" for w in overview.warnings]))
        self._fill_mapping(overview)
        self.problems.set_problems(overview.problems, overview.problem_count)
        self.problems_empty.setVisible(not overview.problems)
        self.problems.setVisible(bool(overview.problems))
        if error is not None:
            self.status.setText(
                f"This data cannot be used yet: {len(overview.problems)} problem(s) listed below."
            )
            self.messages.show_error(error)
            self.preview.set_examples([])
            self._fill_numbers(None)
            return
        self.messages.clear()
        skipped = f", {overview.problem_count} invalid records skipped" if overview.problem_count else ""
        self.status.setText(
            f"{stats.format} format{' (detected)' if stats.detected else ''} · {stats.records:,} records → "
            f"{stats.examples:,} training examples{skipped}"
            + (" · no chat template: using the simple fallback" if stats.fallback_template else "")
        )
        self._fill_numbers(stats)
        self.preview.set_examples(overview.examples, records=stats.records)

    def _failed(self, error: Exception) -> None:
        self.status.setText("The data could not be read.")
        self.messages.show_error(error)
        self.preview.set_examples([])
        self._fill_numbers(None)

    def _fill_numbers(self, stats: Any) -> None:
        if stats is None:
            for label in self.numbers.values():
                label.setText("—")
            self.histogram.set_data({}, self.state.config.data.max_seq_len, 0)
            return
        lengths = stats.lengths
        packing = self.state.config.data.packing
        padding = stats.padding.get("packed" if packing else "padded_length_grouped")
        values = {
            "records": f"{stats.records:,}",
            "examples": f"{stats.examples:,}",
            "eval": f"{stats.eval_examples:,}",
            "lengths": (
                f"{lengths.get('min', 0):,.0f} – {lengths.get('max', 0):,.0f} (median {lengths.get('median', 0):,.0f})"
                if lengths
                else "—"
            ),
            "trainable": f"{stats.trainable_tokens:,} of {stats.total_tokens:,}",
            "cut": f"{stats.truncated:,} examples ({stats.truncated_tokens:,} tokens)",
            "dropped": f"{stats.dropped:,}",
            "padding": f"{100 * padding:.0f}% of each batch" if padding is not None else "—",
        }
        for key, text in values.items():
            self.numbers[key].setText(text)
        self.histogram.set_data(stats.histogram, stats.max_seq_len, stats.truncated)

    def _fill_mapping(self, overview: jobs.DataOverview) -> None:
        while self.mapping_grid.count():
            item = self.mapping_grid.takeAt(0)
            if item.widget():
                item.widget().deleteLater()
        config = self.state.config.data
        fmt = config.format if config.format != "auto" else (overview.format or "auto")
        fields = FIELDS.get(fmt, {})
        if not fields or not overview.columns:
            note = QLabel("Choose a record format to map its fields to your columns.")
            note.setObjectName("muted")
            note.setWordWrap(True)
            self.mapping_grid.addWidget(note, 0, 0, 1, 2)
        for row, canonical in enumerate(fields if overview.columns else []):
            combo = QComboBox()
            combo.addItem("(automatic)", None)
            for column in overview.columns:
                combo.addItem(column, column)
            current = config.columns.get(canonical)
            combo.setCurrentIndex(max(0, combo.findData(current)) if current else 0)
            combo.activated.connect(lambda _i, c=canonical, box=combo: self._map(c, box.currentData()))
            self.mapping_grid.addWidget(QLabel(canonical), row, 0)
            self.mapping_grid.addWidget(combo, row, 1)
        unsure = overview.error is not None and "format" in getattr(overview.error, "reason", "")
        if unsure or any("format" in w for w in overview.warnings) or config.columns:
            self.mapping.set_open(True)

    def _map(self, canonical: str, column: str | None) -> None:
        columns = dict(self.state.config.data.columns)
        if column:
            columns[canonical] = column
        else:
            columns.pop(canonical, None)
        self.state.set_value("data.columns", columns)

    def _browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Choose a dataset file", "", DATA_FILES)
        if path:
            self.state.set_value("data.path", path)

    def show_record(self, error: Any) -> QDialog | None:
        if error is None:
            return None
        dialog = self.views.RecordDialog(error, jobs.record_context(error), self)
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)  # one per click: not kept for good
        dialog.open()
        return dialog

    def apply_theme(self, theme: Any) -> None:
        self.histogram.apply_theme(theme)
        self.preview.set_theme(theme)


PAGE = DataPage
