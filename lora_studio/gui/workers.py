"""Long work off the GUI thread: one worker pattern for everything.

A :class:`Worker` is a ``QObject`` living in the GUI thread whose ``work`` runs in its own
``QThread``; the pair is kept referenced until the thread has finished. Any exception in the work
becomes the ``errored`` signal (never a silent dead thread, never a traceback in the user's face).

A worker thread never emits a Qt signal itself. It hands ``(signal.emit, args)`` to :func:`post`,
a plain deque, and a timer on the GUI thread emits them there, in order. Why: a cross-thread emit
from Python takes one of Qt's pooled signal-slot mutexes and, to copy Python arguments, the GIL;
the GUI thread, inside a Qt call that takes the same pooled mutex (``setStyleSheet`` connects to
``destroyed``) and calls back into Python, waits for the GIL the other way round. That deadlock
froze the test suite twice (main thread stuck in ``QLabel.setStyleSheet``, a worker in C++).

Two users of it: :class:`TrainingWorker` (the engine's events → ``event`` signal; stop and pause are
``threading.Event`` flags the engine checks at step boundaries) and :class:`BackgroundTask`, the
one helper for short jobs (model info, dataset preview, memory estimate) where only the latest
request's answer matters.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

import shiboken6
from PySide6.QtCore import QEventLoop, QObject, QThread, QTimer, Signal, Slot

from lora_studio.core.errors import LoraStudioError
from lora_studio.core.train import SharedModel

log = logging.getLogger(__name__)

_LIVE: list[_Job] = []
_held = False
_waiting: list[BackgroundTask] = []

#: What worker threads send to the GUI thread: (callable, args), emitted there by the relay's timer.
_OUTBOX: deque[tuple[Callable[..., Any], tuple[Any, ...]]] = deque()
RELAY_MS = 15  # how often the GUI thread looks; streamed chat text and step events arrive this late at most
_relay: QTimer | None = None
_RETIRED: list[Any] = []  # finished jobs, released on the next turn of the event loop


def post(fn: Callable[..., Any], *args: Any) -> None:
    """Call ``fn(*args)`` on the GUI thread, after everything posted before it (any thread)."""
    _OUTBOX.append((fn, args))


def _drain() -> None:
    """Run what workers posted (GUI thread); the relay rests when no worker is left."""
    while _OUTBOX:
        fn, args = _OUTBOX.popleft()
        try:
            fn(*args)
        except Exception:  # a slot's own bug must not stop the others' delivery
            log.exception("delivering a worker's result failed")
    if not _LIVE and not _OUTBOX and _relay is not None:
        _relay.stop()


def _start_relay() -> None:
    global _relay
    if _relay is None:
        _relay = QTimer()
        _relay.setInterval(RELAY_MS)
        _relay.timeout.connect(_drain)
    if not _relay.isActive():
        _relay.start()


class Worker(QObject):
    """Runs ``fn(*args, **kwargs)`` once in its job's thread; sends results back with :meth:`send`."""

    returned = Signal(object)
    errored = Signal(object)
    finished = Signal()

    def __init__(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        super().__init__()
        self._fn, self._args, self._kwargs = fn, args, kwargs

    @Slot()
    def work(self) -> None:
        try:
            result = self._fn(*self._args, **self._kwargs)
        except Exception as exc:
            if not isinstance(exc, LoraStudioError):
                log.exception("background work failed")
            self.send(self.errored, exc)
        else:
            self.send(self.returned, result)
        finally:
            self.send(self.finished)
            # what the work held (a lambda over this worker, a model) goes now, not with a cycle
            self._fn, self._args, self._kwargs = _done_fn, (), {}

    @staticmethod
    def send(signal: Any, *args: Any) -> None:
        """Emit ``signal`` on the GUI thread (from the worker thread; see the module docstring)."""
        post(signal.emit, *args)


def _done_fn() -> None:
    raise RuntimeError("a Worker runs once")


class _WorkThread(QThread):
    def __init__(self, worker: Worker) -> None:
        super().__init__()
        self._worker = worker

    def run(self) -> None:
        self._worker.work()
        self._worker = None  # the job keeps it until the relay has emitted what it sent


class _Job(QObject):
    """Owns one worker and its thread (in the GUI thread) and relays results to plain callables."""

    def __init__(
        self,
        worker: Worker,
        on_returned: Callable[[Any], None] | None,
        on_errored: Callable[[Exception], None] | None,
        on_finished: Callable[[], None] | None,
    ) -> None:
        super().__init__()
        self.worker = worker
        # The worker object stays in the GUI thread, so every slot connected to its signals (a
        # lambda too, which PySide runs in the sender's thread) runs there; only ``work`` runs in
        # the new thread, which needs no event loop: nothing there receives signals.
        self.thread = _WorkThread(worker)
        self.thread.setObjectName(f"lora-studio-{type(worker).__name__}")
        self._on_returned, self._on_errored, self._on_finished = on_returned, on_errored, on_finished
        self.thread.finished.connect(self._release)  # which deleteLater()s the thread once it has ended
        worker.returned.connect(self._returned)
        worker.errored.connect(self._errored)

    @Slot(object)
    def _returned(self, result: Any) -> None:
        if self._on_returned:
            self._on_returned(result)

    @Slot(object)
    def _errored(self, exc: Exception) -> None:
        if self._on_errored:
            self._on_errored(exc)

    @Slot()
    def _release(self) -> None:
        _drain()  # whatever the worker posted comes before on_finished
        self.thread.wait(2000)  # finished is emitted just before the thread really ends
        self.thread.deleteLater()
        if self in _LIVE:
            _LIVE.remove(self)
        # this slot runs inside Qt's delivery to this very object: its last reference must not go
        # (deleting the C++ object) until the event loop has moved on
        _RETIRED.append(self)
        QTimer.singleShot(0, _retire)
        if self._on_finished:
            self._on_finished()


def _retire() -> None:
    """Delete finished jobs' Qt objects here, on the GUI thread, and break the job ↔ worker cycle.

    Left to Python's cycle collector, a QObject is freed in whichever thread happens to run it — a
    worker's, in the middle of a training step — and Qt objects must not be deleted from another
    thread (a running QTimer freed that way crashes the event loop). Breaking the cycle lets
    reference counting free the wrappers here; deleting the C++ objects explicitly covers a wrapper
    something else keeps in a cycle (a failed run's traceback holds ``work``'s frame, and with it
    the worker): freeing a wrapper whose C++ object is gone is harmless in any thread.
    """
    while _RETIRED:
        job = _RETIRED.pop()
        worker, job.worker = job.worker, None
        for obj in (worker, job):
            if obj is not None and shiboken6.isValid(obj):
                shiboken6.delete(obj)


def start(
    worker: Worker,
    *,
    on_returned: Callable[[Any], None] | None = None,
    on_errored: Callable[[Exception], None] | None = None,
    on_finished: Callable[[], None] | None = None,
) -> Worker:
    """Run ``worker`` in a new thread; the callbacks run on the GUI thread."""
    job = _Job(worker, on_returned, on_errored, on_finished)
    _LIVE.append(job)
    _start_relay()
    job.thread.start()
    return worker


def live_count() -> int:
    """Workers whose threads have not finished yet (the app waits for these before quitting)."""
    return len(_LIVE)


def wait_all(timeout_ms: int) -> bool:
    """Process events until every worker has finished, or the timeout passes; True if all did."""
    if not _LIVE:
        return True
    loop = QEventLoop()
    timer = QTimer()
    timer.setSingleShot(True)
    timer.timeout.connect(loop.quit)
    poll = QTimer()
    poll.setInterval(20)
    poll.timeout.connect(lambda: None if _LIVE else loop.quit())
    timer.start(timeout_ms)
    poll.start()
    loop.exec()
    poll.stop()
    return not _LIVE


def hold_background() -> None:
    """Keep background tasks from starting until :func:`release_background` (start-up: the window
    must be painted before any task imports torch and competes for the GIL)."""
    global _held
    _held = True


def release_background() -> None:
    global _held
    _held = False
    for task in list(_waiting):
        task._timer.start(0)
    _waiting.clear()


class BackgroundTask(QObject):
    """One kind of short job whose latest request wins (debounced; older answers are dropped).

    ``request(op, on_success, on_failure)`` runs ``op(cancel)`` in a worker after ``delay_ms``; a
    newer request sets the older one's ``cancel`` event and makes its answer stale. At most one op
    runs at a time, so fast typing cannot pile up threads. ``op`` must not touch any widget.
    """

    busy_changed = Signal(bool)

    def __init__(self, parent: QObject | None = None, *, delay_ms: int = 0) -> None:
        super().__init__(parent)
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(delay_ms)
        self._timer.timeout.connect(self._launch)
        self._generation = 0
        self._next: tuple[Callable, Callable, Callable | None] | None = None
        self._running = False
        self._cancel = threading.Event()

    @property
    def busy(self) -> bool:
        return self._running or self._timer.isActive() or self._next is not None

    def request(
        self,
        op: Callable[[threading.Event], Any],
        on_success: Callable[[Any], None],
        on_failure: Callable[[Exception], None] | None = None,
    ) -> None:
        self._generation += 1
        self._cancel.set()
        self._next = (op, on_success, on_failure)
        was_busy = self.busy
        self._timer.start()
        if not was_busy:
            self.busy_changed.emit(True)

    def cancel_pending(self) -> None:
        """Drop a request not started yet and cancel the running one (closing a page)."""
        self._timer.stop()
        self._next = None
        self._generation += 1
        self._cancel.set()
        if self in _waiting:
            _waiting.remove(self)

    def _launch(self) -> None:
        if self._running or self._next is None:
            return
        if _held:
            if self not in _waiting:
                _waiting.append(self)
            return
        op, on_success, on_failure = self._next
        self._next = None
        generation = self._generation
        self._cancel = cancel = threading.Event()
        self._running = True

        # answers for a page that has been closed meanwhile are dropped (its widgets are gone)
        def returned(result: Any) -> None:
            if shiboken6.isValid(self) and generation == self._generation:
                on_success(result)

        def errored(exc: Exception) -> None:
            if shiboken6.isValid(self) and generation == self._generation and not cancel.is_set():
                (on_failure or _log_failure)(exc)

        start(Worker(op, cancel), on_returned=returned, on_errored=errored, on_finished=self._done)

    def _done(self) -> None:
        if not shiboken6.isValid(self):
            return
        self._running = False
        if self._next is not None:
            self._timer.start(0)
        else:
            self.busy_changed.emit(False)


def _log_failure(exc: Exception) -> None:
    log.warning("background task failed: %s", exc)


class TrainingWorker(Worker):
    """Calls the engine; its events become the queued ``event`` signal.

    The engine calls the listener on this worker's thread; emitting a signal there to slots in the
    GUI thread queues it, so the engine never waits on the GUI. ``cancel`` and ``pause`` are the
    engine's own flags; setting them from the GUI thread is safe.
    """

    event = Signal(object)

    def __init__(
        self,
        config: Any,
        *,
        resume_dir: str | None = None,
        shared_model: SharedModel | None = None,
        runs_root: Any = None,
    ) -> None:
        super().__init__(lambda: self._train())
        self.config = config
        self.resume_dir = resume_dir
        self.cancel = threading.Event()
        self.pause = threading.Event()
        self.shared_model = shared_model if shared_model is not None else SharedModel()
        self.runs_root = runs_root

    def _listen(self, event: Any) -> None:
        self.send(self.event, event)

    def _train(self) -> Any:
        from lora_studio.core.estimate import decide_savers
        from lora_studio.core.train import engine
        from lora_studio.gui.jobs import ensure_libraries

        ensure_libraries()
        if self.resume_dir:
            return engine.resume(
                self.resume_dir,
                self._listen,
                cancel=self.cancel,
                pause=self.pause,
                shared_model=self.shared_model,
                decide_savers=decide_savers,
            )
        return engine.train(
            self.config,
            self._listen,
            cancel=self.cancel,
            pause=self.pause,
            runs_root=self.runs_root,
            shared_model=self.shared_model,
            decide_savers=decide_savers,
        )
