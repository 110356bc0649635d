"""The System check dialog: the doctor's checks (``lora-studio doctor``) in the window.

It opens by itself the first time the app starts (so a person learns at once whether this machine
can train, and what to install if not) and any time from Help → System check. The checks import
torch and run bitsandbytes, which takes seconds, so they run in a worker thread and each line
appears as its check finishes; the window stays responsive throughout.
"""

from __future__ import annotations

import contextlib
import html
import os
from typing import Any

import shiboken6
from PySide6.QtCore import QSettings, Qt, Signal, Slot
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import (
    QDialog,
    QFrame,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QVBoxLayout,
    QWidget,
)

from lora_studio.core.doctor import PROBLEM, WARNING, Check, can_train, run_checks
from lora_studio.gui import jobs, theme, workers

#: QSettings key: the dialog has been shown once (on the first start).
SHOWN_KEY = "system_check/shown"
#: Set (to anything but "" or "0") to never open the dialog by itself (tests, kiosk installs).
NO_FIRST_RUN_ENV = "LORA_STUDIO_NO_FIRST_RUN"
_WORDS = {"ok": "OK", WARNING: "Warning", PROBLEM: "Problem"}


class DoctorWorker(workers.Worker):
    """Runs every check; each one is sent as ``found`` the moment it is done.

    torch and transformers are imported first through ``jobs.ensure_libraries`` (one thread at a
    time): on the first start the pages' own background tasks import them at the same moment, and
    two threads importing transformers together can see it half-initialised.
    """

    found = Signal(object)

    def __init__(self) -> None:
        super().__init__(self._check)

    def _check(self) -> list[Check]:
        with contextlib.suppress(Exception):  # a broken torch install: the torch check reports it
            jobs.ensure_libraries()
        return run_checks(progress=lambda check: self.send(self.found, check))


def first_run_due(store: QSettings) -> bool:
    """True until the dialog has been shown once, unless ``LORA_STUDIO_NO_FIRST_RUN`` is set."""
    if os.environ.get(NO_FIRST_RUN_ENV, "") not in ("", "0"):
        return False
    return not _flag(store.value(SHOWN_KEY, False))


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def _flag(value: Any) -> bool:
    return value is True or str(value).lower() in ("true", "1")


def open_on_first_run(parent: QWidget, store: QSettings, palette: theme.Theme | None = None) -> bool:
    """Open the dialog (without blocking) if this is the first start; remember that it was shown."""
    if not first_run_due(store):
        return False
    store.setValue(SHOWN_KEY, True)
    store.sync()
    open_dialog(parent, palette, first_run=True)
    return True


def open_dialog(
    parent: QWidget, palette: theme.Theme | None = None, *, first_run: bool = False
) -> SystemCheckDialog:
    """Show the dialog without blocking (deleted when closed) and start its checks."""
    dialog = SystemCheckDialog(parent, palette, first_run=first_run)
    dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
    dialog.show()
    dialog.start()
    return dialog


class SystemCheckDialog(QDialog):
    """One row per check: a coloured OK / Warning / Problem, the finding and the fix to apply."""

    finished_checks = Signal(bool)  # can train

    def __init__(
        self, parent: QWidget | None = None, palette: theme.Theme | None = None, *, first_run: bool = False
    ) -> None:
        super().__init__(parent)
        self.palette_ = palette or theme.LIGHT
        self.checks: list[Check] = []
        self.running = False
        self.setWindowTitle("System check")
        self.setMinimumSize(640, 420)
        self.resize(780, 640)  # every line of a CPU machine without scrolling
        title = QLabel("Can this machine train?")
        title.setObjectName("pageTitle")
        intro = (
            "Welcome to LoRA Studio. This is what the app found on this machine; it checks again "
            "any time from Help → System check."
            if first_run
            else "The same checks as the lora-studio doctor command: each line says what was found "
            "and, when something is missing, what to do."
        )
        self.intro = QLabel(intro)
        self.intro.setObjectName("pageSummary")
        self.intro.setWordWrap(True)
        self.verdict = QLabel("Checking…")
        self.verdict.setObjectName("verdictNeutral")
        self.progress = QProgressBar()
        self.progress.setRange(0, 0)
        self.progress.setTextVisible(False)
        self.progress.setFixedHeight(6)
        self.rows = QGridLayout()
        self.rows.setContentsMargins(16, 12, 16, 12)
        self.rows.setHorizontalSpacing(14)
        self.rows.setVerticalSpacing(10)
        self.rows.setColumnStretch(2, 1)
        card = QFrame()
        card.setObjectName("card")
        column = QVBoxLayout(card)
        column.setContentsMargins(0, 0, 0, 0)
        column.addLayout(self.rows)
        column.addStretch(1)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setWidget(card)
        self.copy_button = QPushButton("Copy report")
        self.copy_button.setToolTip("Copy the findings as text (for a bug report or a forum post)")
        self.copy_button.clicked.connect(self.copy_report)
        self.again_button = QPushButton("Run again")
        self.again_button.setToolTip("Check again, e.g. after installing a CUDA build of torch")
        self.again_button.clicked.connect(self.start)
        close = QPushButton("Close")
        close.setObjectName("primary")
        close.setDefault(True)
        close.clicked.connect(self.close)
        buttons = QHBoxLayout()
        buttons.addWidget(self.copy_button)
        buttons.addStretch(1)
        buttons.addWidget(self.again_button)
        buttons.addWidget(close)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(22, 18, 22, 16)
        layout.setSpacing(10)
        layout.addWidget(title)
        layout.addWidget(self.intro)
        layout.addWidget(self.verdict)
        layout.addWidget(self.progress)
        layout.addWidget(scroll, 1)
        layout.addLayout(buttons)

    def start(self) -> None:
        """Run the checks in a worker thread (a second click while running does nothing)."""
        if self.running:
            return
        self.running = True
        self.checks = []
        self._clear_rows()
        self.verdict.setText("Checking… (importing torch and testing bitsandbytes takes a few seconds)")
        self.verdict.setObjectName("verdictNeutral")
        self._repolish(self.verdict)
        self.progress.show()
        self.again_button.setEnabled(False)
        self.copy_button.setEnabled(False)
        worker = DoctorWorker()
        worker.found.connect(self._add)
        workers.start(worker, on_returned=self._guarded(self._done), on_errored=self._guarded(self._failed))

    def _guarded(self, slot: Any) -> Any:
        """Drop an answer that arrives after the dialog was closed and deleted."""
        return lambda value: slot(value) if shiboken6.isValid(self) else None

    @Slot(object)
    def _add(self, check: Check) -> None:
        self.checks.append(check)
        row = self.rows.rowCount()
        chip = QLabel(_WORDS.get(check.status, check.status))
        chip.setAlignment(Qt.AlignmentFlag.AlignCenter)
        chip.setMinimumWidth(72)
        colour = self._colour(check.status)
        chip.setStyleSheet(
            f"color: {colour}; border: 1px solid {colour}; border-radius: 10px; padding: 1px 8px; "
            "font-weight: 600;"
        )
        name = QLabel(check.name)
        name.setObjectName("factValue")
        text = html.escape(check.detail)
        if check.fix:
            text += f"<br><span style='color:{self.palette_.muted}'>→ {html.escape(check.fix)}</span>"
        detail = QLabel(text)
        detail.setTextFormat(Qt.TextFormat.RichText)
        detail.setWordWrap(True)
        detail.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        top = Qt.AlignmentFlag.AlignTop
        self.rows.addWidget(chip, row, 0, top)
        self.rows.addWidget(name, row, 1, top)
        self.rows.addWidget(detail, row, 2, top)

    def _colour(self, status: str) -> str:
        return {PROBLEM: self.palette_.error, WARNING: self.palette_.warn}.get(status, self.palette_.ok)

    def _done(self, checks: list[Check]) -> None:
        self.running = False
        self.progress.hide()
        self.again_button.setEnabled(True)
        self.copy_button.setEnabled(True)
        ok = can_train(checks)
        warnings = sum(c.status == WARNING for c in checks)
        problems = sum(c.status == PROBLEM for c in checks)
        if ok:
            note = f" ({_plural(warnings, 'warning')} below)" if warnings else ""
            self.verdict.setText(f"This machine can train.{note}")
        else:
            verb = "is" if problems == 1 else "are"
            self.verdict.setText(
                f"Training cannot work here until the {_plural(problems, 'problem')} below {verb} fixed."
            )
        self.verdict.setObjectName("verdictOk" if ok else "verdictBad")
        self._repolish(self.verdict)
        self.finished_checks.emit(ok)

    def _failed(self, exc: Exception) -> None:
        # run_checks reports a crashing check as a line; reaching here means the worker itself broke
        self.running = False
        self.progress.hide()
        self.again_button.setEnabled(True)
        self.copy_button.setEnabled(bool(self.checks))
        self.verdict.setText(
            f"The system check stopped: {type(exc).__name__}: {exc}. Run `lora-studio doctor` in a terminal for details."
        )
        self.verdict.setObjectName("verdictBad")
        self._repolish(self.verdict)
        self.finished_checks.emit(False)

    def report(self) -> str:
        """The findings as plain text, the way ``lora-studio doctor`` prints them."""
        lines = [
            f"{_WORDS.get(c.status, c.status):<8} {c.name:<18} {c.detail}"
            + (f"\n{'':<27} → {c.fix}" if c.fix else "")
            for c in self.checks
        ]
        return "\n".join([*lines, "", self.verdict.text()])

    def copy_report(self) -> None:
        clipboard = QGuiApplication.clipboard()
        if clipboard is not None:
            clipboard.setText(self.report())

    def _clear_rows(self) -> None:
        while self.rows.count():
            item = self.rows.takeAt(0)
            widget = item.widget() if item is not None else None
            if widget is not None:
                widget.deleteLater()

    @staticmethod
    def _repolish(widget: QWidget) -> None:
        widget.style().unpolish(widget)
        widget.style().polish(widget)
