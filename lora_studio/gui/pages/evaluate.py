"""Evaluate page: did the fine-tune change what it should? Base vs tuned, run vs run, on held-out data.

The user picks the models (a base model and any number of runs, checkpoints or adapter folders,
from the same picker as Chat and Export, plus "compare with base": the same weights with the adapter
off), the evaluation set (the run's held-out data, the bundled reviews hold-out, or any dataset
file) and the metric. Each choice is checked at once in a background task — the eval set is read,
its located errors go to the message bar, and the metric that will be used is shown — so a bad file
is known before any model loads. Evaluate runs ``core.evaluate`` in a worker (progress per example,
Cancel between batches); the core saves the results into every evaluated run's ``eval/`` folder,
which the Runs page lists. A saved evaluation can be shown again without re-running it.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, Signal, Slot
from PySide6.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from lora_studio.core.errors import CancelledError
from lora_studio.core.evaluate import EvaluationError, TimeLeft
from lora_studio.core.evaluate.metrics import PREFERENCE_TASKS, TASK_METRICS
from lora_studio.core.train import format_duration
from lora_studio.gui import workers
from lora_studio.gui.pages import Page
from lora_studio.gui.widgets.eval_examples import ExamplesView
from lora_studio.gui.widgets.eval_form import EvalForm, EvalRequest
from lora_studio.gui.widgets.eval_views import ComparisonView, ConfusionView
from lora_studio.gui.widgets.forms import Card

STAGES = {
    "loading model": "loading the model",
    "loss": "measuring the loss",
    "reference": "measuring the base (adapter off) as the reference",
    "generating": "answering",
    "scoring": "scoring",
    "comparing": "comparing (bootstrap intervals)",
    "saving": "saving the results",
}


# -- checking and running (plain values in, plain values out) ------------------------------------


@dataclass
class EvalPreview:
    """What an evaluation would do, known before any model loads."""

    labels: list[str]
    examples: int
    name: str
    metric: str | None
    reason: str
    notes: list[str]
    loads: int = 1  # distinct models loaded (a base compared with its fine-tune is one)


def preview(request: EvalRequest, cancel: threading.Event) -> EvalPreview:
    """Check the models and read the eval set (a background task: files only, no weights). The
    count is what will be evaluated: the seeded sample when Max examples is set."""
    from lora_studio.core.evaluate import sample_examples, task_metric

    request.options.check()
    models = request.models()
    eval_set = request.eval_set(models, cancel)
    if not eval_set.items:
        raise EvaluationError(f"{eval_set.source}: no examples to evaluate", hint="choose another eval set")
    eval_set = sample_examples(eval_set, request.options)
    metric, reason, notes = task_metric(eval_set, request.options)
    loads = len({s.load_key for s in models})
    return EvalPreview(
        [s.label for s in models], len(eval_set.items), eval_set.name, metric, reason, notes, loads
    )


class EvaluateWorker(workers.Worker):
    """Runs one evaluation; its progress events are queued signals, ``cancel`` stops between batches."""

    progress = Signal(object)  # core.evaluate.EvalProgress

    def __init__(self, request: EvalRequest) -> None:
        super().__init__(lambda: self._evaluate())
        self.request = request
        self.cancel = threading.Event()

    def _evaluate(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        from lora_studio.core.evaluate import evaluate
        from lora_studio.gui.jobs import ensure_libraries

        ensure_libraries()
        models = self.request.models()
        eval_set = self.request.eval_set(models, self.cancel)
        report = evaluate(
            models,
            eval_set,
            self.request.options,
            progress=lambda *a: self.send(self.progress, *a),
            cancel=self.cancel,
        )
        return report.to_dict(), report.example_rows()


def progress_fraction(event: Any, has_task: bool) -> float:
    """Overall share done: each model's loss pass counts a fifth, its answers the rest."""
    share = 0.0
    if event.stage in ("loss", "reference") and event.total:
        share = (0.2 if has_task else 1.0) * event.done / event.total
    elif event.stage == "generating" and event.total:
        share = 0.2 + 0.8 * event.done / event.total
    elif event.stage == "scoring":
        share = 1.0
    elif event.stage in ("comparing", "saving"):
        return 1.0
    return min(1.0, (event.model_index + share) / max(1, event.models))


def progress_text(event: Any) -> str:
    """'reviews: answering — example 12 of 45 · model 2 of 2'."""
    stage = STAGES.get(event.stage, event.stage)
    head = f"{event.model}: " if event.model else ""
    count = (
        f" — example {event.done} of {event.total}"
        if event.stage in ("loss", "reference", "generating")
        else "…"
    )
    tail = f" · model {event.model_index + 1} of {event.models}" if event.models > 1 and event.model else ""
    return f"{head}{stage}{count}{tail}"


# -- the page -------------------------------------------------------------------------------------


class EvaluatePage(Page):
    key = "evaluate"
    title = "Evaluate"
    summary = "Measure what a fine-tune changed on held-out data: base vs tuned, or runs side by side, with confidence intervals."
    icon = "evaluate"

    def __init__(self, state: Any, runs: Any, parent: QWidget | None = None) -> None:
        super().__init__(state, runs, parent)
        self.worker: EvaluateWorker | None = None
        self.ready: EvalPreview | None = None
        self.result: tuple[dict[str, Any], list[dict[str, Any]]] | None = None
        self._started = 0.0
        self._time_left: TimeLeft | None = None
        self._has_task = True
        self._prefilled = False
        self.checker = workers.BackgroundTask(self, delay_ms=250)
        self.form = EvalForm()
        self.form.changed.connect(self.recheck)
        self.content.addWidget(self.form)
        self.content.addLayout(self._action_row())
        self.content.addWidget(self._results_card(), 1)
        self.refresh_sources()
        self._show_empty()
        self._update_buttons()
        self.recheck()

    # -- layout -----------------------------------------------------------------------------------

    def _action_row(self) -> QHBoxLayout:
        self.start_button = QPushButton("Evaluate")
        self.start_button.setObjectName("primary")
        self.start_button.clicked.connect(self.start)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Stop after the current batch (nothing is saved)")
        self.cancel_button.clicked.connect(self.cancel)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setValue(0)
        self.progress.setTextVisible(False)
        self.progress.setVisible(False)  # shown from the first Evaluate on
        self.progress_label = QLabel("")
        self.progress_label.setObjectName("muted")
        row = QHBoxLayout()
        row.addWidget(self.start_button)
        row.addWidget(self.cancel_button)
        row.addWidget(self.progress, 1)
        row.addWidget(self.progress_label, 2)
        return row

    def _results_card(self) -> Card:
        card = Card("Results")
        self.about = QLabel()
        self.about.setObjectName("muted")
        self.about.setWordWrap(True)
        self.about.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        card.add(self.about)
        self.comparison = ComparisonView()
        self.confusion = ConfusionView()
        self.examples = ExamplesView()
        summary = QWidget()
        column = QVBoxLayout(summary)
        column.setContentsMargins(10, 8, 10, 8)
        column.setSpacing(12)
        column.setSizeConstraint(QVBoxLayout.SizeConstraint.SetMinimumSize)  # scroll, never squeeze
        column.addWidget(self.comparison)
        column.addWidget(self.confusion)
        column.addStretch(1)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setWidget(summary)
        self.tabs = QTabWidget()
        self.tabs.addTab(scroll, "Comparison")
        self.tabs.addTab(self.examples, "Examples")
        card.add(self.tabs, 1)
        self.empty = QLabel(
            "No results yet.\n\nChoose the fine-tunes and the examples above, then Evaluate. Eval loss and "
            "perplexity are always measured, plus accuracy and macro-F1, ROUGE-L and chrF, or exact match "
            "depending on the answers — and each fine-tune's difference from the base with its "
            "confidence interval. Preference runs (DPO, ORPO, SimPO, KTO) are measured on their held-out "
            "pairs: how often the chosen answer is preferred, the margin, and the fine-tune's reward "
            "accuracy.\nSaved evaluations of a run open from the Runs page."
        )
        self.empty.setObjectName("muted")
        self.empty.setWordWrap(True)
        self.empty.setAlignment(Qt.AlignmentFlag.AlignCenter)
        card.add(self.empty, 1)
        self.notes = QLabel()
        self.notes.setObjectName("muted")
        self.notes.setWordWrap(True)
        card.add(self.notes)
        return card

    # -- choices ----------------------------------------------------------------------------------

    def page_shown(self) -> None:
        self.refresh_sources()
        form = self.form
        if not self._prefilled and not form.chosen_adapters() and self.worker is None:
            self._prefilled = True
            kind, path = form.picker.choice()
            if kind == "run":  # the newest run: the likeliest thing to measure after training
                form.add_adapter((kind, path))

    def refresh_sources(self) -> None:
        self.form.refresh_sources(self.state.config.output.runs_dir)

    def evaluate_run(self, run_dir: str | Path) -> None:
        """Preselect a run compared with its base on its own held-out data (the Runs page's
        "Evaluate…"); the user then checks the choices and presses Evaluate."""
        self._prefilled = True
        self.refresh_sources()
        self.form.select_run(run_dir)
        if not self.form.chosen_adapters():
            self.messages.show_message(
                "warning",
                "Nothing to evaluate in this run yet",
                f"{Path(run_dir).name} has no adapter and no checkpoint.",
                "wait for its first checkpoint, or choose another run",
            )

    def recheck(self, *_args: Any) -> None:
        """Check the choices in the background: models resolvable, eval set readable, metric known."""
        if self.worker is not None:
            return
        self.ready = None
        self._update_buttons()
        request = self.form.request()
        if request.eval_source == "run" and not request.adapters:
            self.checker.cancel_pending()
            self.form.check_text.setText(
                "Add a run above to evaluate on its held-out data, or choose the reviews demo or a file."
            )
            return
        self.form.check_text.setText("Checking…")
        self.checker.request(lambda cancel: preview(request, cancel), self._checked, self._check_failed)

    def _checked(self, found: EvalPreview) -> None:
        self.ready = found
        if self.messages.kind == "error":
            self.messages.clear()
        metric = found.metric or "loss only"
        unit = {"preference": "pairs", "kto": "labelled answers"}.get(found.metric or "", "examples")
        text = f"{found.examples} {unit} from {found.name} · {metric} — {found.reason}"
        models = ", ".join(found.labels)
        self.form.check_text.setText(
            f"{text}\nModels: {models}" + "".join(f"\nNote: {n}" for n in found.notes)
        )
        self._update_buttons()

    def _check_failed(self, error: Exception) -> None:
        self.ready = None
        self.form.check_text.setText("Cannot evaluate yet: see the message above.")
        self.messages.show_error(error)
        self._update_buttons()

    # -- running ----------------------------------------------------------------------------------

    def start(self) -> None:
        if self.worker is not None or self.ready is None:
            return
        self.messages.clear()
        request = self.form.request()
        self._has_task = self.ready.metric in TASK_METRICS  # answers are generated
        self._started = time.monotonic()
        ready = self.ready
        self._time_left = TimeLeft(len(ready.labels), ready.examples, self._has_task, ready.loads)
        self.progress.setValue(0)
        self.progress.setVisible(True)
        self.progress_label.setText("Starting…")
        worker = EvaluateWorker(request)
        worker.progress.connect(self._on_progress)
        self.worker = worker
        self._update_buttons()
        workers.start(worker, on_returned=self._finished, on_errored=self._failed, on_finished=self._ended)

    def cancel(self) -> None:
        if self.worker is not None:
            self.worker.cancel.set()
            self.progress_label.setText("Cancelling after the current batch…")

    @Slot(object)
    def _on_progress(self, event: Any) -> None:
        if self.worker is None or self.worker.cancel.is_set():
            return
        fraction = progress_fraction(event, self._has_task)
        self.progress.setValue(round(1000 * fraction))
        text = progress_text(event)
        left = None
        if self._time_left is not None:  # from each pass's measured speed, never the load's time
            self._time_left.update(event, time.monotonic())
            left = self._time_left.seconds()
        if left is not None and left >= 1 and fraction < 1:
            text += f" · about {format_duration(left)} left"
        self.progress_label.setText(text)

    def _finished(self, result: tuple[dict[str, Any], list[dict[str, Any]]]) -> None:
        self.progress.setValue(self.progress.maximum())
        data, examples = result
        seconds = time.monotonic() - self._started
        self.progress_label.setText(f"Done in {format_duration(seconds)}.")
        self.show_results(data, examples)

    def _failed(self, error: Exception) -> None:
        self.progress.setValue(0)
        if isinstance(error, CancelledError):
            self.progress_label.setText("Cancelled.")
            self.messages.show_message("info", "Evaluation cancelled", "Nothing was saved.")
            return
        self.progress_label.setText("Failed: see the message above.")
        self.messages.show_error(error)

    def _ended(self) -> None:
        self.worker = None
        self._update_buttons()

    # -- results ----------------------------------------------------------------------------------

    def show_saved(self, evaluation: dict[str, Any]) -> None:
        """Show an evaluation read back from a run's ``eval/`` folder (from :func:`list_evaluations`)."""
        from lora_studio.core.evaluate import load_examples

        self.show_results(evaluation, load_examples(evaluation))
        self.progress.setVisible(False)
        self.progress_label.setText("Showing a saved evaluation: nothing was re-run.")

    def show_results(self, data: dict[str, Any], examples: list[dict[str, Any]]) -> None:
        self.result = (data, examples)
        self.comparison.show_evaluation(data)
        self.confusion.show_evaluation(data)
        self.confusion.setVisible(self.confusion.has_matrix())
        self.examples.show_evaluation(data, examples)
        self.tabs.setVisible(True)
        self.empty.setVisible(False)
        self.about.setVisible(True)
        eval_set = data.get("eval_set", {})
        when = datetime.fromtimestamp(data.get("created_at") or time.time()).strftime("%Y-%m-%d %H:%M")
        where = data.get("saved") or ([data["path"]] if data.get("path") else [])
        saved = (
            "Saved in " + ", ".join(where)
            if where
            else "Not saved: no run folder among the models (results are saved into the runs evaluated)."
        )
        unit = {"pairs": "pairs", "labels": "labelled answers"}.get(eval_set.get("kind", "sft"), "examples")
        self.about.setText(
            f"{eval_set.get('examples', '?')} {unit} from {eval_set.get('name', '?')} · evaluated {when} · "
            f"metric: {data.get('metric') or 'loss only'} ({data.get('metric_reason', '')})\n{saved}"
        )
        notes = list(data.get("notes", []))
        if data.get("metric") not in (*PREFERENCE_TASKS, "accuracy"):
            notes.append("No confusion matrix: it applies to classification (answers from a label set).")
        self.notes.setText("\n".join(f"Note: {n}" for n in notes))
        self.notes.setVisible(bool(notes))

    def _show_empty(self) -> None:
        self.about.setVisible(False)
        self.tabs.setVisible(False)
        self.notes.setVisible(False)

    def _update_buttons(self) -> None:
        running = self.worker is not None
        self.start_button.setEnabled(not running and self.ready is not None)
        self.cancel_button.setEnabled(running)
        self.form.set_running(running)

    def apply_theme(self, theme: Any) -> None:
        self.comparison.apply_theme(theme)
        self.confusion.apply_theme(theme)


PAGE = EvaluatePage
