"""Cards and form rows bound to the app state by dotted field name.

An editor shows ``state.value(name)``, writes edits back with ``state.set_value`` and shows the
state's problem for its field inline, under the field. Its tooltip is the field's description
from ``field_docs()`` (what it does and what it costs), so the GUI, ``--help`` and the config
documentation never drift apart.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

from PySide6.QtCore import QObject, Qt, QTimer
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFrame,
    QGridLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QSizePolicy,
    QSpinBox,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from lora_studio.core.config import field_docs
from lora_studio.gui.state import AppState

_DOCS: dict[str, str] | None = None
#: Label column width shared by every form, so editors line up from card to card.
LABEL_WIDTH = 150
#: Short values need short editors: a full-width spin box for "16" reads badly.
EDITOR_MAX_WIDTH = 280


def doc(dotted: str) -> str:
    global _DOCS
    if _DOCS is None:
        _DOCS = field_docs()
    return _DOCS.get(dotted, "")


class Card(QFrame):
    """A titled group of settings or facts: the unit of layout on every page."""

    def __init__(self, title: str, parent: QWidget | None = None, *, subtitle: str = "") -> None:
        super().__init__(parent)
        self.setObjectName("card")
        self.body = QVBoxLayout(self)
        self.body.setContentsMargins(16, 12, 16, 14)
        self.body.setSpacing(8)
        self.title = QLabel(title)
        self.title.setObjectName("cardTitle")
        self.body.addWidget(self.title)
        if subtitle:
            sub = QLabel(subtitle)
            sub.setObjectName("muted")
            sub.setWordWrap(True)
            self.body.addWidget(sub)

    def add(self, widget: QWidget, stretch: int = 0) -> QWidget:
        self.body.addWidget(widget, stretch)
        return widget


class Foldable(QWidget):
    """Advanced options: folded away, one click from view."""

    def __init__(self, title: str = "Advanced", parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.button = QToolButton()
        self.button.setObjectName("foldButton")
        self.button.setCheckable(True)
        self.button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.button.setArrowType(Qt.ArrowType.RightArrow)
        self.button.setText(title)
        self.button.toggled.connect(self.set_open)
        self.content = QWidget()
        self.content.hide()
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 4, 0, 0)
        layout.setSpacing(4)
        layout.addWidget(self.button, 0, Qt.AlignmentFlag.AlignLeft)
        layout.addWidget(self.content)

    def set_open(self, opened: bool) -> None:
        self.button.setChecked(opened)
        self.button.setArrowType(Qt.ArrowType.DownArrow if opened else Qt.ArrowType.RightArrow)
        self.content.setVisible(opened)


class Form(QWidget):
    """Rows of label · editor · unit, each with an error line under it that shows only when needed."""

    def __init__(self, state: AppState, page: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.state = state
        self.page = page
        self.grid = QGridLayout(self)
        self.grid.setContentsMargins(0, 0, 0, 0)
        self.grid.setHorizontalSpacing(10)
        self.grid.setVerticalSpacing(4)
        self.grid.setColumnStretch(1, 1)
        self.grid.setColumnMinimumWidth(0, LABEL_WIDTH)
        self.editors: dict[str, FieldEditor] = {}

    def add_field(
        self,
        dotted: str,
        label: str,
        *,
        kind: str = "auto",
        unit: str = "",
        choices: Sequence[tuple[Any, str]] = (),
        minimum: int = 0,
        maximum: int = 1_000_000_000,
        none_text: str = "",
        also: Callable[[Any], dict[str, Any]] | None = None,
    ) -> FieldEditor:
        editor = FieldEditor(
            self.state,
            dotted,
            kind=kind,
            choices=choices,
            minimum=minimum,
            maximum=maximum,
            none_text=none_text,
            also=also,
        )
        row = self.grid.rowCount()
        tip = doc(dotted)
        if editor.kind == "bool":
            editor.widget.setText(label)
            self.grid.addWidget(editor.widget, row, 0, 1, 3)
        else:
            name = QLabel(label)
            name.setToolTip(tip)
            name.setBuddy(editor.widget)
            self.grid.addWidget(name, row, 0)
            self.grid.addWidget(editor.widget, row, 1)
            if unit:
                unit_label = QLabel(unit)
                unit_label.setObjectName("unit")
                self.grid.addWidget(unit_label, row, 2)
                editor.unit = unit_label
                editor.refresh()
        self.grid.addWidget(editor.error, row + 1, 0, 1, 3)
        self.state.field_labels[dotted] = (self.page, label)
        self.editors[dotted] = editor
        return editor

    def add_widget(self, label: str, widget: QWidget, tooltip: str = "") -> None:
        row = self.grid.rowCount()
        name = QLabel(label)
        name.setToolTip(tooltip)
        widget.setToolTip(tooltip)
        self.grid.addWidget(name, row, 0)
        self.grid.addWidget(widget, row, 1, 1, 2)


class FieldEditor(QObject):
    """One config field's editor; owns no value (the state does), only its widget and error line."""

    def __init__(
        self,
        state: AppState,
        dotted: str,
        parent: QObject | None = None,
        *,
        kind: str = "auto",
        choices: Sequence[tuple[Any, str]] = (),
        minimum: int = 0,
        maximum: int = 1_000_000_000,
        none_text: str = "",
        also: Callable[[Any], dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(parent)
        self.state = state
        self.dotted = dotted
        #: Other fields an edit of this one changes with it (value -> {dotted: value}), applied in one
        #: ``set_values`` so the config never passes through a combination it refuses.
        self.also = also
        self.kind = kind if kind != "auto" else _kind_of(state.value(dotted), choices)
        self.none_text = none_text
        self.widget = self._make(choices, minimum, maximum)
        self.widget.setObjectName("field:" + dotted)
        if self.kind in ("int", "optional_int", "float", "optional_float", "choice"):
            self.widget.setMaximumWidth(EDITOR_MAX_WIDTH)
        self.widget.setToolTip(doc(dotted))
        self.error = QLabel()
        self.error.setObjectName("fieldError")
        self.error.setWordWrap(True)
        self.error.hide()
        #: The unit after the editor ("steps"); hidden while an optional number shows its "none" text,
        #: which would otherwise read "Use epochs steps".
        self.unit: QLabel | None = None
        self._updating = False
        self.refresh()
        state.config_changed.connect(self._on_config)
        state.problems_changed.connect(self._on_problems)

    # -- building -------------------------------------------------------------------------

    def _make(self, choices: Sequence[tuple[Any, str]], minimum: int, maximum: int) -> QWidget:
        if self.kind == "bool":
            box = QCheckBox()
            box.toggled.connect(lambda on: self._commit(bool(on)))
            return box
        if self.kind == "choice":
            combo = QComboBox()
            combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
            combo.setMinimumContentsLength(12)
            for value, text in choices:
                combo.addItem(text, value)
            combo.activated.connect(lambda i: self._commit(combo.itemData(i)))
            return combo
        if self.kind in ("int", "optional_int"):
            spin = QSpinBox()
            spin.setKeyboardTracking(False)
            low = minimum - 1 if self.kind == "optional_int" else minimum
            spin.setRange(low, maximum)
            if self.kind == "optional_int":
                spin.setSpecialValueText(self.none_text or "Off")
            spin.setMinimumWidth(100)
            spin.valueChanged.connect(self._spin_changed)
            return spin
        if self.kind == "lines":
            text = QPlainTextEdit()
            text.setTabChangesFocus(True)
            text.setFixedHeight(74)
            timer = QTimer(text)
            timer.setSingleShot(True)
            timer.setInterval(600)
            timer.timeout.connect(self._lines_changed)
            text.textChanged.connect(lambda: None if self._updating else timer.start())
            return text
        line = QLineEdit()
        if self.kind == "optional_float":  # empty: the setting's default, said in grey
            line.setPlaceholderText(self.none_text)
            line.setClearButtonEnabled(True)
        line.setMinimumWidth(100)
        line.editingFinished.connect(self._line_changed)
        line.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        return line

    # -- state -> widget ------------------------------------------------------------------

    def refresh(self) -> None:
        value = self.state.value(self.dotted)
        self._updating = True
        try:
            w = self.widget
            if isinstance(w, QCheckBox):
                w.setChecked(bool(value))
            elif isinstance(w, QComboBox):
                index = w.findData(value)
                if index < 0 and value is not None:
                    w.addItem(str(value), value)
                    index = w.count() - 1
                w.setCurrentIndex(index)
            elif isinstance(w, QSpinBox):
                if value is None:
                    w.setValue(w.minimum())
                else:
                    with contextlib.suppress(TypeError, ValueError):
                        w.setValue(int(value))
            elif isinstance(w, QPlainTextEdit):
                text = "\n".join(value) if isinstance(value, list) else str(value or "")
                if w.toPlainText() != text:
                    w.setPlainText(text)
            elif isinstance(w, QLineEdit):
                text = _format(value)
                if w.text() != text:
                    w.setText(text)
                    w.setCursorPosition(0)
        finally:
            self._updating = False
        if self.unit is not None and self.kind in ("optional_int", "optional_float"):
            self.unit.setVisible(value is not None)

    def set_choices(self, choices: Sequence[tuple[Any, str]]) -> None:
        """Replace a choice field's entries (a list read from disk), keeping its value selected."""
        combo = self.widget
        assert isinstance(combo, QComboBox)
        self._updating = True
        try:
            combo.clear()
            for value, text in choices:
                combo.addItem(text, value)
        finally:
            self._updating = False
        self.refresh()

    def _on_config(self, _config: Any, changed: frozenset[str]) -> None:
        if self.dotted in changed:
            self.refresh()

    def _on_problems(self, problems: dict[str, str]) -> None:
        reason = next(
            (r for k, r in problems.items() if k == self.dotted or k.startswith(self.dotted + ".")), ""
        )
        was_invalid = bool(self.widget.property("invalid"))
        self.error.setText(reason)
        self.error.setVisible(bool(reason))
        self.widget.setProperty("invalid", bool(reason))
        self.widget.style().unpolish(self.widget)
        self.widget.style().polish(self.widget)
        if was_invalid and not reason:
            self.refresh()

    # -- widget -> state ------------------------------------------------------------------

    def _commit(self, value: Any) -> None:
        if not self._updating:
            self.state.set_values({self.dotted: value, **(self.also(value) if self.also else {})})

    def _spin_changed(self, value: int) -> None:
        spin = self.widget
        assert isinstance(spin, QSpinBox)
        is_none = self.kind == "optional_int" and value == spin.minimum()
        self._commit(None if is_none else value)

    def _line_changed(self) -> None:
        assert isinstance(self.widget, QLineEdit)
        text = self.widget.text().strip()
        if self.kind == "optional_text":
            self._commit(text or None)
        elif self.kind in ("float", "optional_float"):
            if not text and self.kind == "optional_float":
                self._commit(None)
                return
            try:
                self._commit(float(text))
            except ValueError:
                self._commit(text)  # the config names the problem: "must be a number"
        else:
            self._commit(text)

    def _lines_changed(self) -> None:
        assert isinstance(self.widget, QPlainTextEdit)
        lines = [line.strip() for line in self.widget.toPlainText().splitlines() if line.strip()]
        self._commit(lines)


def _kind_of(value: Any, choices: Sequence[tuple[Any, str]]) -> str:
    if choices:
        return "choice"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, list):
        return "lines"
    return "text"


def _format(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        text = f"{value:g}"
        return text
    return str(value)
