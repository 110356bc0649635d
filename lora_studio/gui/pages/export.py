"""Export page: a run, checkpoint or adapter folder → adapter, merged model, GGUF, GGUF LoRA, Modelfile.

Every change re-plans in a background task (``plan_export``: targets, disk needed and free, peak
memory, refusals such as existing files without Overwrite) and the plan is shown before anything
is written; the plan also sizes every GGUF type for this base model, which the type list shows.
Export runs ``run_export`` in a worker; its progress events arrive as queued signals. Each format
is verified by reloading it, and the results table shows passed/failed, which reader checked it,
and the figures.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, QUrl, Signal, Slot
from PySide6.QtGui import QDesktopServices
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QStyledItemDelegate,
    QStyleOptionViewItem,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from lora_studio.core.export import DTYPES, FORMATS
from lora_studio.core.export.types import DEFAULT_QUANT
from lora_studio.gui import workers
from lora_studio.gui.pages import Page
from lora_studio.gui.widgets.forms import Card
from lora_studio.gui.widgets.gguf_types import GGUFTypeList, gguf_sizes
from lora_studio.gui.widgets.sources import SourcePicker

FORMAT_LABELS = {
    "adapter": "Adapter (PEFT folder, small)",
    "merged": "Merged model (Hugging Face folder)",
    "gguf": "GGUF model (llama.cpp, Ollama)",
    "gguf-adapter": "GGUF LoRA adapter (llama.cpp --lora)",
    "modelfile": "Ollama Modelfile (beside the GGUF)",
}
DTYPE_LABELS = {"auto": "Same as the base model", "bf16": "bf16", "fp16": "fp16", "fp32": "fp32"}


def size_text(count: float) -> str:
    from lora_studio.core.export import size_text as text

    return text(count)


def plan_text(plan: Any) -> str:
    """What will be written, one line a file, named relative to the output folder (full paths wrapped
    mid-name in the card), with each GGUF's size and the GGUF the Modelfile runs."""
    from lora_studio.core.export.plan import gguf_name

    lines = [f"Source: {plan.source.adapter_dir} (base {plan.base_name})", f"Into {plan.out_dir}:"]
    sizes = {choice.quant: choice.file_bytes for choice in plan.gguf_choices}
    for fmt in plan.formats:
        for i, target in enumerate(plan.targets.get(fmt, [])):
            name = target.name + ("/" if fmt in ("adapter", "merged") else "")
            if target.parent != plan.out_dir:
                name = str(target)
            what = ""
            if fmt == "gguf" and plan.quants[i] in sizes:
                what = f" ({size_text(sizes[plan.quants[i]])})"
            elif fmt == "modelfile":  # Ollama's FROM line names the GGUF of the first quant
                what = f" (runs {gguf_name(plan.source.name, plan.quants[0])})"
            replaced = " — will be replaced" if target.exists() else ""
            lines.append(f"• {fmt} → {name}{what}{replaced}")
    memory = f" · peak memory about {size_text(plan.peak_memory)}" if plan.peak_memory else ""
    lines.append(
        f"Needs {size_text(plan.disk_needed)} of disk ({size_text(plan.disk_free)} free){memory} "
        f"({size_text(plan.memory_available)} available)"
    )
    lines += [f"⚠ {w}" for w in plan.warnings]
    return "\n".join(lines)


@dataclass
class Refusal:
    """A plan that cannot start, and what every GGUF type would cost for its base model."""

    error: Exception
    gguf_choices: list[Any]


class ElideMiddle(QStyledItemDelegate):
    """A file name elided in the middle: "<run>-q4_k_m.gguf" must keep its type, at the end."""

    def initStyleOption(self, option: QStyleOptionViewItem, index: Any) -> None:
        super().initStyleOption(option, index)
        option.textElideMode = Qt.TextElideMode.ElideMiddle


class ExportWorker(workers.Worker):
    progress = Signal(object)  # ExportProgress

    def __init__(self, plan: Any) -> None:
        super().__init__(lambda: self._export())
        self.plan = plan
        self.cancel = threading.Event()

    def _export(self) -> Any:
        from lora_studio.core.export import run_export
        from lora_studio.gui.jobs import ensure_libraries

        ensure_libraries()
        return run_export(
            self.plan, verify=True, cancel=self.cancel, progress=lambda *a: self.send(self.progress, *a)
        )


class ExportPage(Page):
    key = "export"
    title = "Export"
    summary = "Save a run's adapter for sharing, merge it into the model, or make GGUF files for llama.cpp and Ollama."
    icon = "export"

    def __init__(self, state: Any, runs: Any, parent: QWidget | None = None) -> None:
        super().__init__(state, runs, parent)
        self.plan: Any = None
        self.report: Any = None
        self.worker: ExportWorker | None = None
        self._auto_out = True
        self.task = workers.BackgroundTask(self, delay_ms=300)
        left = QVBoxLayout()
        left.addWidget(self._source_card())
        left.addWidget(self._plan_card(), 1)
        top = QHBoxLayout()
        top.addLayout(left, 3)
        top.addWidget(self._formats_card(), 2)
        self.content.addLayout(top)
        self.content.addWidget(self._progress_card(), 1)
        self.picker.refresh(state.config.output.runs_dir)
        self._source_chosen(self.picker.choice())
        self._update_buttons()

    # -- layout -----------------------------------------------------------------------------------

    def _source_card(self) -> Card:
        card = Card("What to export")
        self.picker = SourcePicker(base=False)
        self.picker.chosen.connect(self._source_chosen)
        card.add(self.picker)
        self.out_dir = QLineEdit()
        self.out_dir.setPlaceholderText("Output folder")
        self.out_dir.textEdited.connect(self._out_edited)
        self.out_dir.textChanged.connect(self.replan)
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse)
        row = QHBoxLayout()
        row.addWidget(QLabel("Output folder"))
        row.addWidget(self.out_dir, 1)
        row.addWidget(browse)
        card.body.addLayout(row)
        self.overwrite = QCheckBox("Overwrite what is already in the output folder")
        self.overwrite.toggled.connect(self.replan)
        card.add(self.overwrite)
        return card

    def _formats_card(self) -> Card:
        card = Card("Formats")
        self.gguf_types = GGUFTypeList()
        self.format_boxes: dict[str, QCheckBox] = {}
        for fmt in FORMATS:
            box = QCheckBox(FORMAT_LABELS[fmt])
            box.setChecked(fmt == "adapter")
            box.toggled.connect(self.replan)
            self.format_boxes[fmt] = box
            if fmt == "modelfile":  # which GGUF it runs, when several are ticked
                row = QHBoxLayout()
                row.addWidget(box)
                row.addWidget(self.gguf_types.modelfile_row)
                row.addStretch(1)
                card.body.addLayout(row)
            else:
                card.add(box)
        row = QHBoxLayout()
        self.dtype = QComboBox()
        for name in DTYPES:
            self.dtype.addItem(DTYPE_LABELS[name], name)
        self.dtype.currentIndexChanged.connect(self.replan)
        row.addWidget(QLabel("Merged weights"))
        row.addWidget(self.dtype, 1)
        card.body.addLayout(row)
        heading = QLabel("GGUF types — hover one for what it is for")
        heading.setObjectName("muted")
        card.add(heading)
        self.gguf_types.changed.connect(self.replan)
        self.quant_boxes = self.gguf_types.boxes
        card.add(self.gguf_types)
        card.body.addStretch(1)
        return card

    def _plan_card(self) -> Card:
        card = Card("Plan")
        self.plan_text = QLabel("Choose what to export.")
        self.plan_text.setWordWrap(True)
        self.plan_text.setObjectName("muted")
        card.add(self.plan_text)
        row = QHBoxLayout()
        self.start_button = QPushButton("Export")
        self.start_button.setObjectName("primary")
        self.start_button.clicked.connect(self.start)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self.cancel)
        self.open_button = QPushButton("Open folder")
        self.open_button.clicked.connect(self.open_folder)
        for button in (self.start_button, self.cancel_button, self.open_button):
            row.addWidget(button)
        row.addStretch(1)
        card.body.addLayout(row)
        card.body.addStretch(1)
        return card

    def _progress_card(self) -> Card:
        card = Card("Progress and verification")
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        card.add(self.progress)
        self.log = QPlainTextEdit()
        self.log.setReadOnly(True)
        self.log.setMaximumHeight(100)
        card.add(self.log)
        self.results = QTreeWidget()
        # "File" is relative to the output folder the plan names (the full path is its tooltip): full
        # paths left the file name elided away
        self.results.setHeaderLabels(["Format", "File", "Size", "Verification", "Checked with", "Figures"])
        self.results.setRootIsDecorated(False)
        for column, width in enumerate((100, 300, 80, 90, 260)):
            self.results.setColumnWidth(column, width)
        self.results.setItemDelegateForColumn(1, ElideMiddle(self.results))
        self.results.setMinimumHeight(8 * self.results.fontMetrics().height())  # 5 formats + header
        card.add(self.results, 1)
        return card

    # -- planning ---------------------------------------------------------------------------------

    def page_shown(self) -> None:
        if self.worker is None:
            before = self.picker.choice()
            self.picker.refresh(self.state.config.output.runs_dir)
            # re-plan when there is no plan (e.g. a run just finished) or the source list changed —
            # but not right after an export, whose "✓ Exported" stays until something is changed
            exported = self.report is not None and self.plan is None
            if (self.plan is None and not exported) or self.picker.choice() != before:
                self._source_chosen(self.picker.choice())

    def _source_chosen(self, choice: tuple[str, str]) -> None:
        kind, path = choice
        self.gguf_types.clear_sizes()  # another source may have another base model
        if self._auto_out and path:
            folder = Path(path)
            if kind == "checkpoint":
                folder = folder.parent.parent
            self.out_dir.setText(
                str(folder / "export" if kind != "folder" else folder.with_name(f"{folder.name}-export"))
            )
        self.replan()

    def _out_edited(self, _text: str) -> None:
        self._auto_out = False

    def _browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Choose the output folder", self.out_dir.text())
        if folder:
            self._auto_out = False
            self.out_dir.setText(folder)

    def selected_formats(self) -> list[str]:
        return [fmt for fmt, box in self.format_boxes.items() if box.isChecked()]

    def selected_quants(self) -> list[str]:
        """The ticked GGUF types as ``plan_export`` takes them: the Modelfile's GGUF first."""
        return self.gguf_types.quants() or [DEFAULT_QUANT]

    def replan(self, *_args: Any) -> None:
        if self.worker is not None:
            return
        kind, path = self.picker.choice()
        self.plan = None
        self._update_buttons()
        if kind in ("base", "browse") or not path:
            self.plan_text.setText("Choose a run, a checkpoint or an adapter folder to export.")
            return
        formats, out = self.selected_formats(), self.out_dir.text().strip()
        quants = self.selected_quants()
        dtype, overwrite = self.dtype.currentData(), self.overwrite.isChecked()
        if not formats or not out:
            self.plan_text.setText("Choose at least one format and an output folder.")
            return
        if {"gguf", "modelfile"} & set(formats) and not self.gguf_types.checked():
            self.plan_text.setText("Choose at least one GGUF type.")
            return
        self.plan_text.setText("Planning…")

        def make_plan(_cancel: threading.Event) -> Any:
            from lora_studio.core.errors import LoraStudioError
            from lora_studio.core.export import plan_export
            from lora_studio.gui.jobs import ensure_libraries

            ensure_libraries()
            try:
                return plan_export(path, formats, out, dtype=dtype, quant=quants, overwrite=overwrite)
            except LoraStudioError as exc:
                # the sizes depend on the base model only: a refusal (often "already exists", on
                # coming back after an export) must not hide them
                return Refusal(exc, gguf_sizes(path))

        self.task.request(make_plan, self._planned, self._plan_failed)

    def _planned(self, plan: Any) -> None:
        if isinstance(plan, Refusal):
            self.gguf_types.show_choices(plan.gguf_choices)
            self._plan_failed(plan.error)
            return
        self.plan = plan
        self.messages.clear()
        self.plan_text.setText(plan_text(plan))
        self.gguf_types.show_choices(plan.gguf_choices)
        self._update_buttons()

    def _plan_failed(self, error: Exception) -> None:
        from lora_studio.core.export import TargetsExistError

        self.plan = None
        self.plan_text.setText("This export cannot start: see the message above.")
        if isinstance(error, TargetsExistError):  # not a failure: the files are there already
            self.messages.show_message(
                "info",
                "Already in the output folder",
                error.message,
                "tick Overwrite to replace them, or choose another output folder",
            )
        else:
            self.messages.show_error(error)
        self._update_buttons()

    # -- export -----------------------------------------------------------------------------------

    def start(self) -> None:
        if self.plan is None or self.worker is not None:
            return
        self.report = None
        self.results.clear()
        self.log.clear()
        self.messages.clear()
        self._steps: set[tuple[str, str | None]] = set()
        self.progress.setRange(0, 2 * len(self.plan.formats) + 1)
        self.progress.setValue(0)
        worker = ExportWorker(self.plan)
        worker.progress.connect(self._on_progress)
        self.worker = worker
        self._update_buttons()
        workers.start(worker, on_returned=self._finished, on_errored=self._failed, on_finished=self._ended)

    def cancel(self) -> None:
        if self.worker is not None:
            self.worker.cancel.set()
            self.log.appendPlainText("Cancelling after the current step…")

    @Slot(object)
    def _on_progress(self, event: Any) -> None:
        if event.done and event.total and event.done < event.total:
            return  # byte-level ticks: the bar counts steps, the log says what happens
        self.log.appendPlainText(f"{event.stage}: {event.message}")
        if event.stage in ("load", "write", "verify"):
            self._steps.add((event.stage, event.format))
        # the step that just began is not done: the bar shows the ones before it, and reaches the
        # end only when the report arrives (it stood at 100% through the last verification)
        done = max(0, len(self._steps) - 1)
        self.progress.setValue(min(done, self.progress.maximum() - 1))

    def _finished(self, report: Any) -> None:
        self.report = report
        if report.status == "completed":
            self.progress.setValue(self.progress.maximum())
        for result in report.results:
            check = result.verification
            verdict = "not checked" if check is None else ("passed" if check.passed else "failed")
            method = "" if check is None else check.method  # which reader reloaded it, in the core's words
            figures = "" if check is None else check.summary()
            if check is not None and check.problems:
                figures = "; ".join(check.problems) + (f" ({figures})" if figures else "")
            out, path = report.plan.out_dir, Path(result.path)
            name = str(path.relative_to(out) if path.is_relative_to(out) else path)
            name += "/" if path.is_dir() else ""
            item = QTreeWidgetItem(
                [result.format, name, size_text(result.size_bytes), verdict, method, figures]
            )
            item.setToolTip(1, result.path)
            item.setToolTip(3, f"Checked with {method}" if method else "Not reloaded")
            item.setToolTip(4, method)
            item.setToolTip(5, "\n".join([t for t in (figures, *result.notes) if t]))
            self.results.addTopLevelItem(item)
        verified = {True: "every format verified", False: "a verification FAILED", None: "not verified"}
        self.log.appendPlainText(
            f"Export {report.status} in {report.seconds:.1f} s: {verified[report.verified]}"
        )
        if report.verified is False:
            self.messages.show_message(
                "warning", "Verification failed", "An exported file does not behave like the fine-tuned model.",
                "see the Figures column; the files were kept for inspection",
            )  # fmt: skip

    def _failed(self, error: Exception) -> None:
        self.log.appendPlainText("Export failed: nothing incomplete was left in the output folder.")
        self.messages.show_error(error)

    def _ended(self) -> None:
        self.worker = None
        self._update_buttons()
        if self.report is not None and not self.overwrite.isChecked():
            self.plan_text.setText(
                self.plan_text.text() + "\n✓ Exported. Tick Overwrite to export here again."
            )
            self.plan = None
            self._update_buttons()

    def open_folder(self) -> None:
        QDesktopServices.openUrl(QUrl.fromLocalFile(self.out_dir.text().strip()))

    def _update_buttons(self) -> None:
        running = self.worker is not None
        self.start_button.setEnabled(self.plan is not None and not running)
        self.cancel_button.setEnabled(running)
        self.open_button.setEnabled(
            not running and Path(self.out_dir.text().strip() or "/nonexistent").is_dir()
        )
        for widget in (self.picker, self.out_dir, self.overwrite, *self.format_boxes.values(), self.dtype):
            widget.setEnabled(not running)
        formats = set(self.selected_formats())
        self.gguf_types.set_modelfile("modelfile" in formats)
        # the types matter to a GGUF and to the Modelfile beside one; greyed out otherwise
        self.gguf_types.setEnabled(not running and bool({"gguf", "modelfile"} & formats))
        self.gguf_types.modelfile_row.setEnabled(not running)


PAGE = ExportPage
