"""Work-arounds for bugs in the Qt bindings we ship with, each detected at run time, not assumed.

PySide6 6.12.0 returns ``True`` from ``SignalInstance.emit()`` without owning a reference to it.
On CPython 3.11 (where ``True`` is an ordinary reference-counted object; 3.12 made it immortal)
every emit from Python therefore takes one reference away from ``True``; after a few thousand
emits — a long training run, or just a while of pyqtgraph redraws — the interpreter aborts with
"bool_dealloc: deallocating True or False". We probe for the leak once and, when it is there,
give ``True`` and ``False`` a reference count no process can exhaust. They are never freed anyway,
so this changes nothing else.
"""

from __future__ import annotations

import ctypes
import sys

from PySide6.QtCore import QObject, Signal

#: Added to the reference counts of True and False when the leak is present (2**40 emits).
HEADROOM = 1 << 40

_applied = False


class _Probe(QObject):
    ping = Signal()


def guard_signal_emit_refcount() -> bool:
    """Detect PySide6's leaked reference to ``True`` on ``emit()`` and make it harmless.

    Returns True when the guard was applied (once per process).
    """
    global _applied
    if _applied or sys.version_info >= (3, 12) or sys.implementation.name != "cpython":
        return _applied
    probe = _Probe()
    before = sys.getrefcount(True)
    for _ in range(4):
        probe.ping.emit()
    leaked = before - sys.getrefcount(True)
    if leaked >= 4:
        for singleton in (True, False):
            ctypes.c_ssize_t.from_address(id(singleton)).value += HEADROOM
        _applied = True
    return _applied


_none_applied = False


def guard_paint_override_refcount() -> bool:
    """Detect PySide6's leaked reference to ``None`` on each call of a Python ``paint`` override.

    The same release loses one reference to ``None`` every time C++ calls a Python override of a
    paint method (``QGraphicsItem.paint``, ``QWidget.paintEvent``): pyqtgraph paints through such
    overrides a few hundred times a second while the live plots redraw, so a long session ended in
    "none_dealloc: deallocating None". Probed with a tiny scene rendered into an image (needs the
    ``QApplication``, hence a separate call from :func:`create_app` and the plot widgets); when the
    leak is there, ``None`` gets the same unexhaustible headroom. Returns True when applied.
    """
    global _none_applied
    if _none_applied or sys.version_info >= (3, 12) or sys.implementation.name != "cpython":
        return _none_applied
    from PySide6.QtGui import QImage, QPainter
    from PySide6.QtWidgets import QApplication, QGraphicsRectItem, QGraphicsScene

    if QApplication.instance() is None:
        return False

    class _Item(QGraphicsRectItem):
        def paint(self, painter: object, option: object, widget: object = None) -> None:
            return None

    scene = QGraphicsScene()
    item = _Item(0, 0, 10, 10)
    scene.addItem(item)
    image = QImage(20, 20, QImage.Format.Format_ARGB32)

    def render(times: int) -> None:
        for _ in range(times):
            painter = QPainter(image)
            scene.render(painter)
            painter.end()

    render(4)  # the first renders set the scene up (and do not all reach paint)
    before = sys.getrefcount(None)
    render(8)
    if before - sys.getrefcount(None) >= 8:
        ctypes.c_ssize_t.from_address(id(None)).value += HEADROOM
        _none_applied = True
    return _none_applied
