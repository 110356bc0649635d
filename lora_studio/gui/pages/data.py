"""Data page: the dataset file, how it was read, what the model will learn from it, and what is wrong.

Every change (file, format, mapping, sequence length, train-on...) re-reads and re-tokenizes the
data in a background task exactly as training will, so the statistics and the preview are the
truth, not a guess. Problems are listed with file, line, record and field. What a file holds
besides its records is said where it can be acted on: speakers with no known role get a small
table of roles to choose (pre-filled with a guess), true/false labels a choice to keep only the
records labelled true, and the preview marks tool calls, tool results and reasoning.
"""

from __future__ import annotations

import html
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

from lora_studio.core.config import DEMOS
from lora_studio.core.data import FIELDS
from lora_studio.core.data.preference_preview import METHOD_NAMES, methods_text
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
        self._hint_for: Any = None  # the preference data the method hint is about
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
        demo.setToolTip(
            "The bundled identity dataset for supervised fine-tuning: ~100 questions about who the "
            "assistant is (sets the method to SFT)."
        )
        demo.clicked.connect(lambda: self._use_demo("sft"))
        demo_dpo = QPushButton("Preference demo")
        demo_dpo.setToolTip(
            "The bundled preference pairs: 60 questions with a short, direct answer preferred over a "
            "long, wandering one. Sets the method to DPO and the demo's schedule (20 steps)."
        )
        demo_dpo.clicked.connect(lambda: self._use_demo("dpo"))
        row = QHBoxLayout()
        row.addWidget(form, 1)
        row.addWidget(browse, 0, Qt.AlignmentFlag.AlignTop)
        row.addWidget(demo, 0, Qt.AlignmentFlag.AlignTop)
        row.addWidget(demo_dpo, 0, Qt.AlignmentFlag.AlignTop)
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
        # preference data: which training methods fit, and where to choose one (in the scrolled column,
        # so the line costs the page no height)
        self.method_hint = QLabel()
        self.method_hint.setObjectName("methodHint")
        self.method_hint.setWordWrap(True)
        self.method_hint.setVisible(False)
        card.add(self.method_hint)
        # thumbs up/down labels: one choice beside the warning (supervised training learns every answer)
        self.labels_form = Form(self.state, self.title)
        self.labels_form.add_field("data.positive_only", "Keep only the records labelled true (thumbs up)")
        self.labels_form.setVisible(False)
        card.add(self.labels_form)
        self.speaker_box = QWidget()
        box = QVBoxLayout(self.speaker_box)
        box.setContentsMargins(0, 4, 0, 0)
        title = QLabel("<b>Speakers</b>")
        box.addWidget(title)
        self.speakers = self.views.SpeakerTable()
        self.speakers.mapping_chosen.connect(lambda mapping: self.state.set_value("data.role_map", mapping))
        box.addWidget(self.speakers)
        self.speaker_box.setVisible(False)
        card.add(self.speaker_box)
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
        form.add_field(
            "data.eval_fraction",
            "Held out for evaluation",
            kind="optional_float",
            unit="(0 to 0.5)",
            none_text="10%, at most 200",
        )
        form.add_field("data.packing", "Pack several examples per row (faster on mixed lengths)")
        card.add(form)
        advanced = Foldable("Advanced: eval file, system prompt, invalid records")
        inner = Form(self.state, self.title, advanced.content)
        QVBoxLayout(advanced.content).addWidget(inner)
        inner.add_field("data.eval_path", "Separate eval file", kind="optional_text")
        inner.add_field("data.system_prompt", "System prompt", kind="optional_text")
        inner.add_field("data.tools_path", "Tool definitions file", kind="optional_text")
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
        self.number_names: dict[str, QLabel] = {}
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
            self.number_names[key] = name
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
        if any(name.startswith("data.") for name in changed) or changed & {
            "model.source",
            "training.seed",
            "training.method",
        }:
            self.refresh()

    def refresh(self) -> None:
        config = self.state.config
        data, source, seed = config.data, config.model.source, config.training.seed
        trust, method = config.model.trust_remote_code, config.training.method
        self.task.request(
            lambda cancel: jobs.data_overview(
                data, source, seed=seed, trust_remote_code=trust, cancel=cancel, method=method
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
        lines = overview.evidence + [f"⚠ {w}" for w in overview.warnings]
        self.evidence.setText(
            "<br>".join(html.escape(line, quote=False) for line in lines)
        )  # '<image>' stays visible
        self._fill_mapping(overview)
        self._show_method_hint(overview.preference)
        self._show_labels_and_speakers(overview)
        self.problems.set_problems(overview.problems, overview.problem_count)
        self.problems_empty.setVisible(not overview.problems)
        self.problems.setVisible(bool(overview.problems))
        if overview.preference is not None:
            self._show_preference(overview)
            return
        self._name_numbers(None)
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
            f"{stats.format} format{' (detected)' if stats.detected else ''} · {count(stats.records, 'record')} → "
            f"{count(stats.examples, 'training example')}{skipped}"
            + (" · no chat template: using the simple fallback" if stats.fallback_template else "")
        )
        self._fill_numbers(stats)
        self.preview.set_examples(overview.examples, records=stats.records)

    def _show_preference(self, overview: jobs.DataOverview) -> None:
        """Pairs side by side (KTO: answers with their label), counted as the preference run counts them."""
        found, stats = overview.preference, overview.stats
        report = found.report
        self._name_numbers(found)
        skipped = f", {overview.problem_count} records with problems" if overview.problem_count else ""
        read = (
            f"{report.pairs:,} pairs"
            if found.kind == "pairs"
            else f"{report.desirable:,} good and {report.undesirable:,} bad answers"
        )
        if overview.error is None:
            self.messages.clear()
            self.status.setText(
                f"Preference data, {report.format} (detected) · {count(report.records, 'record')} → {read}{skipped}"
                + (" · no chat template: using the simple fallback" if stats.fallback_template else "")
            )
        else:
            self.status.setText(
                f"This data cannot be used yet: {len(overview.problems)} problem(s) listed below"
                + (" (or skip them: Advanced › Skip invalid records)." if stats is not None else ".")
            )
            self.messages.show_error(overview.error)
            if stats is None:  # the data does not fit the method, or nothing is usable
                self.preview.set_examples(found.previews, records=report.records)
                self._fill_numbers(None)
                return
        # with only record problems the pairs the run would keep are still shown: what to fix is listed
        self._fill_preference_numbers(found)
        self.preview.set_examples(found.previews, records=report.records)

    def _name_numbers(self, found: Any) -> None:
        """The Statistics' row names: per example for supervised data, per pair or answer for preference."""
        unit = None if found is None else ("pairs" if found.method != "kto" else "answers")
        names = {
            "records": "Records",
            "examples": f"Training {unit}" if unit else "Training examples",
            "eval": f"Held-out {unit}" if unit else "Eval examples",
            "lengths": f"Tokens per {unit[:-1]}" if unit else "Tokens per example",
            "trainable": "Trained tokens",
            "cut": "Cut to fit",
            "dropped": "Left out (problems)" if unit else "Dropped",
            "padding": "Methods that fit" if unit else "Padding",
        }
        tips = {
            "lengths": "Both sides of a pair together: prompt + chosen answer, and prompt + rejected answer."
            if unit == "pairs"
            else "The answer with its prompt.",
            "trainable": "The answers' tokens (and their end-of-turn token): the prompt is context only.",
            "cut": "Each side is cut to the longest example on its own; the start is kept.",
        }
        for key, text in names.items():
            self.number_names[key].setText(text)
            self.number_names[key].setToolTip(tips.get(key, "") if unit else "")

    def _fill_preference_numbers(self, found: Any) -> None:
        stats = found.stats
        unit = "pairs" if found.method != "kto" else "answers"
        labels = f" ({stats.desirable:,} good, {stats.undesirable:,} bad)" if found.method == "kto" else ""
        values = {
            **_shared_numbers(stats),
            "examples": f"{stats.examples:,}{labels}",
            "cut": f"{stats.truncated:,} {unit} ({stats.truncated_tokens:,} tokens)",
            "dropped": f"{len(found.errors):,}",
            "padding": methods_text(found.kind),
        }
        for key, text in values.items():
            self.numbers[key].setText(text)
        noun = "pair" if unit == "pairs" else "answer"
        self.histogram.set_data(
            found.longest_side,
            stats.max_seq_len,
            stats.truncated,
            subject="Longer side of each pair" if noun == "pair" else "Answer lengths",
            unit=unit.capitalize(),
            x_label="Tokens (prompt + answer)",
        )

    def _show_method_hint(self, found: Any) -> None:
        """One line under the file: which training methods this preference data fits, and where to choose."""
        self._hint_for = found
        if found is None:
            self.method_hint.setVisible(False)
            return
        t = self.state.theme
        method = self.state.config.training.method
        fits = methods_text(found.kind)
        if method == "sft":
            keep = " — or keep only the answers labelled true, below" if found.kind == "labels" else ""
            text = (
                f"<span style='color:{t.warn}'>⚠ Preference data: choose {fits} as the <b>Method</b> on the "
                "Train page (supervised fine-tuning would also learn the "
                f"{'rejected' if found.kind == 'pairs' else 'bad'} answers){keep}.</span>"
            )
        elif method not in found.methods:
            text = (
                f"<span style='color:{t.error}'>{METHOD_NAMES[method]} needs chosen/rejected pairs; these "
                "are answers labelled good or bad: choose <b>KTO</b> as the Method on the Train page.</span>"
            )
        else:
            others = [METHOD_NAMES[m] for m in found.methods if m != method]
            also = f"; this data also fits {', '.join(others)}" if others else ""
            text = (
                f"<span style='color:{t.muted}'>Shown as {METHOD_NAMES[method]} will train on it (the "
                f"<b>Method</b> on the Train page){also}.</span>"
            )
        self.method_hint.setText(text)
        self.method_hint.setVisible(True)

    def _show_labels_and_speakers(self, overview: jobs.DataOverview | None) -> None:
        """The label choice when the records carry true/false labels; the speaker table when names
        have no known role (or a mapping is in use)."""
        data = self.state.config.data
        kto = (
            overview is not None and overview.preference is not None and overview.preference.kind == "labels"
        )
        labelled = overview is not None and bool(overview.labels)
        sft = self.state.config.training.method == "sft"
        self.labels_form.setVisible(data.positive_only or (sft and (labelled or kto)))
        unknown = overview.speakers if overview is not None else {}
        self.speaker_box.setVisible(bool(unknown or data.role_map))
        if unknown or data.role_map:
            self.speakers.set_speakers(unknown, data.role_map)

    def _failed(self, error: Exception) -> None:
        self.status.setText("The data could not be read.")
        self._show_method_hint(None)
        self._show_labels_and_speakers(None)
        self.messages.show_error(error)
        self.preview.set_examples([])
        self._fill_numbers(None)

    def _fill_numbers(self, stats: Any) -> None:
        if stats is None:
            for label in self.numbers.values():
                label.setText("—")
            self.histogram.set_data({}, self.state.config.data.max_seq_len, 0)
            return
        packing = self.state.config.data.packing
        padding = stats.padding.get("packed" if packing else "padded_length_grouped")
        values = {
            **_shared_numbers(stats),
            "examples": f"{stats.examples:,}",
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
        fields = FIELDS.get(fmt, {}) if overview.preference is None else {}
        if not fields or not overview.columns:
            note = QLabel(
                "Preference data is read by its field names (prompt, chosen, rejected; label for KTO): "
                "there is nothing to map."
                if overview.preference is not None
                else "Choose a record format to map its fields to your columns."
            )
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

    def _use_demo(self, name: str) -> None:
        """The SFT demo's data (with the SFT method), or everything ``train --demo dpo`` sets but the
        run's name: the preference demo needs its schedule (a short one, with the SFT term) to work."""
        if name == "sft":
            self.state.set_values({"data.path": "demo", "training.method": "sft"})
            return
        self.state.set_values({k: v for k, v in DEMOS[name].items() if not k.startswith("output.")})

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
        if self._hint_for is not None:  # its colours are the theme's
            self._show_method_hint(self._hint_for)


def _shared_numbers(stats: Any) -> dict[str, str]:
    """The Statistics that read the same for supervised and preference data."""
    lengths = stats.lengths
    return {
        "records": f"{stats.records:,}",
        "eval": f"{stats.eval_examples:,}",
        "lengths": (
            f"{lengths.get('min', 0):,.0f} – {lengths.get('max', 0):,.0f} (median {lengths.get('median', 0):,.0f})"
            if lengths
            else "—"
        ),
        "trainable": f"{stats.trainable_tokens:,} of {stats.total_tokens:,}",
    }


def count(n: int, noun: str) -> str:
    """'1 record', '1,024 records'."""
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


PAGE = DataPage
