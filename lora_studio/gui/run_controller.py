"""The one training run of the window: start, pause, resume, stop, and the run state it implies.

Pages do not talk to the worker directly: the Train page, the keyboard shortcuts and the window's
close handler all go through this controller, so "what is running" has one answer. Events arrive
here on the GUI thread (queued) and are re-emitted for the pages after the state is updated.
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import QEventLoop, QObject, QTimer, Signal, Slot

from lora_studio.core.config import RunConfig
from lora_studio.core.errors import CancelledError
from lora_studio.core.train import events as ev
from lora_studio.gui import workers
from lora_studio.gui.state import AppState


class RunController(QObject):
    event = Signal(object)  # every engine event, on the GUI thread, after the state is updated
    failed = Signal(object)  # the Failed event, or the exception when the engine could not say
    ended = Signal(str)  # "completed" | "cancelled" | "failed"

    def __init__(self, state: AppState, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.state = state
        self.worker: workers.TrainingWorker | None = None
        self.total_steps = 0
        self.step = 0
        self.run_dir: str | None = None
        self._failed_seen = False
        self._finished_status = ""

    @property
    def active(self) -> bool:
        return self.worker is not None

    @property
    def paused(self) -> bool:
        return self.worker is not None and self.worker.pause.is_set()

    def start(self, config: RunConfig, *, resume_dir: str | None = None) -> bool:
        """Start a run (the caller has validated ``config``); False if one is already running."""
        if self.worker is not None:
            return False
        self.state.shared_model.clear()
        self.total_steps = self.step = 0
        self.run_dir = resume_dir
        self._failed_seen = False
        self._finished_status = ""
        worker = workers.TrainingWorker(config, resume_dir=resume_dir, shared_model=self.state.shared_model)
        worker.event.connect(self._on_event)
        self.worker = worker
        self.state.set_run_state("starting", "preparing")
        workers.start(worker, on_errored=self._on_errored, on_finished=self._on_finished)
        return True

    def pause(self) -> None:
        if self.worker is not None and not self.worker.cancel.is_set():
            self.worker.pause.set()
            # the step being computed ends first (asked for while the run prepares: the first step)
            self.state.set_run_state("paused", f"pausing after step {self.step + 1}")

    def resume(self) -> None:
        if self.worker is not None and self.worker.pause.is_set():
            self.worker.pause.clear()
            self.state.set_run_state("running", self._progress_text())

    def toggle_pause(self) -> None:
        if self.paused:
            self.resume()
        else:
            self.pause()

    def stop(self) -> None:
        """Ask the engine to stop at the next step boundary; it saves the adapter and a checkpoint."""
        if self.worker is None:
            return
        self.worker.cancel.set()
        self.worker.pause.clear()
        self.state.set_run_state("stopping", "saving the adapter")

    def wait_stopped(self, timeout_ms: int) -> bool:
        """Process events until the run's thread has ended, or the timeout passes."""
        if self.worker is None:
            return True
        loop = QEventLoop()
        timer = QTimer(loop)
        timer.setSingleShot(True)
        timer.timeout.connect(loop.quit)
        self.ended.connect(loop.quit)
        timer.start(timeout_ms)
        loop.exec()
        timer.stop()
        self.ended.disconnect(loop.quit)
        return self.worker is None

    # -- events (GUI thread) ----------------------------------------------------------------

    @Slot(object)
    def _on_event(self, event: Any) -> None:
        state = self.state
        if isinstance(event, ev.Phase):
            if state.run_state == "starting":
                state.set_run_state("starting", event.name)
        elif isinstance(event, ev.RunStarted):
            self.total_steps, self.step, self.run_dir = (
                event.total_steps,
                event.resumed_from_step,
                event.run_dir,
            )
            if self.paused:  # Pause was pressed while the run prepared: it holds after this step
                state.set_run_state("paused", f"pausing after step {self.step + 1}")
            else:
                state.set_run_state("running", self._progress_text())
        elif isinstance(event, ev.Step):
            self.step, self.total_steps = event.step, event.total_steps
            if state.run_state == "running":
                state.set_run_state("running", self._progress_text())
        elif isinstance(event, ev.Paused):
            self.step = event.step
            if event.paused:
                state.set_run_state("paused", f"at step {event.step} of {self.total_steps}")
            elif state.run_state == "paused":
                state.set_run_state("running", self._progress_text())
        elif isinstance(event, ev.Finished):
            self._finished_status = event.status
            self.step, self.run_dir = event.step, event.run_dir
        elif isinstance(event, ev.Failed):
            self._failed_seen = True
            self.run_dir = event.run_dir or self.run_dir
        self.event.emit(event)
        if isinstance(event, ev.Failed):
            self.failed.emit(event)

    def _on_errored(self, exc: Exception) -> None:
        if isinstance(exc, CancelledError) or self._failed_seen:
            return
        self._failed_seen = True
        self.failed.emit(exc)

    def _on_finished(self) -> None:
        self.worker = None
        if self._failed_seen:
            outcome = "failed"
            self.state.set_run_state("failed", f"after step {self.step}")
        elif self._finished_status == "completed":
            outcome = "completed"
            self.state.set_run_state("completed", f"{self.step} steps")
        else:
            outcome = "cancelled"
            self.state.set_run_state("cancelled", f"at step {self.step}")
        self.ended.emit(outcome)

    def _progress_text(self) -> str:
        return f"step {self.step} of {self.total_steps}" if self.total_steps else "starting"
