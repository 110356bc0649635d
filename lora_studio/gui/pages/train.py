"""Train page: the hyperparameters, Start / Pause / Stop, and the run as it happens.

Start validates the whole configuration first (every problem shown inline, under its field, and
nothing started), and refuses data that does not fit the chosen method (pairs under SFT, plain
conversations under DPO) with the fix. The run itself belongs to the window's
:class:`RunController`; this page draws its events: live plots (with the rewards of a preference
run), progress with an ETA, the log and the sample answers. A finished run can be shown again from
its folder (:meth:`TrainPage.show_run`) with the same widgets.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, QTimer
from PySide6.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QSplitter,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from lora_studio.core.errors import LoraStudioError
from lora_studio.core.runs import RunFolder
from lora_studio.core.train import events as ev
from lora_studio.core.train import format_duration
from lora_studio.gui.pages import Page
from lora_studio.gui.pages.model import scroll
from lora_studio.gui.pages.train_form import build_form
from lora_studio.gui.pages.train_method import NAMES, MethodCard
from lora_studio.gui.widgets.forms import Card
from lora_studio.gui.widgets.log_view import LogView
from lora_studio.gui.widgets.samples_view import SamplesView

START_KEYS = "Ctrl+Return"
PAUSE_KEYS = "Ctrl+Shift+P"
STOP_KEYS = "Ctrl+Shift+S"
FIX_TITLE = "Fix these settings before starting"
MISMATCH_TITLE = "The data does not fit the method"


def preference_summary(values: dict[str, float]) -> str:
    """' Reward margin 0.18; chosen ranked first in 94% of pairs.' from a preference step ('' for SFT)."""
    parts = []
    if values.get("reward_margin") is not None:
        parts.append(f"Reward margin {values['reward_margin']:.3g}")
    if values.get("reward_accuracy") is not None:
        parts.append(f"chosen ranked first in {100 * values['reward_accuracy']:.0f}% of pairs")
    if values.get("kl") is not None:
        parts.append(f"KL {values['kl']:.3g}")
    return f" {'; '.join(parts)}." if parts else ""


class TrainPage(Page):
    key = "train"
    title = "Train"
    summary = "Set the training schedule, start the run, and watch the loss, memory and answers change."
    icon = "train"

    def __init__(self, state: Any, runs: Any, parent: QWidget | None = None) -> None:
        super().__init__(state, runs, parent)
        from lora_studio.gui.widgets.training_plots import TrainingPlots  # pyqtgraph: only when built

        self.content.addWidget(self._controls())
        self.method_card = MethodCard(state)
        self.form = scroll(self.method_card, *build_form(state))
        self.plots = TrainingPlots()
        self.log = LogView()
        self.samples = SamplesView()
        tabs = QTabWidget()
        tabs.addTab(self.log, "Log")
        tabs.addTab(self.samples, "Sample answers")
        self.tabs = tabs
        right = QSplitter(Qt.Orientation.Vertical)
        right.setObjectName("trainRightSplitter")
        right.addWidget(self.plots)
        right.addWidget(tabs)
        right.setSizes([540, 210])
        splitter = QSplitter(Qt.Orientation.Horizontal)
        splitter.setObjectName("trainSplitter")
        splitter.setChildrenCollapsible(False)
        splitter.addWidget(self.form)
        splitter.addWidget(right)
        splitter.setSizes([420, 860])
        self.content.addWidget(splitter, 1)
        #: The run's clock (core/train/clock.py) as last reported: (seconds, when, standing still).
        #: Elapsed counts on from it between events, so it agrees with the banner, the log and the
        #: Runs page — one clock, read in one place.
        self._clock: tuple[float, float, bool] | None = None
        self._eta: tuple[float, float] | None = None  # (eta seconds, when it was reported)
        self._preparing = False
        self._last_preference: dict[str, float] = {}  # the latest step's rewards (a preference run)
        #: The plots hold a run (live or shown from its folder); until then they follow the method.
        self._plots_hold_run = False
        self.plots.set_method(state.config.training.method)
        self.clock = QTimer(self)
        self.clock.setInterval(1000)
        self.clock.timeout.connect(self._tick)
        runs.event.connect(self.on_event)
        runs.failed.connect(self.on_failed)
        state.run_state_changed.connect(self._on_run_state)
        state.problems_changed.connect(self._on_problems)
        state.config_changed.connect(self._on_config)
        runs.ended.connect(lambda _outcome: self.method_card.refresh_runs())  # a new run to start from
        self._on_run_state(state.run_state, state.run_detail)

    def _controls(self) -> Card:
        card = Card("Run")
        self.start_button = QPushButton("Start training")
        self.start_button.setObjectName("primary")
        self.start_button.setToolTip(f"Check every setting, then start a new run ({START_KEYS}).")
        self.start_button.clicked.connect(self.start)
        self.pause_button = QPushButton("Pause")
        self.pause_button.setToolTip(
            f"Hold training after the current step; resume continues with no step lost ({PAUSE_KEYS})."
        )
        self.pause_button.clicked.connect(self.runs.toggle_pause)
        self.stop_button = QPushButton("Stop")
        self.stop_button.setToolTip(
            f"Stop after the current step, saving the adapter and a resumable checkpoint ({STOP_KEYS})."
        )
        self.stop_button.clicked.connect(self.runs.stop)
        self.export_button = QPushButton("Export as command…")
        self.export_button.setToolTip(
            "Write these settings with an accelerate command and a Slurm script, to train on several GPUs."
        )
        self.export_button.clicked.connect(lambda: self.export_command())
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setFormat("Not started")
        self.timing = QLabel("Elapsed — · Remaining —")
        self.timing.setObjectName("muted")
        self.where = QLabel("")
        self.where.setObjectName("muted")
        self.where.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        row = QHBoxLayout()
        row.setSpacing(8)
        row.addWidget(self.start_button)
        row.addWidget(self.pause_button)
        row.addWidget(self.stop_button)
        row.addWidget(self.export_button)
        row.addSpacing(12)
        column = QVBoxLayout()
        column.setSpacing(2)
        column.addWidget(self.progress)
        line = QHBoxLayout()
        line.addWidget(self.timing)
        line.addStretch(1)
        line.addWidget(self.where)
        column.addLayout(line)
        row.addLayout(column, 1)
        card.body.addLayout(row)
        card.title.hide()
        return card

    # -- actions -------------------------------------------------------------------------------

    def start(self) -> bool:
        """Validate everything, then start; on problems, mark them and start nothing."""
        if self.runs.active:
            return False
        problems = self.state.validate()
        if problems:
            lines = [f"{self.state.describe(name)}: {reason}" for name, reason in problems.items()]
            self.messages.show_message(
                "error",
                FIX_TITLE,
                "\n".join(lines),
                "each one is marked in red under its field",
            )
            return False
        note = self.method_card.mismatch()
        if note:
            self.messages.show_message(
                "error", MISMATCH_TITLE, note, "change the method above, or the dataset on the Data page"
            )
            return False
        self.messages.clear()
        config = self.state.config
        self.plots.reset(config.training.max_steps, config.training.method)
        self._plots_hold_run = True
        self._last_preference = {}
        self.log.clear()
        self.samples.clear_samples()
        self.progress.setRange(0, 0)  # busy until the run knows its length
        self.progress.setFormat("Preparing…")
        self.where.setText("")
        self._clock, self._eta = (0.0, time.monotonic(), False), None
        self._preparing = True  # until the first step: the bar says what is being prepared
        self.plots.loss.set_empty_text("Preparing the run: the loss appears here after the first step")
        self.clock.start()
        method = "" if config.training.method == "sft" else f" {NAMES[config.training.method]}"
        self.log.add(f"Starting{method}: {config.model.source} on {config.data.path}")
        return self.runs.start(config)

    def _on_problems(self, problems: dict[str, str]) -> None:
        if not problems and self.messages.title.text() == FIX_TITLE:
            self.messages.clear()  # every marked field has been fixed

    def _on_config(self, config: Any, changed: frozenset[str]) -> None:
        if "training.method" in changed and not self._plots_hold_run:
            self.plots.set_method(config.training.method)  # the plots this run will draw
        if (
            changed & {"training.method", "data.path"}
            and self.messages.title.text() == MISMATCH_TITLE
            and not self.method_card.mismatch()
        ):
            self.messages.clear()

    def page_shown(self) -> None:
        self.method_card.refresh_runs()  # runs may have finished (or come from the CLI) meanwhile
        self.method_card.check_data()  # the file may have changed since it was read

    # -- events --------------------------------------------------------------------------------

    def on_event(self, event: Any) -> None:
        self.log.add_event(event)
        if getattr(event, "elapsed_s", None) is not None:
            self._clock = (event.elapsed_s, time.monotonic(), isinstance(event, ev.Paused) and event.paused)
        if isinstance(event, ev.Phase):
            if self._preparing:
                self.progress.setRange(0, 0)
                self.progress.setFormat(f"{event.name[:1].upper()}{event.name[1:]}…")
        elif isinstance(event, ev.SampleProgress):
            self._on_sample_progress(event)
        elif isinstance(event, ev.RunStarted):
            self.plots.loss.set_empty_text("Training: the loss appears here after the first step")
            self.plots.set_total_steps(event.total_steps)
            self.progress.setRange(0, max(1, event.total_steps))
            self.progress.setValue(event.resumed_from_step)
            self.progress.setFormat("Step %v of %m (%p%)")
            self.where.setText(event.run_dir)
            method = str(event.config.get("training", {}).get("method", "sft"))
            if event.resumed_from_step:  # the run so far, from its folder; the new steps follow
                self._load_history(event.run_dir, event.resumed_from_step, event.total_steps, method)
            else:
                self.plots.set_method(method)
            self._plots_hold_run = True
            estimate = self.state.estimate if event.device.startswith("cuda") else None
            self.plots.set_estimate((estimate or {}).get("bytes", {}).get("total"))
        elif isinstance(event, ev.Step):
            self.plots.on_step(event)
            self._last_preference = dict(event.preference) or self._last_preference
            self.progress.setMaximum(max(1, event.total_steps))
            self.progress.setValue(event.step)
            self._eta = (event.eta_s, time.monotonic()) if event.eta_s is not None else None
            self._tick()
        elif isinstance(event, ev.Evaluation):
            self.plots.add_eval(event.step, event.eval_loss, event.preference)
        elif isinstance(event, ev.Samples):
            self.samples.add(event.stage, event.step, list(event.samples))
        elif isinstance(event, ev.Paused):
            self.progress.setValue(event.step)  # the step it holds at, as the log and status bar say
            self._tick()
        elif isinstance(event, ev.Finished):
            self._eta = None
            self._clock = (event.elapsed_s, time.monotonic(), True)
            self._tick()
            if event.status == "completed":
                self.progress.setFormat("Step %v of %m (%p%)")
                self.progress.setValue(self.progress.maximum())
                loss = f" Final loss {event.final_loss:.4f}." if event.final_loss is not None else ""
                self.messages.show_message(
                    "info",
                    "Training completed",
                    f"{event.step} steps in {format_duration(event.elapsed_s)}.{loss}"
                    + preference_summary(self._last_preference),
                    f"the adapter is in {event.adapter_path}",
                )
            elif event.step == 0:
                self.progress.setRange(0, 1)
                self.progress.setValue(0)
                self.progress.setFormat("Stopped before the first step")
                self.messages.show_message(
                    "info",
                    "Training stopped",
                    "Stopped before the first step: nothing was trained.",
                    "press Start training when you are ready",
                )
            else:
                self.messages.show_message(
                    "info",
                    "Training stopped",
                    f"Stopped at step {event.step} after {format_duration(event.elapsed_s)}; the adapter was saved.",
                    f"resume it later from {event.run_dir}",
                )
        if isinstance(event, ev.Samples | ev.RunStarted | ev.Finished | ev.Failed):
            self.samples.end_progress()
        if isinstance(event, ev.RunStarted):
            self._preparing = False

    def _on_sample_progress(self, event: Any) -> None:
        """Sample answers being written: which prompt, how far, the words so far — before the first
        step this is all the run does for a while, and Stop and Pause work meanwhile."""
        where = (
            f"prompt {event.index + 1} of {event.total}, {event.tokens} of up to {event.max_tokens} tokens"
        )
        self.samples.show_progress(event.stage, event.prompt, event.text, event.done)
        if event.stage != "before":  # the bar keeps saying the run's steps, all done
            self.progress.setFormat(f"Step %v of %m — sample answers after training: {where}")
        else:
            total = max(1, event.total * event.max_tokens)
            self.progress.setRange(0, total)
            self.progress.setValue(min(total, event.index * event.max_tokens + event.tokens))
            self.progress.setFormat(f"Sample answers before training: {where}")
            self.plots.loss.set_empty_text(
                f"Answering sample prompt {event.index + 1} of {event.total} first\n"
                "(see Sample answers below); training starts after them"
            )

    def _load_history(self, run_dir: str, up_to: int, total: int, method: str) -> None:
        """A resumed run's points up to its checkpoint (the engine has cut its metrics there; the
        steps it has written since are on their way as events)."""
        try:
            records = RunFolder.open(run_dir).metrics()
        except LoraStudioError:
            records = []
        self.plots.load_metrics([r for r in records if int(r.get("step", 0)) <= up_to], total, method)

    def on_failed(self, failure: Any) -> None:
        self.messages.show_error(failure)
        if not isinstance(failure, ev.Failed):
            self.log.add(f"Failed: {getattr(failure, 'message', failure)}")
        if self._preparing:  # the bar counted the preparation, not steps
            self.progress.setRange(0, 1)
            self.progress.setValue(0)
        self.progress.setFormat("Failed after step %v" if self.progress.value() > 0 else "Failed")

    def _on_run_state(self, state: str, _detail: str) -> None:
        active = state in ("starting", "running", "paused", "stopping")
        self.start_button.setEnabled(not active)
        # Pause works from the start: asked for while the run prepares, it holds after step 1
        self.pause_button.setEnabled(state in ("starting", "running", "paused"))
        self.pause_button.setText("Resume" if state == "paused" else "Pause")
        self.stop_button.setEnabled(state in ("starting", "running", "paused"))
        self.form.setEnabled(not active)
        if not active:
            self.clock.stop()
            self._tick()

    def _tick(self) -> None:
        if self._clock is None:
            return
        at, since, still = self._clock
        elapsed = at if still else at + time.monotonic() - since
        remaining = None
        if self._eta is not None and self.state.run_state == "running":
            remaining = self._eta[0] - (time.monotonic() - self._eta[1])
        elif self.state.run_state == "paused":
            # asked to pause, the run finishes its step first ("pausing after step 4")
            detail = self.state.run_detail
            held = "Paused" if still or not detail.startswith("pausing") else detail[:1].upper() + detail[1:]
            self.timing.setText(f"Elapsed {format_duration(elapsed)} · {held}")
            return
        self.timing.setText(f"Elapsed {format_duration(elapsed)} · Remaining {format_duration(remaining)}")

    def export_command(
        self, folder: str | None = None, gpus_per_machine: int | None = None, machines: int = 1
    ) -> Any:
        """Write run.toml, launch.sh and slurm.sbatch to a folder and show the accelerate command."""
        from PySide6.QtWidgets import QFileDialog, QInputDialog

        from lora_studio.core.train import write_launch_bundle

        if folder is None:
            folder = QFileDialog.getExistingDirectory(self, "Folder for the launch files")
            if not folder:
                return None
        if gpus_per_machine is None:
            gpus_per_machine, ok = QInputDialog.getInt(
                self, "Export as command", "GPUs per machine:", 2, 1, 64
            )
            if not ok:
                return None
            machines, ok = QInputDialog.getInt(self, "Export as command", "Machines:", 1, 1, 512)
            if not ok:
                return None
        try:
            bundle = write_launch_bundle(
                self.state.config, Path(folder), gpus_per_machine=gpus_per_machine, machines=machines
            )
        except (OSError, LoraStudioError) as exc:
            self.messages.show_error(exc)
            return None
        self.messages.show_message(
            "info",
            "Launch files written",
            bundle.command,
            f"in {folder}: run `bash launch.sh` there, or `sbatch slurm.sbatch` on a Slurm cluster",
        )
        return bundle

    # -- showing a finished run -----------------------------------------------------------------

    def show_run(self, run_dir: str) -> None:
        """Draw a run folder (plots, progress, samples): the same view as during the run."""
        folder = RunFolder.open(run_dir)
        status = folder.status()
        metrics = folder.metrics()
        total = int(status.get("total_steps") or status.get("step") or 0)
        step = int(status.get("step") or 0)
        try:
            method = folder.config_with_notes()[0].training.method
        except LoraStudioError:
            method = "sft"  # the plots then follow what the metrics hold
        self.plots.load_metrics(metrics, total or None, method)
        self._plots_hold_run = True
        self.progress.setRange(0, max(1, total))
        self.progress.setValue(step)
        self.progress.setFormat("Step %v of %m (%p%)")
        elapsed = status.get("elapsed_s") or next(  # the run's clock; older runs: the last step's
            (m.get("elapsed_s") for m in reversed(metrics) if m.get("elapsed_s") is not None), None
        )
        self.timing.setText(f"{status.get('state', '?').capitalize()} · took {format_duration(elapsed)}")
        self.where.setText(str(folder.path))
        self.samples.clear_samples()
        groups: dict[tuple[str, int], list[tuple[str, str]]] = {}
        for record in folder.samples():
            groups.setdefault((record.get("stage", ""), int(record.get("step", 0))), []).append(
                (record.get("prompt", ""), record.get("answer", ""))
            )
        for (stage, at), samples in groups.items():
            self.samples.add(stage, at, samples)
        self.log.clear()
        self.log.add(f"Showing run {folder.run_id}: {status.get('state')} at step {step} of {total}")
        summary = folder.summary()
        if summary.get("final_loss") is not None:
            evals = summary.get("final_eval_loss")
            self.log.add(
                f"Final loss {summary['final_loss']:.4f}"
                + (f", eval loss {evals:.4f}" if evals is not None else "")
            )
        if status.get("error"):
            self.log.add(f"Error: {status['error']}")
        if folder.adapter_dir.is_dir():
            self.log.add(f"Adapter: {folder.adapter_dir}")
        if self.samples.batches:
            self.tabs.setCurrentWidget(self.samples)  # what the run changed, at a glance

    def apply_theme(self, theme: Any) -> None:
        self.plots.apply_theme(theme)
        self.samples.set_theme(theme)


PAGE = TrainPage
