"""The Evaluate page's choices: which models, which examples, which metric — as one plain request.

The models come from the same :class:`SourcePicker` as the Chat and Export pages (runs, their
checkpoints, adapter folders), added to a list so several fine-tunes can be compared on the same
examples; "compare with base" adds the first one's base model (the same weights, adapter off). The
form holds no results and runs nothing: every edit emits ``changed`` and :meth:`EvalForm.request`
turns the widgets into an :class:`EvalRequest` of plain values, safe to hand to a worker.
"""

from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from lora_studio.core.evaluate import EvalOptions, EvaluationError
from lora_studio.core.paths import resource_path
from lora_studio.gui.widgets.forms import Card
from lora_studio.gui.widgets.sources import SourcePicker

REVIEWS_EVAL = resource_path("datasets", "reviews_eval.jsonl")
EVAL_SOURCES = {
    "run": "The run's held-out data (its eval file or eval split)",
    "reviews": "Reviews demo hold-out (45 labelled reviews, bundled)",
    "file": "A dataset file…",
}
METRICS = {
    "auto": "Automatic (chosen from the reference answers)",
    "accuracy": "Accuracy and macro-F1 (answers from a label set)",
    "rouge": "ROUGE-L, chrF and BLEU (free text)",
    "exact": "Exact match and token F1 (short answers)",
}


def spec_for(kind: str, path: str, base: str = "") -> Any:
    """A picker entry as a :class:`ModelSpec`; a checkpoint of a run keeps the run's settings and
    gets the run's name (``run@step``). ``base`` replaces the base model when given."""
    from lora_studio.core.evaluate import ModelSpec

    folder = Path(path)
    name = folder.name
    if kind == "run":
        spec = ModelSpec.from_run(folder)
    elif kind == "checkpoint" and name.startswith("checkpoint-") and name[11:].isdigit():
        spec = ModelSpec.from_run(folder.parent.parent, checkpoint=int(name[11:]))
    else:
        return ModelSpec.from_adapter(folder, model=base or None)
    return dataclasses.replace(spec, source=base) if base else spec


@dataclass
class EvalRequest:
    """Everything the form says, as plain values (no widgets): safe to hand to a worker."""

    adapters: list[tuple[str, str]]
    base: str = ""
    compare_base: bool = True
    eval_source: str = "run"  # "run" | "reviews" | "file"
    eval_path: str = ""
    options: EvalOptions = dataclasses.field(default_factory=EvalOptions)

    def models(self) -> list[Any]:
        from lora_studio.core.evaluate import ModelSpec

        specs = [spec_for(kind, path, self.base) for kind, path in self.adapters]
        if not specs:
            return [ModelSpec("base", source=self.base or "default")]
        if self.compare_base:
            specs.insert(0, specs[0].base_of())
        return specs

    def eval_set(self, models: list[Any], cancel: threading.Event | None = None) -> Any:
        from lora_studio.core.evaluate import load_eval_set
        from lora_studio.core.runs import RunFolder

        run_dir = next((s.run_dir for s in models if s.run_dir), None)
        run = RunFolder.open(run_dir) if run_dir else None
        if self.eval_source == "run":
            if run is None:
                raise EvaluationError(
                    "The run's held-out data needs a run among the models",
                    hint="add a run or checkpoint above, or choose the reviews demo or a dataset file",
                )
            return load_eval_set(run=run, cancel=cancel)
        if self.eval_source == "file" and not self.eval_path.strip():
            raise EvaluationError("No dataset file chosen", hint="choose one with Browse…")
        path = str(REVIEWS_EVAL) if self.eval_source == "reviews" else self.eval_path.strip()
        return load_eval_set(path, run=run, cancel=cancel)


def _entry_text(kind: str, path: str) -> str:
    folder = Path(path)
    if kind == "run":
        return f"Run {folder.name} — final adapter"
    if kind == "checkpoint":
        return f"Run {folder.parent.parent.name} — {folder.name.replace('-', ' ')}"
    return f"Adapter folder {path}"


class EvalForm(QWidget):
    """The Models card and the Evaluation set card, side by side; ``changed`` after every edit."""

    changed = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.running = False
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.setSpacing(12)
        row.addWidget(self._models_card(), 3)
        row.addWidget(self._data_card(), 2)
        self.picker.currentIndexChanged.connect(self._update_buttons)
        self._update_buttons()

    def _models_card(self) -> Card:
        card = Card("Models")
        form = QFormLayout()
        form.setContentsMargins(0, 0, 0, 0)
        self.base = QLineEdit()
        self.base.setPlaceholderText("The run's base model ('default' without a run)")
        self.base.setToolTip(
            "Leave empty to use the model each run trained on. Or 'default', a model folder, a .gguf "
            "file or a cached hub id: the adapters must fit it."
        )
        self.base.editingFinished.connect(self.changed)
        form.addRow("Base model", self.base)
        self.picker = SourcePicker(base=False)
        self.picker.setToolTip(
            "Runs, their checkpoints, or any adapter folder: each one chosen is added below."
        )
        self.picker.chosen.connect(self.add_adapter)
        add = QPushButton("Add")
        add.setToolTip("Add the entry shown to the models to evaluate")
        add.clicked.connect(lambda: self.add_adapter(self.picker.choice()))
        self.add_button = add
        row = QHBoxLayout()
        row.addWidget(self.picker, 1)
        row.addWidget(add)
        form.addRow("Fine-tunes", row)
        self.adapters = QListWidget()
        self.adapters.setObjectName("evalAdapters")
        self.adapters.setMaximumHeight(50)
        self.adapters.setToolTip("Evaluated in this order, each on the same examples.")
        self.remove_button = QPushButton("Remove")
        self.remove_button.setToolTip("Remove the selected fine-tune from the evaluation")
        self.remove_button.clicked.connect(self.remove_adapter)
        column = QVBoxLayout()
        column.addWidget(self.remove_button)
        column.addStretch(1)
        row = QHBoxLayout()
        row.addWidget(self.adapters, 1)
        row.addLayout(column)
        form.addRow("", row)
        card.body.addLayout(form)
        self.compare_base = QCheckBox("Compare with the base model (the same weights with the adapter off)")
        self.compare_base.setChecked(True)
        self.compare_base.toggled.connect(self.changed)
        card.add(self.compare_base)
        return card

    def _data_card(self) -> Card:
        card = Card("Evaluation set and metric")
        form = QFormLayout()
        form.setContentsMargins(0, 0, 0, 0)
        self.eval_source = QComboBox()
        for key, text in EVAL_SOURCES.items():
            self.eval_source.addItem(text, key)
        self.eval_source.currentIndexChanged.connect(self._source_changed)
        form.addRow("Examples", self.eval_source)
        self.eval_path = QLineEdit()
        self.eval_path.setPlaceholderText(
            "Any file the Data page accepts (.jsonl, .json, .csv, .parquet, .txt)"
        )
        self.eval_path.editingFinished.connect(self.changed)
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse)
        self.file_row = QWidget()
        row = QHBoxLayout(self.file_row)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.eval_path, 1)
        row.addWidget(browse)
        form.addRow("", self.file_row)
        self.metric_choice = QComboBox()
        for key, text in METRICS.items():
            self.metric_choice.addItem(text, key)
        self.metric_choice.setToolTip(
            "Eval loss and perplexity are always measured. A metric that does not fit the answers is "
            "explained in a note rather than given as a number."
        )
        self.metric_choice.currentIndexChanged.connect(self.changed)
        form.addRow("Metric", self.metric_choice)
        self.max_examples = QSpinBox()
        self.max_examples.setRange(0, 1_000_000)
        self.max_examples.setSpecialValueText("All")
        self.max_examples.setToolTip(
            "Evaluate a seeded sample of this many examples (faster, wider intervals)."
        )
        self.max_examples.valueChanged.connect(self.changed)
        self.batch_size = QSpinBox()
        self.batch_size.setRange(1, 256)
        self.batch_size.setValue(8)
        self.batch_size.setToolTip("Examples per forward pass and per generation batch: faster, more memory.")
        sizes = QHBoxLayout()
        sizes.addWidget(self.max_examples)
        sizes.addWidget(QLabel("Batch size"))
        sizes.addWidget(self.batch_size)
        form.addRow("Max examples", sizes)
        card.body.addLayout(form)
        self.check_text = QLabel()
        self.check_text.setObjectName("muted")
        self.check_text.setWordWrap(True)
        card.add(self.check_text)
        card.body.addStretch(1)
        self.file_row.setVisible(False)
        return card

    def refresh_sources(self, runs_dir: str | Path | None) -> None:
        self.picker.refresh(runs_dir)
        self._update_buttons()

    def chosen_adapters(self) -> list[tuple[str, str]]:
        return [
            tuple(self.adapters.item(i).data(Qt.ItemDataRole.UserRole)) for i in range(self.adapters.count())
        ]

    def add_adapter(self, choice: tuple[str, str]) -> None:
        kind, path = choice
        if kind not in ("run", "checkpoint", "folder") or not path or tuple(choice) in self.chosen_adapters():
            return
        item = QListWidgetItem(_entry_text(kind, path))
        item.setData(Qt.ItemDataRole.UserRole, (kind, path))
        item.setToolTip(path)
        self.adapters.addItem(item)
        self._update_buttons()
        self.changed.emit()

    def remove_adapter(self) -> None:
        for item in self.adapters.selectedItems():
            self.adapters.takeItem(self.adapters.row(item))
        self._update_buttons()
        self.changed.emit()

    def select_run(self, run_dir: str | Path) -> None:
        """Only this run (its final adapter, else its latest checkpoint), compared with its base on
        its own held-out data."""
        from lora_studio.core.runs import RunFolder

        folder = RunFolder(Path(run_dir))
        self.adapters.clear()
        latest = folder.latest_checkpoint()
        if (folder.adapter_dir / "adapter_config.json").is_file():
            self.add_adapter(("run", str(folder.path)))
        elif latest is not None:
            self.add_adapter(("checkpoint", str(latest[1])))
        self.base.clear()
        self.compare_base.setChecked(True)
        self.set_eval_source("run")

    def set_eval_source(self, kind: str, path: str = "") -> None:
        if path:
            self.eval_path.setText(path)
        self.eval_source.setCurrentIndex(list(EVAL_SOURCES).index(kind))
        self.changed.emit()

    def _source_changed(self) -> None:
        self.file_row.setVisible(self.eval_source.currentData() == "file")
        self.changed.emit()

    def _browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Choose the evaluation data", self.eval_path.text())
        if path:
            self.eval_path.setText(path)
            self.changed.emit()

    def request(self) -> EvalRequest:
        return EvalRequest(
            adapters=self.chosen_adapters(),
            base=self.base.text().strip(),
            compare_base=self.compare_base.isChecked(),
            eval_source=self.eval_source.currentData(),
            eval_path=self.eval_path.text(),
            options=EvalOptions(
                metric=self.metric_choice.currentData(),
                max_examples=self.max_examples.value() or None,
                batch_size=self.batch_size.value(),
            ),
        )

    def set_running(self, running: bool) -> None:
        self.running = running
        self._update_buttons()

    def _update_buttons(self) -> None:
        running = self.running
        for widget in (
            self.base, self.picker, self.adapters, self.remove_button, self.eval_source, self.file_row,
            self.metric_choice, self.max_examples, self.batch_size,
        ):  # fmt: skip
            widget.setEnabled(not running)
        self.add_button.setEnabled(not running and self.picker.choice()[0] in ("run", "checkpoint", "folder"))
        self.compare_base.setEnabled(not running and self.adapters.count() > 0)
