"""How an evaluation reads on screen: the comparison, the confusion matrices and the examples.

Every view takes the evaluation as saved (``EvalReport.to_dict()`` and its per-example rows), so a
result just computed and one read back from a run's ``eval/`` folder look the same. The comparison
has one row per model and one column per metric; a fine-tune's cell also carries its difference
from the baseline with the paired bootstrap interval, coloured only when the interval excludes 0 —
the one question a user asks of it: is the gap real or could it be noise?
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any

from PySide6.QtCore import Qt
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (
    QAbstractItemView,
    QBoxLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from lora_studio.core.evaluate import display_labels
from lora_studio.gui import theme as th

#: The headline metric of each task metric (loss when there is none).
MAIN_METRIC = {
    "accuracy": "accuracy",
    "exact": "exact_match",
    "rouge": "rouge_l",
    "preference": "pref_accuracy",
    "kto": "kto_accuracy",
    None: "eval_loss",
}
#: A second headline: on pairs, the fine-tune's reward accuracy against its base.
SECOND_METRIC = {"preference": "reward_accuracy"}
#: The per-example score the examples table sorts by, with its column title.
EXAMPLE_SCORE = {
    "accuracy": ("correct", "Correct"),
    "exact": ("f1", "Token F1"),
    "rouge": ("rouge_l", "ROUGE-L"),
    "preference": ("margin", "Margin"),
    "kto": ("reward", "Reward"),
    None: ("loss", "Loss"),
}


def model_labels(data: dict[str, Any]) -> list[str]:
    """The evaluated models' labels in table order, shortened for display."""
    labels = [entry["model"]["label"] for entry in data.get("models", [])]
    short = display_labels(labels)
    return [short[label] for label in labels]


def value_text(value: Any, digits: int) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def difference_text(diff: dict[str, Any], digits: int) -> str:
    return f"{diff['estimate']:+.{digits}f}  {interval_text(diff, digits)}"


def interval_text(diff: dict[str, Any], digits: int) -> str:
    return f"[{diff['low']:+.{digits}f}, {diff['high']:+.{digits}f}]"


def verdict(diff: dict[str, Any], higher_is_better: bool) -> str:
    """``better`` / ``worse`` when the interval excludes 0, else ``noise``."""
    if not diff.get("excludes_zero"):
        return "noise"
    return "better" if (diff["estimate"] > 0) == higher_is_better else "worse"


def _colour(kind: str, theme: th.Theme) -> str:
    return {"better": theme.ok, "worse": theme.error}.get(kind, theme.muted)


@dataclass(frozen=True)
class Headline:
    """One fine-tune's change on the headline metric, and what its interval says about it."""

    kind: str  # "better" | "worse" | "noise" | "single"
    subject: str  # "reviews vs base"
    change: str  # "accuracy 0.222 → 0.911, +0.689 (95% interval +0.533 to +0.822)"
    verdict: str  # "a real improvement: the whole interval is on the better side of 0"

    @property
    def text(self) -> str:
        return f"{self.subject}: {self.change}" + (f" — {self.verdict}" if self.verdict else "")


VERDICTS = {
    "better": "a real improvement (the interval excludes 0)",
    "worse": "a real step back (the interval excludes 0)",
    "noise": "could be noise (the interval includes 0)",
}
#: The same for a fine-tune's own interval, read against a chance line (0.5 for a share).
NULL_VERDICTS = {
    "better": "better than chance (the interval excludes {null:g})",
    "worse": "worse than chance (the interval excludes {null:g})",
    "noise": "could be chance (the interval includes {null:g})",
}


def own_verdict(own: dict[str, Any], null: float, higher_is_better: bool) -> str:
    """``better`` / ``worse`` when a fine-tune's own interval excludes ``null``, else ``noise``."""
    if not own.get("excludes_null"):
        return "noise"
    return "better" if (own["estimate"] > null) == higher_is_better else "worse"


#: What a coloured difference in the table means, in words (its tooltip and its copied text).
CELL_WORDS = {"better": "real gain", "worse": "real loss", "noise": "could be noise"}
NULL_WORDS = {"better": "better than chance", "worse": "worse than chance", "noise": "could be chance"}


def headline(data: dict[str, Any]) -> list[Headline]:
    """One line per fine-tune on the headline metric (accuracy, exact match, ROUGE-L, preference
    accuracy, else loss); on preference pairs a second one on the reward accuracy."""
    rows = {row["metric"]: row for row in data.get("comparison", [])}
    main = rows.get(MAIN_METRIC.get(data.get("metric"), "eval_loss")) or rows.get("eval_loss")
    second = rows.get(SECOND_METRIC.get(data.get("metric"), ""))
    return [line for row in (main, second) if row is not None for line in _headlines(data, row)]


def _headlines(data: dict[str, Any], row: dict[str, Any]) -> list[Headline]:
    labels = model_labels(data)
    full = [entry["model"]["label"] for entry in data.get("models", [])]
    if not labels:
        return []
    if row.get("intervals") is not None:
        return _own_headlines(data, row, labels)
    examples = data.get("eval_set", {}).get("examples", 0)
    digits, values = row["digits"], row["values"]
    if len(labels) == 1:
        change = f"{row['title']} {value_text(values[0], digits)} on {examples} examples"
        return [Headline("single", labels[0], change, "")]
    base = full.index(data["baseline"]) if data.get("baseline") in full else 0
    confidence = round(100 * data.get("options", {}).get("confidence", 0.95))
    out = []
    for diff in row["differences"]:
        if "estimate" not in diff or diff["model"] not in full:
            continue
        k = full.index(diff["model"])
        kind = verdict(diff, row["higher_is_better"])
        change = (
            f"{row['title']} {value_text(values[base], digits)} → {value_text(values[k], digits)}, "
            f"{diff['estimate']:+.{digits}f} ({confidence}% interval {diff['low']:+.{digits}f} to "
            f"{diff['high']:+.{digits}f})"
        )
        out.append(Headline(kind, f"{labels[k]} vs {labels[base]}", change, VERDICTS[kind]))
    return out


def _own_headlines(data: dict[str, Any], row: dict[str, Any], labels: list[str]) -> list[Headline]:
    """A fine-tune against its own base (an implicit reward): its value and interval vs the null line."""
    full = [entry["model"]["label"] for entry in data.get("models", [])]
    base = full.index(data["baseline"]) if data.get("baseline") in full else 0
    confidence = round(100 * data.get("options", {}).get("confidence", 0.95))
    digits, null = row["digits"], row.get("null") or 0.0
    out = []
    for k, own in enumerate(row["intervals"]):
        if not own:
            continue
        kind = own_verdict(own, null, row["higher_is_better"])
        change = (
            f"{row['title']} {value_text(row['values'][k], digits)} ({confidence}% interval "
            f"{own['low']:.{digits}f} to {own['high']:.{digits}f})"
        )
        subject = f"{labels[k]} vs {labels[base]}" if k != base else labels[k]
        out.append(Headline(kind, subject, change, NULL_VERDICTS[kind].format(null=null)))
    return out


class SortItem(QTableWidgetItem):
    """A cell shown as text but ordered by a number (``None`` sorts last either way)."""

    def __init__(self, text: str, order: float | None) -> None:
        super().__init__(text)
        self.order = order

    def __lt__(self, other: QTableWidgetItem) -> bool:
        theirs = getattr(other, "order", None)
        if self.order is None or theirs is None:
            return self.order is not None and theirs is None
        return self.order < theirs


def _fit_height(table: QTableWidget) -> None:
    """As tall as its rows: a short table needs no scroll bar and leaves the space to what follows."""
    rows = sum(table.rowHeight(r) for r in range(table.rowCount()))
    header = 0 if table.horizontalHeader().isHidden() else table.horizontalHeader().sizeHint().height()
    table.setFixedHeight(rows + header + 2 * table.frameWidth() + 2)
    table.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)


def _fit_columns(table: QTableWidget) -> None:
    """Every metric column as wide as its widest cell or title, the model column taking the rest;
    never narrower than all of that (the page scrolls sideways rather than cut a number)."""
    header = table.horizontalHeader()
    header.setStretchLastSection(False)
    header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
    widths = [max(header.sectionSizeHint(c), table.sizeHintForColumn(c)) for c in range(table.columnCount())]
    header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
    table.setMinimumWidth(sum(widths) + 2 * table.frameWidth() + 2)


def _plain_table(rows: int, columns: int) -> QTableWidget:
    table = QTableWidget(rows, columns)
    table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
    table.setSelectionMode(QAbstractItemView.SelectionMode.NoSelection)
    table.setFocusPolicy(Qt.FocusPolicy.NoFocus)
    return table


class _EvaluationView(QWidget):
    """A view drawn from one saved evaluation, redrawn when the evaluation or the theme changes."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.theme = th.LIGHT
        self.data: dict[str, Any] = {}

    def show_evaluation(self, data: dict[str, Any]) -> None:
        self.data = data
        self._render()

    def apply_theme(self, theme: th.Theme) -> None:
        self.theme = theme
        if self.data:
            self._render()

    def _render(self) -> None:
        raise NotImplementedError


def _clear(layout: QBoxLayout) -> None:
    while layout.count():
        widget = layout.takeAt(0).widget()
        if widget is not None:
            widget.deleteLater()


class ComparisonView(_EvaluationView):
    """Headline verdicts, the models × metrics table (with differences vs the baseline) and a legend."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.headlines = QVBoxLayout()
        self.headlines.setSpacing(4)
        self.table = _plain_table(0, 0)
        self.table.setObjectName("evalComparison")
        self.table.verticalHeader().hide()
        self.table.setWordWrap(False)
        self.legend = QLabel()
        self.legend.setObjectName("muted")
        self.legend.setWordWrap(True)
        column = QVBoxLayout(self)
        column.setContentsMargins(0, 0, 0, 0)
        column.addLayout(self.headlines)
        column.addWidget(self.table)
        column.addWidget(self.legend)

    def cell(self, row: int, column: int) -> str:
        """A cell's text (without markup), for tests and copying."""
        widget = self.table.cellWidget(row, column)
        if isinstance(widget, QLabel):
            return widget.property("plain") or ""
        item = self.table.item(row, column)
        return item.text() if item else ""

    def _render(self) -> None:
        data, theme = self.data, self.theme
        _clear(self.headlines)
        for line in headline(data):
            colour = _colour(line.kind, theme)
            label = QLabel(
                f"<span style='font-size:11pt'><b>{html.escape(line.subject)}</b>: {html.escape(line.change)}"
                + (f" — <b style='color:{colour}'>{html.escape(line.verdict)}</b>" if line.verdict else "")
                + "</span>"
            )
            label.setTextFormat(Qt.TextFormat.RichText)
            label.setWordWrap(True)
            label.setProperty("plain", line.text)
            self.headlines.addWidget(label)
        labels = model_labels(data)
        full = [entry["model"]["label"] for entry in data.get("models", [])]
        rows = data.get("comparison", [])
        table = self.table
        table.clear()
        table.setRowCount(len(labels))
        table.setColumnCount(1 + len(rows))
        table.setHorizontalHeaderLabels(["Model", *[_header(row) for row in rows]])
        baseline = data.get("baseline")
        for r, label in enumerate(labels):
            role = " (baseline)" if full[r] == baseline and len(labels) > 1 else ""
            name = QTableWidgetItem(f"{label}{role}")
            name.setToolTip(_model_tip(data["models"][r]["model"]))
            table.setItem(r, 0, name)
            for c, row in enumerate(rows, start=1):
                diff = next((d for d in row["differences"] if d["model"] == full[r]), None)
                own = (row.get("intervals") or [None] * len(labels))[r]
                table.setCellWidget(r, c, self._value_label(row, row["values"][r], diff, theme, own))
        _fit_columns(table)
        table.resizeRowsToContents()
        _fit_height(table)
        self.legend.setText(_legend(data))

    def _value_label(
        self,
        row: dict[str, Any],
        value: Any,
        diff: dict[str, Any] | None,
        theme: th.Theme,
        own: dict[str, Any] | None = None,
    ) -> QLabel:
        digits = row["digits"]
        plain = value_text(value, digits)
        rich = f"<span style='font-size:12pt; font-weight:600'>{html.escape(plain)}</span>"
        if diff and "estimate" in diff:
            kind = verdict(diff, row["higher_is_better"])
            change = difference_text(diff, digits)
            plain += f"\nΔ {change}  {CELL_WORDS[kind]}"
            # the difference and its interval on lines of their own: a cell stays narrow enough for
            # every metric's column to show all of it at the default window size
            lines = (f"Δ {diff['estimate']:+.{digits}f}", interval_text(diff, digits))
            rich += "".join(
                f"<br><span style='color:{_colour(kind, theme)}'>{html.escape(t)}</span>" for t in lines
            )
        elif own:
            kind = own_verdict(own, row.get("null") or 0.0, row["higher_is_better"])
            span = f"[{own['low']:.{digits}f}, {own['high']:.{digits}f}]"
            plain += f"\n{span}  {NULL_WORDS[kind]}"
            rich += f"<br><span style='color:{_colour(kind, theme)}'>{html.escape(span)}</span>"
        label = QLabel(rich)
        label.setToolTip(plain)
        label.setTextFormat(Qt.TextFormat.RichText)
        label.setContentsMargins(8, 4, 8, 4)
        label.setProperty("plain", plain)
        return label


def _header(row: dict[str, Any]) -> str:
    if row["metric"] == "unparseable":
        return "Unparseable answers"
    direction = "" if row.get("scale") == "count" else (" ↑" if row["higher_is_better"] else " ↓")
    return f"{row['title'][0].upper()}{row['title'][1:]}{direction}"


def _model_tip(model: dict[str, Any]) -> str:
    parts = [f"base model: {model.get('source')}"]
    if model.get("adapter"):
        parts.append(
            f"adapter: {model['adapter']}" + ("" if model.get("use_adapter", True) else " (switched off)")
        )
    if model.get("quantization") and model["quantization"] != "none":
        parts.append(f"quantization: {model['quantization']}")
    return "\n".join(parts)


def _legend(data: dict[str, Any]) -> str:
    from lora_studio.core.evaluate.scoring import DEFINITIONS

    examples = data.get("eval_set", {}).get("examples", 0)
    confidence = round(100 * data.get("options", {}).get("confidence", 0.95))
    text = "↑ higher is better, ↓ lower is better."
    if len(data.get("models", [])) > 1:
        text += (
            f" Δ: the difference from the baseline [its {confidence}% interval, paired bootstrap over the "
            f"{examples} examples]. Green: a real gain, red: a real loss (the interval excludes 0); "
            "grey: could be noise (the interval includes 0)."
        )
    if any(row.get("intervals") for row in data.get("comparison", [])):
        text += (
            f" [low, high] alone: a fine-tune's own {confidence}% interval against its base, green when it "
            "excludes chance (0.5 for a share, 0 for a margin)."
        )
    definitions = DEFINITIONS.get(data.get("metric") or "")
    return text + (f"\n{definitions}" if definitions else "")


class ConfusionView(_EvaluationView):
    """One confusion matrix per model (rows: the reference label, columns: the answer's label)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.tables: dict[str, QTableWidget] = {}
        self.row = QHBoxLayout()
        self.row.setSpacing(24)
        self.caption = QLabel("Rows: the reference label · columns: the label found in the model's answer.")
        self.caption.setObjectName("muted")
        column = QVBoxLayout(self)
        column.setContentsMargins(0, 0, 0, 0)
        column.addWidget(self.caption)
        column.addLayout(self.row, 1)

    def has_matrix(self) -> bool:
        return bool(self.tables)

    def _render(self) -> None:
        _clear(self.row)
        self.tables = {}
        for label, entry in zip(model_labels(self.data), self.data.get("models", []), strict=True):
            confusion = entry["metrics"].get("confusion")
            if not confusion:
                continue
            accuracy = entry["metrics"].get("accuracy")
            title = QLabel(f"{label} — accuracy {value_text(accuracy, 3)}")
            title.setObjectName("cardTitle")
            table = self._matrix(confusion)
            self.tables[label] = table
            holder = QWidget()
            box = QVBoxLayout(holder)
            box.setContentsMargins(0, 0, 0, 0)
            box.addWidget(title)
            box.addWidget(table)
            box.addStretch(1)
            self.row.addWidget(holder)
        self.row.addStretch(1)

    def _matrix(self, confusion: dict[str, Any]) -> QTableWidget:
        names, matrix, unparsed = confusion["labels"], confusion["matrix"], confusion["unparseable"]
        table = _plain_table(len(names), len(names) + 1)
        table.setHorizontalHeaderLabels([*names, "unparseable"])
        table.setVerticalHeaderLabels(names)
        ok, bad = QColor(self.theme.ok), QColor(self.theme.error)
        for r, line in enumerate(matrix):
            total = sum(line) + unparsed[r]
            for c, count in enumerate([*line, unparsed[r]]):
                item = QTableWidgetItem(str(count))
                item.setTextAlignment(Qt.AlignmentFlag.AlignCenter)
                if count and total:
                    colour = QColor(ok if c == r else bad)
                    colour.setAlphaF(0.15 + 0.6 * count / total)
                    item.setBackground(colour)
                if c == r:
                    font = item.font()
                    font.setBold(True)
                    item.setFont(font)
                item.setToolTip(
                    f"{count} of {total} '{names[r]}' examples answered "
                    + ("with no single label" if c == len(names) else f"'{names[c]}'")
                )
                table.setItem(r, c, item)
        table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        table.horizontalHeader().setMinimumSectionSize(64)
        table.verticalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Fixed)
        table.verticalHeader().setDefaultSectionSize(26)
        table.resizeColumnsToContents()
        _fit_height(table)
        width = table.verticalHeader().sizeHint().width() + table.horizontalHeader().length()
        table.setFixedWidth(width + 2 * table.frameWidth() + 2)
        table.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        return table
