"""The one place errors reach the user: a message bar with the project's own message and its hint.

Every page shows failures through :class:`MessageBar` (never a traceback dialog). The project's
errors already say what, where and what to do; anything else is an unexpected bug, shown as one
line with a hint to report it (the traceback goes to the log, not to the screen).
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QFrame, QHBoxLayout, QLabel, QToolButton, QVBoxLayout, QWidget

from lora_studio.core.errors import LoraStudioError

_TITLES = {
    "OutOfMemoryError": "Out of memory",
    "DatasetError": "Problem with the dataset",
    "ConfigError": "Invalid settings",
    "ModelSourceError": "Problem with the model",
    "TrainingError": "Training failed",
    "RunFolderError": "Problem with the run folder",
    "CancelledError": "Cancelled",
    "ChatError": "Problem with the chat",
    "ExportError": "Export failed",
    "EvaluationError": "Cannot evaluate",
}


def describe(error: Any) -> tuple[str, str, str | None]:
    """(title, message, hint) for an exception or an engine ``Failed`` event."""
    if hasattr(error, "error_type") and hasattr(error, "message"):  # events.Failed
        kind, message, hint = error.error_type, error.message, error.hint
    elif isinstance(error, LoraStudioError):
        kind, message, hint = type(error).__name__, error.message, error.hint
    else:
        kind = "unexpected"
        message = f"Unexpected error: {type(error).__name__}: {error}"
        hint = "this is a bug in LoRA Studio; the log has the details — please report it"
    return _TITLES.get(kind, "Something went wrong"), message, hint


class MessageBar(QFrame):
    """An inline, dismissable message: error, warning or info. Hidden while empty."""

    dismissed = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("messageBar")
        self.title = QLabel()
        self.title.setObjectName("messageTitle")
        self.text = QLabel()
        self.text.setWordWrap(True)
        self.text.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.hint = QLabel()
        self.hint.setObjectName("muted")
        self.hint.setWordWrap(True)
        self.hint.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        close = QToolButton()
        close.setText("✕")
        close.setAutoRaise(True)
        close.setToolTip("Dismiss this message")
        close.clicked.connect(self.clear)
        column = QVBoxLayout()
        column.setSpacing(2)
        column.addWidget(self.title)
        column.addWidget(self.text)
        column.addWidget(self.hint)
        row = QHBoxLayout(self)
        row.setContentsMargins(12, 8, 8, 8)
        row.addLayout(column, 1)
        row.addWidget(close, 0, Qt.AlignmentFlag.AlignTop)
        self.kind = ""
        self.hide()

    def show_error(self, error: Any) -> None:
        title, message, hint = describe(error)
        self.show_message("error", title, message, hint)

    def show_message(self, kind: str, title: str, message: str, hint: str | None = None) -> None:
        self.kind = kind
        for widget in (self, self.title):
            widget.setProperty("kind", kind)
            widget.style().unpolish(widget)
            widget.style().polish(widget)
        self.title.setText(title)
        self.text.setText(message)
        self.hint.setText(f"What to do: {hint}" if hint else "")
        self.hint.setVisible(bool(hint))
        self.show()

    def clear(self) -> None:
        self.kind = ""
        self.hide()
        self.dismissed.emit()

    def message(self) -> str:
        """Everything shown, as plain text (for tests and for copying)."""
        if self.isHidden():
            return ""
        return "\n".join(t for t in (self.title.text(), self.text.text(), self.hint.text()) if t)
