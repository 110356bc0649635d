"""The Runs page's view of the selected runs: their curves overlaid, and what differs between them.

One run or several: the loss (and eval loss) of each run on one step axis — or on the tokens seen,
which is fairer when runs differ in batch size or sequence length — beside each run's memory, then a
table of only the settings that differ and a table of the "after" sample answers, prompt by run.
When a selected run is a preference run (DPO, KTO, ORPO, SimPO), the first plot can show its reward
margin, preference accuracy, chosen or rejected reward, or KL instead of the loss, compared the same
way (training curve solid, held-out points dashed).
Metrics are read by :class:`MetricsTail`, which reads only the bytes added since its last read, so
following a long run never re-reads its whole file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QGridLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QTableWidget,
    QTableWidgetItem,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from lora_studio.gui import theme as th
from lora_studio.gui.widgets.plots import LivePlot

GIB = 1024**3
#: One colour per compared run (the plot series colours, in an order that keeps neighbours apart).
RUN_COLOURS = [
    th.SERIES[k]
    for k in ("loss", "eval_loss", "learning_rate", "grad_norm", "tokens_per_s", "mem_peak", "mem_reserved")
]

#: What the first plot can compare: (metrics key, title, y axis, legend word). Eval rows carry the
#: same keys prefixed ``eval_``. Only "loss" is offered until a selected run has the others.
METRICS = [
    ("loss", "Loss", "Loss", "loss"),
    ("reward_margin", "Reward margin", "Chosen − rejected reward", "margin"),
    ("reward_accuracy", "Preference accuracy", "Chosen ranked first (%)", "accuracy"),
    ("reward_chosen", "Reward of the chosen answers", "Reward", "chosen"),
    ("reward_rejected", "Reward of the rejected answers", "Reward", "rejected"),
    ("kl", "KL to the reference (KTO)", "KL estimate (nats)", "KL"),
]
_METRIC = {m[0]: m for m in METRICS}


class MetricsTail:
    """Whole new lines of a growing ``metrics.jsonl`` since the last read (a torn tail waits)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.records: list[dict[str, Any]] = []

    def read_new(self) -> int:
        """Read what was appended; returns how many records were added. Safe off the GUI thread."""
        try:
            with open(self.path, "rb") as handle:
                handle.seek(self.offset)
                chunk = handle.read()
        except FileNotFoundError:
            return 0
        end = chunk.rfind(b"\n")
        if end < 0:
            return 0
        self.offset += end + 1
        added = 0
        for line in chunk[: end + 1].splitlines():
            try:
                value = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue
            if isinstance(value, dict):
                self.records.append(value)
                added += 1
        return added


def _reset_plot(plot: LivePlot) -> None:
    for series in plot.series.values():
        plot.getPlotItem().removeItem(series.item)
        if series.in_legend:
            plot.legend.removeItem(series.item)
    plot.series.clear()
    plot.enableAutoRange()


def _scaled(value: Any, scale: float) -> float | None:
    return value * scale if isinstance(value, (int, float)) else None


def _peak(mem: Any) -> float | None:
    if not isinstance(mem, dict):
        return None
    value = mem.get("cuda_peak", mem.get("cuda_allocated", mem.get("rss")))
    return value / GIB if isinstance(value, (int, float)) else None


class RunCompare(QWidget):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.loss = LivePlot("Loss", "Loss")
        self.memory = LivePlot("Memory", "Peak memory (GB)", legend_at_bottom=True)
        self.memory.zero_based = True
        self.loss.set_empty_text("Select runs to see their loss (Ctrl-click to compare several)")
        self.memory.set_empty_text("Memory of each selected run")
        self.tokens_axis = QCheckBox("Tokens on the x axis")
        self.tokens_axis.setToolTip("Plot against tokens seen instead of steps (fairer across batch sizes).")
        self.tokens_axis.toggled.connect(lambda _on: self._redraw())
        self.metric_choice = QComboBox()
        self.metric_choice.setObjectName("compareMetric")
        self.metric_choice.setToolTip(
            "What the first plot compares: the loss, or a preference run's rewards."
        )
        self.metric_choice.addItem("Loss", "loss")
        self.metric_choice.currentIndexChanged.connect(self._metric_chosen)
        #: The metric last chosen: kept while a selection without it is shown, back when one has it.
        self.wanted = "loss"
        self.metric_label = QLabel("Compare")
        self.metric_label.setBuddy(self.metric_choice)
        self.diff = QTableWidget()
        self.diff.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.samples = QTableWidget()
        self.samples.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.samples.setWordWrap(True)
        self.tabs = QTabWidget()
        self.tabs.addTab(self.diff, "Settings that differ")
        self.tabs.addTab(self.samples, "Sample answers (after training)")
        plots = QGridLayout()
        plots.setSpacing(8)
        plots.addWidget(self.loss, 0, 0)
        plots.addWidget(self.memory, 0, 1)
        plots.setColumnStretch(0, 3)
        plots.setColumnStretch(1, 2)
        top = QHBoxLayout()
        top.addWidget(self.metric_label)
        top.addWidget(self.metric_choice)
        top.addStretch(1)
        top.addWidget(self.tokens_axis)
        column = QVBoxLayout(self)
        column.setContentsMargins(0, 0, 0, 0)
        column.addLayout(top)
        column.addLayout(plots, 3)
        column.addWidget(self.tabs, 2)
        self.names: list[str] = []
        self.records: dict[str, list[dict[str, Any]]] = {}
        self._update_metrics()

    # -- curves -------------------------------------------------------------------------------

    def set_runs(self, names: list[str], records: dict[str, list[dict[str, Any]]]) -> None:
        """Draw these runs (run id -> metrics records), replacing what was shown."""
        self.names, self.records = list(names), dict(records)
        self._update_metrics()
        self._redraw()

    def _update_metrics(self) -> None:
        """Offer the preference metrics the selected runs have (the loss always)."""
        present = {k for records in self.records.values() for r in records for k in r}
        keys = ["loss", *(m[0] for m in METRICS[1:] if m[0] in present)]
        if keys != [self.metric_choice.itemData(i) for i in range(self.metric_choice.count())]:
            self.metric_choice.blockSignals(True)
            self.metric_choice.clear()
            for key in keys:
                self.metric_choice.addItem(_METRIC[key][1], key)
            self.metric_choice.setCurrentIndex(max(0, self.metric_choice.findData(self.wanted)))
            self.metric_choice.blockSignals(False)
        shown = len(keys) > 1  # SFT runs alone: the page looks as it always did
        self.metric_choice.setVisible(shown)
        self.metric_label.setVisible(shown)

    def _metric_chosen(self, _index: int) -> None:
        self.wanted = self.metric_choice.currentData() or "loss"
        self._redraw()

    def set_metric(self, key: str) -> bool:
        """Compare this metric in the first plot; False if no selected run has it."""
        index = self.metric_choice.findData(key)
        if index >= 0:
            self.metric_choice.setCurrentIndex(index)
        return index >= 0

    def _redraw(self) -> None:
        for plot in (self.loss, self.memory):
            _reset_plot(plot)
        x_key = "tokens_seen" if self.tokens_axis.isChecked() else "step"
        for plot in (self.loss, self.memory):
            plot.setLabel("bottom", "Tokens seen" if x_key == "tokens_seen" else "Step")
        key, title, axis, word = _METRIC[self.metric_choice.currentData() or "loss"]
        self.loss.set_title(title)
        self.loss.setLabel("left", axis)
        self.loss.fixed_y = (0.0, 100.0) if key == "reward_accuracy" else None
        many = len(self.names) > 1
        labels = short_names(self.names)
        for i, name in enumerate(self.names):
            colour = RUN_COLOURS[i % len(RUN_COLOURS)]
            label = labels[i] if many else ""
            self.loss.add_series(f"{name}:loss", f"{label} {word}".strip(), colour)
            self.loss.add_series(
                f"{name}:eval", f"{label} eval {word}".strip(), colour, dashed=True, width=1.6
            )
            self.memory.add_series(f"{name}:mem", label or "Peak memory", colour)
            self._append(name, self.records.get(name, []), x_key)
        for plot in (self.loss, self.memory):
            plot.refresh()
            plot.empty.setVisible(not any(s.buffer.n for s in plot.series.values()))

    def _append(self, name: str, records: list[dict[str, Any]], x_key: str) -> None:
        last_x = 0.0
        key = self.metric_choice.currentData() or "loss"
        scale = 100.0 if key == "reward_accuracy" else 1.0
        for r in records:
            if "loss" in r:
                last_x = float(r.get(x_key) or r.get("step") or 0)
                self.loss.append(f"{name}:loss", last_x, _scaled(r.get(key), scale))
                self.memory.append(f"{name}:mem", last_x, _peak(r.get("mem")))
            elif "eval_loss" in r:
                # eval records carry only the step; on the tokens axis they sit at the last train point
                x = float(r.get("step", 0)) if x_key == "step" else last_x
                self.loss.append(f"{name}:eval", x, _scaled(r.get("eval_" + key), scale))

    def add_records(self, name: str, new: list[dict[str, Any]]) -> None:
        """Follow: points appended to a shown run's metrics since the last read."""
        if name not in self.names or not new:
            return
        self.records.setdefault(name, []).extend(new)
        if self.metric_choice.count() == 1 and any(m[0] in r for r in new for m in METRICS[1:]):
            self._update_metrics()  # a followed run reported its first rewards
        x_key = "tokens_seen" if self.tokens_axis.isChecked() else "step"
        self._append(name, new, x_key)
        self.loss.refresh()
        self.memory.refresh()

    def points(self, name: str) -> int:
        key = f"{name}:loss"
        return self.loss.count(key) if key in self.loss.series else 0

    # -- tables -------------------------------------------------------------------------------

    def set_diff(self, names: list[str], diff: dict[str, list[Any]]) -> None:
        table = self.diff
        table.clear()
        table.setColumnCount(len(names))
        table.setHorizontalHeaderLabels(short_names(names))
        table.setRowCount(len(diff))
        table.setVerticalHeaderLabels(list(diff))
        for row, values in enumerate(diff.values()):
            for col, value in enumerate(values):
                text = (
                    "—"
                    if value is None
                    else (json.dumps(value) if isinstance(value, (list, dict)) else str(value))
                )
                table.setItem(row, col, QTableWidgetItem(text))
        table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        # one run: all its settings; several: only those that differ
        self.tabs.setTabText(
            self.tabs.indexOf(table), "Settings" if len(names) < 2 else "Settings that differ"
        )

    def set_samples(self, names: list[str], samples: dict[str, list[dict[str, Any]]]) -> None:
        answers: dict[str, dict[str, str]] = {}
        for name in names:
            for record in samples.get(name, []):
                if record.get("stage") == "after":
                    answers.setdefault(str(record.get("prompt", "")), {})[name] = str(
                        record.get("answer", "")
                    )
        table = self.samples
        table.clear()
        table.setColumnCount(len(names))
        table.setHorizontalHeaderLabels(short_names(names))
        table.setRowCount(len(answers))
        table.setVerticalHeaderLabels([p if len(p) <= 40 else p[:39] + "…" for p in answers])
        for row, (prompt, by_run) in enumerate(answers.items()):
            for col, name in enumerate(names):
                item = QTableWidgetItem(by_run.get(name, "—"))
                item.setToolTip(prompt)
                table.setItem(row, col, item)
        table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        table.resizeRowsToContents()

    def apply_theme(self, theme: Any) -> None:
        self.loss.apply_theme(theme)
        self.memory.apply_theme(theme)


def _short(run_id: str) -> str:
    """'20260101-120000-lr-high' -> 'lr-high' (the timestamp is in the table)."""
    parts = run_id.split("-", 2)
    return parts[2] if len(parts) == 3 and parts[0].isdigit() and parts[1].isdigit() else run_id


def short_names(run_ids: list[str]) -> list[str]:
    """Legend and column names: the name part alone, unless two runs share it — then with the time
    each started ('run 14:02:11'), so the lines and columns can always be told apart."""
    shorts = [_short(r) for r in run_ids]
    counts = {s: shorts.count(s) for s in shorts}
    out = []
    for run_id, short in zip(run_ids, shorts, strict=True):
        parts = run_id.split("-", 2)
        if counts[short] > 1 and len(parts) == 3 and len(parts[1]) == 6 and parts[1].isdigit():
            time = parts[1]
            short = f"{short} {time[:2]}:{time[2:4]}:{time[4:]}"
        out.append(short)
    return out if len(set(out)) == len(out) else list(run_ids)
