"""Workers hand everything to the GUI thread through the relay, in order, and never emit a Qt
signal from their own thread (the GIL / Qt-mutex deadlock described in ``gui/workers.py``)."""

from __future__ import annotations

import os
import threading

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from PySide6.QtCore import QObject, Qt, Signal

from lora_studio.gui import workers


class Counting(workers.Worker):
    tick = Signal(object)

    def __init__(self, count: int) -> None:
        super().__init__(lambda: self._count(count))

    def _count(self, count: int) -> str:
        for i in range(count):
            self.send(self.tick, {"i": i})
        return "done"


def test_results_arrive_on_the_gui_thread_in_order_and_before_finished(qtbot):
    gui = threading.get_ident()
    seen: list[tuple[str, object, int]] = []
    worker = Counting(200)
    # a direct connection runs the slot in the thread that emits: the GUI thread, never the worker's
    worker.tick.connect(
        lambda item: seen.append(("tick", item["i"], threading.get_ident())),
        Qt.ConnectionType.DirectConnection,
    )
    workers.start(
        worker,
        on_returned=lambda result: seen.append(("returned", result, threading.get_ident())),
        on_finished=lambda: seen.append(("finished", None, threading.get_ident())),
    )
    assert workers.wait_all(30_000)
    assert [s[:2] for s in seen] == [("tick", i) for i in range(200)] + [
        ("returned", "done"),
        ("finished", None),
    ]
    assert {s[2] for s in seen} == {gui}


def test_a_worker_thread_emits_no_qt_signal(qtbot, monkeypatch):
    """``send`` from a worker thread emits on the GUI thread (a direct connection shows where)."""
    gui = threading.get_ident()
    emitted_on: list[int] = []

    class Probe(QObject):
        ping = Signal(object)

    probe = Probe()
    probe.ping.connect(lambda _: emitted_on.append(threading.get_ident()), Qt.ConnectionType.DirectConnection)

    def work() -> int:
        workers.Worker.send(probe.ping, 1)
        return 2

    errors: list[Exception] = []
    workers.start(workers.Worker(work), on_errored=errors.append)
    assert workers.wait_all(30_000)
    assert not errors and emitted_on == [gui]


def test_a_finished_job_is_freed_on_the_gui_thread_without_the_cycle_collector(qtbot):
    """Python's cycle collector runs in whichever thread allocates; a Qt object it frees from a
    worker's thread (a running QTimer, say) crashes the event loop. So a finished worker, its job
    and what the work held must go by reference counting, on the GUI thread."""
    import gc
    import weakref

    from PySide6.QtCore import QCoreApplication

    class Held:  # stands for a model the work held
        pass

    class Holding(Counting):  # like the app's workers: its work is a lambda over itself
        def __init__(self, held: Held) -> None:
            workers.Worker.__init__(self, lambda model: self._count(3) + type(model).__name__, held)

    held = Held()
    worker = Holding(held)
    refs = {"worker": weakref.ref(worker), "held": weakref.ref(held)}
    del held
    gc.disable()
    try:
        workers.start(worker)
        refs["job"] = weakref.ref(workers._LIVE[-1])
        del worker
        assert workers.wait_all(30_000)
        for _ in range(5):
            QCoreApplication.processEvents()
        alive = [name for name, ref in refs.items() if ref() is not None]
        assert alive == [], f"left for the cycle collector: {alive}"
    finally:
        gc.enable()


def test_a_worker_kept_alive_by_a_cycle_has_no_qt_object_left_for_the_collector(qtbot):
    """A failed run's exception keeps ``work``'s frame, and with it the worker, in a reference
    cycle; whatever thread the collector later frees that wrapper in, no C++ object may go with it.
    So the GUI thread deletes the worker's and the job's Qt objects when the job retires."""
    import gc

    import shiboken6
    from PySide6.QtCore import QCoreApplication

    kept: list[Exception] = []

    def fail() -> None:
        error = RuntimeError("the work failed")
        error.cycle = error  # what an engine storing its own failure does
        raise error

    worker = workers.Worker(fail)
    gc.disable()
    try:
        workers.start(worker, on_errored=kept.append)
        job = workers._LIVE[-1]
        assert workers.wait_all(30_000)
        for _ in range(5):
            QCoreApplication.processEvents()
        frames = []
        tb = kept[0].__traceback__
        while tb is not None:
            frames.append(tb.tb_frame.f_locals.get("self"))
            tb = tb.tb_next
        assert worker in frames  # the premise: the exception holds the worker
        assert not shiboken6.isValid(worker) and not shiboken6.isValid(job)
    finally:
        kept.clear()
        gc.enable()


def test_library_objects_are_frozen_once_out_of_the_cycle_collectors_way():
    """A full ``gc.collect()`` in a worker (the engine frees a run's model that way) holds the GIL
    while it walks every tracked object; with the libraries' import-time objects frozen it walks
    only what came after them, and the window no longer freezes at the end of a run."""
    import gc

    from lora_studio.gui.jobs import ensure_libraries

    ensure_libraries()
    frozen = gc.get_freeze_count()
    assert frozen > 100_000  # torch's, transformers' and peft's objects (about 500k here)
    later = [[] for _ in range(1000)]  # objects made after the first call stay collectable
    ensure_libraries()
    assert gc.get_freeze_count() == frozen and later
