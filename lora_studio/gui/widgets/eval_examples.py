"""The Evaluate page's per-example table: prompt, reference, and each model's answer and score.

Sorting by a score column puts a model's misses first (or its worst ROUGE-L, or its highest loss),
which is where a user learns *what* the fine-tune still gets wrong. Preference data has nothing
generated: a pair shows its chosen and rejected answers and each model's margin (log p(chosen) −
log p(rejected)); a KTO answer its label and each fine-tune's reward. An instruction every prompt
repeats (the reviews demo's "Classify the sentiment…") is said once above the table, so the column
shows what differs.
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHeaderView,
    QLabel,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from lora_studio.gui.widgets.eval_views import EXAMPLE_SCORE, SortItem, model_labels, value_text


class ExamplesView(QWidget):
    """Every example with each model's answer and score; click a score header to sort by it."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.note = QLabel()
        self.note.setObjectName("muted")
        self.note.setWordWrap(True)
        self.table = QTableWidget(0, 0)
        self.table.setObjectName("evalExamples")
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setWordWrap(False)
        self.table.verticalHeader().hide()
        column = QVBoxLayout(self)
        column.setContentsMargins(6, 6, 6, 6)
        column.addWidget(self.note)
        column.addWidget(self.table, 1)
        self.score_columns: dict[str, int] = {}

    def show_evaluation(self, data: dict[str, Any], examples: list[dict[str, Any]]) -> None:
        key, title = EXAMPLE_SCORE.get(data.get("metric"), EXAMPLE_SCORE[None])
        full = [entry["model"]["label"] for entry in data.get("models", [])]
        labels = model_labels(data)
        prompts = [str(e.get("prompt") or "") for e in examples]
        shared = _shared_prefix(prompts)
        note = f"Every prompt starts with “{_one_line(shared)}”: shown below without it. " if shared else ""
        self.note.setText(
            note + f"Click a “{title}” column to sort by it and see where a model goes wrong; "
            "hover a cell for its full text."
        )
        table = self.table
        table.setSortingEnabled(False)
        table.clear()
        metric = data.get("metric")
        pairs, kto = metric == "preference", metric == "kto"
        headers = [
            "#",
            "Prompt",
            *(["Chosen", "Rejected"] if pairs else ["Answer", "Label"] if kto else ["Reference"]),
        ]
        self.score_columns = {}
        scored = []  # (full label, has an answer column): a model without this score gets no column
        for name, label in zip(full, labels, strict=True):
            if (pairs or kto) and not any(key in e.get("models", {}).get(name, {}) for e in examples):
                continue  # a base model has no reward
            if not (pairs or kto):
                headers.append(f"Answer — {label}")
            self.score_columns[label] = len(headers)
            headers.append(f"{title} — {label}")
            scored.append((name, not (pairs or kto)))
        table.setColumnCount(len(headers))
        table.setHorizontalHeaderLabels(headers)
        table.setRowCount(len(examples))
        for r, example in enumerate(examples):
            prompt = prompts[r][len(shared) :] if shared else prompts[r]
            cells: list[QTableWidgetItem] = [
                SortItem(str(example.get("index", r) + 1), example.get("index", r)),
                _text_item(
                    prompt if example.get("prompt") is not None else "(plain text)", example.get("location")
                ),
                _text_item(str(example.get("reference") or "—")),
            ]
            if pairs:
                cells.append(_text_item(str(example.get("rejected") or "—")))
            elif kto:
                cells.append(_text_item(str(example.get("label") or "—")))
            for name, answered in scored:
                scores = example.get("models", {}).get(name, {})
                if answered:
                    cells.append(_text_item(str(scores.get("answer") or "")))
                cells.append(_score_item(key, scores))
            for c, item in enumerate(cells):
                table.setItem(r, c, item)
        table.setSortingEnabled(True)
        header = table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        table.resizeColumnsToContents()
        for c in range(1, len(headers)):
            table.setColumnWidth(c, min(table.columnWidth(c), 420 if c == 1 else 260))
        header.setStretchLastSection(False)
        header.setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)
        table.sortByColumn(0, Qt.SortOrder.AscendingOrder)

    def column_values(self, column: int) -> list[str]:
        return [self.table.item(r, column).text() for r in range(self.table.rowCount())]


def _text_item(text: str, where: str | None = None) -> QTableWidgetItem:
    item = QTableWidgetItem(_one_line(text))
    item.setToolTip(text + (f"\n\n{where}" if where else ""))
    return item


def _score_item(key: str, scores: dict[str, Any]) -> SortItem:
    value = scores.get(key)
    if key == "correct" and "gold" in scores:
        if scores.get("prediction") is None:
            item = SortItem("? no label", -1.0)
        else:
            item = SortItem(("✓ " if value else "✗ ") + str(scores["prediction"]), value)
        item.setToolTip(
            f"reference label: {scores['gold']} · label found in the answer: {scores.get('prediction')}"
        )
        return item
    digits = 4 if key == "loss" else 3
    item = SortItem(value_text(value, digits), value)
    item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
    if key == "margin" and value is not None:
        item.setToolTip(
            f"log p(chosen) {scores['logp_chosen']:.3f} − log p(rejected) {scores['logp_rejected']:.3f}"
            + (f"\nreward margin {scores['reward_margin']:.3f}" if "reward_margin" in scores else "")
        )
    elif key == "reward" and value is not None:
        item.setToolTip(f"labelled {scores.get('label')}; log p {scores['logp']:.3f}; reward {value:+.3f}")
    return item


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _shared_prefix(texts: list[str]) -> str:
    """The instruction every prompt repeats (cut at a word), if it is long enough to be worth hiding."""
    if len(texts) < 2:
        return ""
    first, last = min(texts), max(texts)
    n = 0
    while n < min(len(first), len(last)) and first[n] == last[n]:
        n += 1
    prefix = first[:n]
    cut = max(prefix.rfind("\n"), prefix.rfind(" "))
    prefix = prefix[: cut + 1] if cut >= 0 else ""
    return prefix if len(prefix) >= 24 and all(len(t) > len(prefix) for t in texts) else ""
