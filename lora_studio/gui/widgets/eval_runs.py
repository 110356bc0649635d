"""The Runs page's list of saved evaluations: what each selected run scored, and against what.

One row per ``eval/<stamp>.json`` of the selected runs, newest first: when, which eval set, the
headline numbers of the run's own model, and its difference from the base model when the
evaluation compared with it. The files are read in the background each time the selection changes
or the list comes into view (an evaluation may have been saved meanwhile); double-clicking a row
asks to open that evaluation in full on the Evaluate page.
"""

from __future__ import annotations

import threading
from datetime import datetime
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHeaderView,
    QLabel,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from lora_studio.gui.widgets.eval_views import (
    CELL_WORDS,
    MAIN_METRIC,
    difference_text,
    model_labels,
    value_text,
    verdict,
)
from lora_studio.gui.workers import BackgroundTask

COLUMNS = ["Date", "Run", "Eval set", "Examples", "Results", "vs base"]


def read_evaluations(paths: dict[str, Path], _cancel: threading.Event | None = None) -> list[dict[str, Any]]:
    """Every saved evaluation of these runs (run id → folder), newest first, each with its ``run_id``."""
    from lora_studio.core.evaluate import list_evaluations

    found = [{**e, "run_id": run_id} for run_id, path in paths.items() for e in list_evaluations(path)]
    return sorted(found, key=lambda e: e.get("created_at") or 0, reverse=True)


def _own_entry(evaluation: dict[str, Any]) -> int:
    """Index of the evaluated run's own model (its adapter switched on) in the saved models."""
    folder = str(Path(evaluation["path"]).parent.parent)
    for k, entry in enumerate(evaluation.get("models", [])):
        model = entry.get("model", {})
        if model.get("run_dir") == folder and model.get("use_adapter", True):
            return k
    return len(evaluation.get("models", [])) - 1


def summary_cells(evaluation: dict[str, Any]) -> tuple[str, str]:
    """(results, vs base) for one saved evaluation, from the run's own model's point of view."""
    rows = {row["metric"]: row for row in evaluation.get("comparison", [])}
    own = _own_entry(evaluation)
    models = evaluation.get("models", [])
    if not models or own < 0:
        return "—", ""
    label = models[own]["model"]["label"]
    main = MAIN_METRIC.get(evaluation.get("metric"), "eval_loss")
    keys = [main] + (["eval_loss"] if main != "eval_loss" else [])
    results = " · ".join(
        f"{rows[k]['title']} {value_text(rows[k]['values'][own], rows[k]['digits'])}"
        for k in keys
        if k in rows
    )
    row = rows.get(main)
    base = evaluation.get("baseline")
    diff = next(
        (d for d in (row or {}).get("differences", []) if d["model"] == label and "estimate" in d), None
    )
    if row is None or diff is None or base == label:
        return results, ""
    kind = verdict(diff, row["higher_is_better"])
    short = dict(zip((e["model"]["label"] for e in models), model_labels(evaluation), strict=True))
    return (
        results,
        f"{row['title']} {difference_text(diff, row['digits'])} vs {short.get(base, base)}: {CELL_WORDS[kind]}",
    )


class EvaluationList(QWidget):
    """Saved evaluations of the selected runs; ``open_requested(evaluation)`` on double-click."""

    open_requested = Signal(object)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.paths: dict[str, Path] = {}
        self.evaluations: list[dict[str, Any]] = []
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setObjectName("runEvaluations")
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.verticalHeader().hide()
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.cellDoubleClicked.connect(lambda row, _col: self.open_row(row))
        self.empty = QLabel()
        self.empty.setObjectName("muted")
        self.empty.setWordWrap(True)
        column = QVBoxLayout(self)
        column.setContentsMargins(6, 6, 6, 6)
        column.addWidget(self.empty)
        column.addWidget(self.table, 1)
        self.reader = BackgroundTask(self)
        self._show([])

    def show_runs(self, paths: dict[str, Path]) -> None:
        """List the evaluations of these runs (run id → folder), read in the background."""
        self.paths = dict(paths)
        self.reload()

    def reload(self) -> None:
        paths = dict(self.paths)
        if not paths:
            self._show([])
            return
        self.reader.request(lambda cancel: read_evaluations(paths, cancel), self._show)

    def showEvent(self, event: Any) -> None:  # an evaluation may have been saved while hidden
        super().showEvent(event)
        self.reload()

    def _show(self, evaluations: list[dict[str, Any]]) -> None:
        self.evaluations = evaluations
        many = len(self.paths) > 1
        self.table.setColumnHidden(COLUMNS.index("Run"), not many)
        self.table.setRowCount(len(evaluations))
        for r, evaluation in enumerate(evaluations):
            created = evaluation.get("created_at")
            eval_set = evaluation.get("eval_set", {})
            results, versus = summary_cells(evaluation)
            cells = [
                datetime.fromtimestamp(created).strftime("%Y-%m-%d %H:%M") if created else "—",
                evaluation["run_id"].split("-", 2)[-1],
                str(eval_set.get("name", "?")),
                str(eval_set.get("examples", "?")),
                results,
                versus,
            ]
            for c, text in enumerate(cells):
                item = QTableWidgetItem(text)
                item.setToolTip(f"{evaluation['path']}\nDouble-click to open it on the Evaluate page.")
                item.setData(Qt.ItemDataRole.UserRole, r)
                self.table.setItem(r, c, item)
        self.table.setVisible(bool(evaluations))
        if self.paths and not evaluations:
            self.empty.setText(
                "No saved evaluations for the selected run yet: choose Evaluate… to measure it."
            )
        elif not self.paths:
            self.empty.setText("Select a run to see its saved evaluations.")
        else:
            self.empty.setText("Saved evaluations, newest first. Double-click one to see it in full.")

    def open_row(self, row: int) -> None:
        if 0 <= row < len(self.evaluations):
            self.open_requested.emit(self.evaluations[row])
