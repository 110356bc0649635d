"""The answers of a prompt set, prompt × model, filled cell by cell as a worker answers them.

:class:`PromptSetWorker` runs ``core.prompt_set_run.run_prompt_set`` in its own thread (the chat
worker pattern: queued signals for each cell and each streamed piece, a ``cancel`` event that
stops within one token). :class:`PromptSetTable` draws streamed text a few times a second, not per
token, and exports the finished (or stopped) table as Markdown.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from PySide6.QtCore import QSize, Qt, QTimer, Signal, Slot
from PySide6.QtWidgets import (
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QProgressBar,
    QPushButton,
    QStyledItemDelegate,
    QStyleOptionViewItem,
    QTableWidget,
    QTableWidgetItem,
    QWidget,
)

from lora_studio.core.chat import (
    CellProgress,
    PromptSet,
    PromptSetResult,
    Reply,
    Sampling,
    run_prompt_set,
    slug,
)
from lora_studio.core.errors import LoraStudioError
from lora_studio.gui import workers
from lora_studio.gui.widgets.chat_view import reply_stats
from lora_studio.gui.widgets.forms import Card

FLUSH_MS = 50
PAD = 6  # horizontal padding of a cell, in pixels
DEFAULT_COLUMNS = ["Base model", "Fine-tuned"]


class PromptSetWorker(workers.Worker):
    """Answers a whole prompt set; ``returned`` carries the :class:`PromptSetResult`."""

    cell = Signal(object)  # CellProgress
    piece = Signal(int, int, str)  # (row, column, text)

    def __init__(
        self,
        chat: Any,
        prompt_set: PromptSet,
        sampling: Sampling,
        columns: list[tuple[str, bool]],
        **names: Any,
    ) -> None:
        super().__init__(lambda: self._run(chat, prompt_set, sampling, columns, names))
        self.cancel = threading.Event()

    def _run(
        self,
        chat: Any,
        prompt_set: PromptSet,
        sampling: Sampling,
        columns: list[tuple[str, bool]],
        names: Any,
    ) -> PromptSetResult:
        return run_prompt_set(
            chat,
            prompt_set,
            sampling,
            columns=columns,
            cancel=self.cancel,
            on_cell=lambda cell: self.send(self.cell, cell),
            on_piece=lambda row, column, text: self.send(self.piece, row, column, text),
            **names,
        )


class PromptSetTable(Card):
    """Emits ``run_requested`` (the page loads the model if needed, then calls :meth:`start`),
    ``failed(error)`` for its message bar and ``busy_changed(bool)``."""

    run_requested = Signal()
    failed = Signal(object)
    busy_changed = Signal(bool)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("Answers", parent)
        self.worker: PromptSetWorker | None = None
        self.result: PromptSetResult | None = None
        self.columns = list(DEFAULT_COLUMNS)
        self.started = 0.0
        self._buffer: dict[tuple[int, int], str] = {}
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(FLUSH_MS)
        self._timer.timeout.connect(self._flush)
        self.table = QTableWidget()
        self.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.table.setWordWrap(True)
        self.table.setAlternatingRowColors(True)
        self.table.setVerticalScrollMode(QTableWidget.ScrollMode.ScrollPerPixel)
        self.table.verticalHeader().setVisible(False)
        self.table.setStyleSheet(f"QTableWidget::item {{ padding: 4px {PAD}px; }}")
        self.table.setItemDelegate(_WrappedCell(self.table))
        # wrapped rows must grow and shrink with their columns (window resized, scroll bar shown)
        self._refit = QTimer(self)
        self._refit.setSingleShot(True)
        self._refit.setInterval(FLUSH_MS)
        self._refit.timeout.connect(self.table.resizeRowsToContents)
        self.table.horizontalHeader().sectionResized.connect(lambda *_: self._refit.start())
        self.table.horizontalHeader().setDefaultAlignment(Qt.AlignmentFlag.AlignLeft)
        self.progress = QProgressBar()
        self.progress.setFormat("%v of %m answers")
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.status = QLabel("Greedy answers by default: the same set gives the same table every time.")
        self.status.setObjectName("muted")
        self.status.setWordWrap(True)
        self.run_button = QPushButton("Run")
        self.run_button.setObjectName("primary")
        self.run_button.setToolTip("Answer every prompt with the base model and the fine-tune")
        self.run_button.clicked.connect(self.run_requested.emit)
        self.stop_button = QPushButton("Stop")
        self.stop_button.setToolTip("Stop now: the answers so far are kept and can be exported")
        self.stop_button.clicked.connect(self.stop)
        self.export_button = QPushButton("Export Markdown…")
        self.export_button.setToolTip(
            "Save the table as a Markdown file (model, adapter, settings and date on top)"
        )
        self.export_button.clicked.connect(lambda: self.export_markdown())
        self.add(self.table, 1)
        self.add(self.status)
        row = QHBoxLayout()
        row.addWidget(self.progress, 1)
        for button in (self.export_button, self.stop_button, self.run_button):
            row.addWidget(button)
        self.body.addLayout(row)
        self.show_prompts(PromptSet("", []))

    @property
    def running(self) -> bool:
        return self.worker is not None

    # -- table ------------------------------------------------------------------------------------

    def set_columns(self, labels: list[str]) -> None:
        """The model columns the next run will fill (one when no adapter is loaded)."""
        if labels != self.columns and not self.running:
            self.columns = list(labels)
            if self.result is None:
                self.show_prompts(PromptSet("", self._prompts()))

    def show_prompts(self, prompt_set: PromptSet) -> None:
        """Prompts with empty answers: what Run will fill. A shown result stays until the next run."""
        if self.running:
            return
        if self.result is not None:
            self.status.setText("The table shows the last run: Run again to answer the edited prompts.")
            return
        self._build(prompt_set.prompts)

    def _prompts(self) -> list[str]:
        return [self.table.item(row, 0).text() for row in range(self.table.rowCount())]

    def _build(self, prompts: list[str]) -> None:
        table = self.table
        table.clear()
        table.setColumnCount(1 + len(self.columns))
        table.setHorizontalHeaderLabels(["Prompt", *self.columns])
        table.setRowCount(len(prompts))
        for row, prompt in enumerate(prompts):
            for column, text in enumerate([prompt] + [""] * len(self.columns)):
                item = QTableWidgetItem(text)
                item.setTextAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
                table.setItem(row, column, item)
        table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        table.resizeRowsToContents()
        self.progress.setRange(0, max(len(prompts) * len(self.columns), 1))
        self.progress.setValue(0)
        self._update_buttons()

    def _set_cell(self, row: int, column: int, text: str, tip: str = "") -> None:
        item = self.table.item(row, column + 1)
        if item is not None:
            item.setText(text)
            item.setToolTip(tip)
            self.table.resizeRowToContents(row)

    # -- running ----------------------------------------------------------------------------------

    def start(self, chat: Any, prompt_set: PromptSet, sampling: Sampling, **names: Any) -> PromptSetWorker:
        """Answer ``prompt_set`` on ``chat`` in a worker; cells fill as answers stream in."""
        from lora_studio.core.chat import default_columns

        columns = default_columns(chat)
        self.columns, self.result = [label for label, _ in columns], None
        self._build(prompt_set.prompts)
        self.started = time.monotonic()
        worker = PromptSetWorker(chat, prompt_set, sampling, columns, **names)
        worker.cell.connect(self._on_cell)
        worker.piece.connect(self._on_piece)
        self.worker = worker
        self._update_buttons()
        self.busy_changed.emit(True)
        workers.start(worker, on_returned=self._finished, on_errored=self.failed.emit, on_finished=self._done)
        return worker

    def stop(self) -> None:
        if self.worker is not None:
            self.worker.cancel.set()

    @Slot(object)
    def _on_cell(self, cell: CellProgress) -> None:
        prompt = " ".join(self.table.item(cell.row, 0).text().split())
        if cell.reply is None:
            self._set_cell(cell.row, cell.column, "…")
            self.table.scrollToItem(self.table.item(cell.row, cell.column + 1))
            short = prompt if len(prompt) <= 60 else prompt[:59] + "…"
            self.status.setText(
                f"Answering {cell.index} of {cell.total}: {self.columns[cell.column]} · {short}"
            )
            return
        self._flush()
        self._buffer.pop((cell.row, cell.column), None)
        self._set_cell(cell.row, cell.column, _cell_text(cell.reply), reply_stats(cell.reply))
        self.progress.setValue(cell.index)

    @Slot(int, int, str)
    def _on_piece(self, row: int, column: int, text: str) -> None:
        self._buffer[(row, column)] = self._buffer.get((row, column), "") + text
        if not self._timer.isActive():
            self._timer.start()

    def _flush(self) -> None:
        for (row, column), text in self._buffer.items():
            self._set_cell(row, column, text.strip() + " ▍")
        # keep the text: a cell's pieces accumulate until its answer is complete

    def _finished(self, result: PromptSetResult) -> None:
        self.result = result
        self.table.resizeRowsToContents()
        seconds = round(time.monotonic() - self.started)
        took = f"{seconds // 60} min {seconds % 60} s" if seconds >= 120 else f"{seconds} s"
        if result.stopped:
            self.status.setText(f"Stopped after {result.done} of {result.total} answers ({took}).")
        else:
            self.status.setText(f"Done: {result.total} answers in {took} · {result.model}")

    def _done(self) -> None:
        self._timer.stop()
        self._buffer.clear()
        if self.result is None:  # failed: cells that were being written are not answers
            for row in range(self.table.rowCount()):
                for column in range(len(self.columns)):
                    if self.table.item(row, column + 1).text().endswith(("▍", "…")):
                        self._set_cell(row, column, "")
            self.status.setText("Not finished: see the message above.")
        self.worker = None
        self._update_buttons()
        self.busy_changed.emit(False)

    def export_markdown(self, path: str | None = None) -> str | None:
        """Write the table as Markdown (a file dialog when ``path`` is None); the path written."""
        if self.result is None:
            return None
        if path is None:
            path, _ = QFileDialog.getSaveFileName(
                self, "Export the table as Markdown", f"{slug(self.result.name)}.md", "Markdown (*.md)"
            )
            if not path:
                return None
        try:
            written = self.result.write_markdown(path)
        except LoraStudioError as exc:
            self.failed.emit(exc)
            return None
        self.status.setText(f"Exported to {written}")
        return str(written)

    def _update_buttons(self) -> None:
        self.run_button.setEnabled(not self.running)
        self.stop_button.setEnabled(self.running)
        self.export_button.setEnabled(not self.running and self.result is not None and self.result.done > 0)


class _WrappedCell(QStyledItemDelegate):
    """Row heights for wrapped text at the width it is really drawn in: the style sheet's padding
    is added to the size hint but not taken off the wrapping width, which cut the last line."""

    def sizeHint(self, option: QStyleOptionViewItem, index: Any) -> QSize:
        narrower = QStyleOptionViewItem(option)
        narrower.rect.setWidth(max(option.rect.width() - 2 * PAD, 1))
        return super().sizeHint(narrower, index)


def _cell_text(reply: Reply) -> str:
    text = reply.text or "(empty answer)"
    return f"{text} [stopped]" if reply.stopped else text
