"""Where the app's windows and controls are on screen, written to a JSON file for tests to aim at.

The real-display tests drive the app from outside, as a person does: ``xdotool`` moves the pointer
and presses keys on the X server. They need to know where a button or a combo box is, and when a
window has appeared or finished its work; this file tells them (it plays the part that the
accessibility tree plays for screen readers). It is written only when ``LORA_STUDIO_WIDGET_MAP``
names a file, a few times a second, atomically (a reader never sees half a file).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, QPoint, QTimer
from PySide6.QtWidgets import (
    QAbstractButton,
    QAbstractItemView,
    QApplication,
    QComboBox,
    QLabel,
    QLineEdit,
    QWidget,
)

#: The environment variable that turns the map on (its value is the file to write).
ENV = "LORA_STUDIO_WIDGET_MAP"
INTERVAL_MS = 200
_CONTROLS = (QAbstractButton, QComboBox, QLineEdit, QAbstractItemView)


def start_if_requested(parent: QObject) -> WidgetMap | None:
    path = os.environ.get(ENV, "")
    return WidgetMap(Path(path), parent) if path else None


class WidgetMap(QObject):
    def __init__(self, path: Path, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.path = path
        self._last = ""
        self._timer = QTimer(self)
        self._timer.setInterval(INTERVAL_MS)
        self._timer.timeout.connect(self.write)
        self._timer.start()

    def write(self) -> None:
        text = json.dumps({"windows": [describe_window(w) for w in visible_windows()]}, indent=1)
        if text == self._last:
            return
        self._last = text
        partial = self.path.with_name(self.path.name + ".partial")
        partial.write_text(text)
        os.replace(partial, self.path)


def visible_windows() -> list[QWidget]:
    return [w for w in QApplication.topLevelWidgets() if w.isVisible()]


def _rect(widget: QWidget) -> list[int]:
    corner = widget.mapToGlobal(QPoint(0, 0))
    return [corner.x(), corner.y(), widget.width(), widget.height()]


def describe_window(window: QWidget) -> dict[str, Any]:
    """The window's client area and frame (screen pixels) and its visible, labelled controls."""
    frame = window.frameGeometry()
    controls = []
    for widget in window.findChildren(QWidget):
        if not isinstance(widget, (*_CONTROLS, QLabel)) or not widget.isVisible():
            continue
        if isinstance(widget, QLabel) and not widget.objectName():
            continue  # plain text; titled labels (page titles, verdicts) are listed
        text = widget.currentText() if isinstance(widget, QComboBox) else getattr(widget, "text", str)()
        controls.append({
            "class": widget.metaObject().className(), "name": widget.objectName(), "text": str(text),
            "enabled": widget.isEnabled(), "rect": _rect(widget),
        })  # fmt: skip
    return {
        "class": window.metaObject().className(),
        "name": window.objectName(),
        "title": window.windowTitle(),
        "active": window.isActiveWindow(),
        "rect": _rect(window),
        "frame": [frame.x(), frame.y(), frame.width(), frame.height()],
        "controls": controls,
    }
