"""Runs page: every run folder in a sortable, filterable table; follow one, compare several.

The table is read in the background (a run's metrics file may be large) and re-read when the runs
folder changes (a file-system watcher) or, while a listed run is running, on a light timer. Selecting
runs draws them in :class:`RunCompare`; a running run — started here, by the CLI or by another
window — keeps growing there as its ``metrics.jsonl`` grows. The actions act on the selection:
open its folder, resume it, load its settings into the Train page, rename it, delete it.
"""

from __future__ import annotations

import shutil
import threading
from datetime import datetime
from pathlib import Path
from typing import Any

from PySide6.QtCore import QFile, QFileSystemWatcher, Qt, QTimer, QUrl
from PySide6.QtGui import QDesktopServices
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHBoxLayout,
    QHeaderView,
    QInputDialog,
    QLineEdit,
    QMessageBox,
    QPushButton,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QWidget,
)

from lora_studio.core.paths import runs_dir as default_runs_dir
from lora_studio.core.runs import LIVE_STATES, RunFolder, config_diff, list_runs
from lora_studio.core.train import format_duration
from lora_studio.gui.pages import PAGES, Page
from lora_studio.gui.pages.train_method import NAMES as METHOD_NAMES
from lora_studio.gui.workers import BackgroundTask

COLUMNS = ["Name", "Status", "Model", "Quant.", "Dataset", "Method", "Steps", "Loss", "Eval loss", "Duration", "Peak memory", "Created"]  # fmt: skip
#: How often running runs are re-read (their metrics and status).
FOLLOW_MS = 1000
RESUMABLE = ("interrupted", "cancelled", "failed")


class _Item(QTableWidgetItem):
    """A cell that sorts by its value (numbers as numbers, missing values last)."""

    def __init__(self, text: str, key: Any) -> None:
        super().__init__(text)
        self.key = key

    def __lt__(self, other: QTableWidgetItem) -> bool:
        mine, theirs = self.key, getattr(other, "key", None)
        if mine is None or theirs is None:
            return theirs is None and mine is not None
        try:
            return mine < theirs
        except TypeError:
            return str(mine) < str(theirs)


def _number(value: Any, fmt: str = "{:.4f}") -> str:
    return "—" if value is None else fmt.format(value)


def _row(s: dict[str, Any]) -> list[tuple[str, Any]]:
    name = Path(s["path"]).name
    steps = f"{s.get('step') or 0} / {s['total_steps']}" if s.get("total_steps") else str(s.get("step") or 0)
    peak = s.get("peak_memory")
    created = s.get("started_at")
    return [
        (name.split("-", 2)[-1] if name[:8].isdigit() else name, name),
        (s.get("state") or "?", s.get("state") or ""),
        (Path(str(s.get("model") or "")).name or str(s.get("model")), s.get("model")),
        (s.get("quantization") or "none", s.get("quantization") or ""),
        (Path(str(s.get("data") or "")).name, s.get("data")),
        (METHOD_NAMES.get(s.get("method") or "", s.get("method") or "—"), s.get("method")),
        (steps, s.get("step") or 0),
        (_number(s.get("final_loss")), s.get("final_loss")),
        (_number(s.get("final_eval_loss")), s.get("final_eval_loss")),
        (format_duration(s.get("duration_s")), s.get("duration_s")),
        (_number(peak / 1024**3 if peak else None, "{:.2f} GB"), peak),
        (datetime.fromtimestamp(created).strftime("%Y-%m-%d %H:%M") if created else "—", created or 0),
    ]


def _summaries(root: Path, cancel: threading.Event) -> list[dict[str, Any]]:
    rows = []
    for run in list_runs(root):
        if cancel.is_set():
            break
        try:
            summary = run.summary()
            summary["method"] = run.config_with_notes()[0].training.method  # SFT, DPO, … at a glance
            rows.append(summary)
        except Exception as exc:  # one unreadable folder must not hide the others
            rows.append(
                {"run_id": run.run_id, "path": str(run.path), "state": "unreadable", "notes": [str(exc)]}
            )
    return rows


def move_to_trash(path: Path) -> None:
    """The system trash where there is one (the user can undo), else delete."""
    if not QFile.moveToTrash(str(path)):
        shutil.rmtree(path)


class RunsPage(Page):
    key = "runs"
    title = "Runs"
    summary = "Every training run: follow one as it trains, compare several, resume or clean up."
    icon = "runs"

    def __init__(self, state: Any, runs: Any, parent: QWidget | None = None) -> None:
        super().__init__(state, runs, parent)
        self.filter = QLineEdit()
        self.filter.setPlaceholderText("Filter by name, model, dataset or status…")
        self.filter.setClearButtonEnabled(True)
        self.filter.textChanged.connect(self._apply_filter)
        self.buttons: dict[str, QPushButton] = {}
        bar = QHBoxLayout()
        bar.addWidget(self.filter, 1)
        for key, text, tip, slot in (
            ("open", "Open folder", "Show the run folder in the file manager.", self.open_folder),
            (
                "resume",
                "Resume",
                "Continue an interrupted or stopped run from its last checkpoint.",
                self.resume,
            ),
            ("chat", "Use in Chat", "Talk to this run's final adapter on the Chat page.", self.use_in_chat),
            (
                "evaluate",
                "Evaluate…",
                "Measure this run on held-out data against its base model, on the Evaluate page.",
                self.evaluate,
            ),
            (
                "duplicate",
                "Duplicate settings",
                "Load this run's settings into the Train page.",
                self.duplicate,
            ),
            ("rename", "Rename…", "Rename the run folder (not while it runs).", self.rename),
            ("delete", "Delete…", "Move the selected runs to the trash.", self.delete),
        ):
            button = QPushButton(text)
            button.setToolTip(tip)
            button.clicked.connect(lambda _=False, s=slot: s())
            bar.addWidget(button)
            self.buttons[key] = button
        self.buttons["chat"].setVisible("chat" in PAGES)
        self.buttons["evaluate"].setVisible("evaluate" in PAGES)
        self.content.addLayout(bar)
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setObjectName("runsTable")
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().hide()
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.setSortingEnabled(True)
        self.table.sortByColumn(COLUMNS.index("Created"), Qt.SortOrder.DescendingOrder)
        self.table.itemSelectionChanged.connect(self._on_selection)
        from lora_studio.gui.widgets.run_compare import RunCompare  # pyqtgraph: only when built

        self.compare = RunCompare()
        from lora_studio.gui.widgets.eval_runs import EvaluationList

        self.evaluations = EvaluationList()
        self.evaluations.open_requested.connect(self.open_evaluation)
        self.compare.tabs.addTab(self.evaluations, "Evaluations")
        splitter = QSplitter(Qt.Orientation.Vertical)
        splitter.addWidget(self.table)
        splitter.addWidget(self.compare)
        splitter.setSizes([230, 560])
        self.content.addWidget(splitter, 1)
        self.summaries: dict[str, dict[str, Any]] = {}
        self.tails: dict[str, Any] = {}  # run id -> MetricsTail of the shown runs
        self.samples: dict[str, list[dict[str, Any]]] = {}
        self.listing = BackgroundTask(self, delay_ms=150)
        self.reader = BackgroundTask(self)
        self.watcher = QFileSystemWatcher(self)
        self.watcher.directoryChanged.connect(lambda _path: self.refresh())
        self.follow_timer = QTimer(self)
        self.follow_timer.setInterval(FOLLOW_MS)
        self.follow_timer.timeout.connect(self._follow)
        self.follow_timer.start()
        runs.ended.connect(lambda _outcome: self.refresh())
        state.config_changed.connect(lambda _c, changed: "output.runs_dir" in changed and self.refresh())
        self._update_buttons()
        self.refresh()

    # -- listing ------------------------------------------------------------------------------

    def root(self) -> Path:
        return Path(self.state.config.output.runs_dir or default_runs_dir()).expanduser()

    def refresh(self) -> None:
        """Re-read the run list in the background (debounced: a burst of changes reads once)."""
        root = self.root()
        watched = self.watcher.directories()
        if str(root) not in watched:
            if watched:
                self.watcher.removePaths(watched)
            if root.is_dir():
                self.watcher.addPath(str(root))
        self.listing.request(
            lambda cancel: _summaries(root, cancel), self._show_rows, self.messages.show_error
        )

    def _show_rows(self, rows: list[dict[str, Any]]) -> None:
        selected = set(self.selected_ids())
        self.summaries = {r["run_id"]: r for r in rows}
        table = self.table
        table.blockSignals(True)
        table.clearSelection()  # restored by run id below: rows move when the list changes
        table.setSortingEnabled(False)
        table.setRowCount(len(rows))
        for i, summary in enumerate(rows):
            cells = _row(summary) if "model" in summary else [(summary["run_id"], summary["run_id"])]
            for col in range(len(COLUMNS)):
                text, key = cells[col] if col < len(cells) else ("—", None)
                item = _Item(text, key)
                item.setData(Qt.ItemDataRole.UserRole, summary["run_id"])
                notes = summary.get("notes") or []
                tip = summary["path"] + ("\n" + "\n".join(notes) if notes else "")
                if summary.get("error"):
                    tip += f"\n{summary['error']}"
                item.setToolTip(tip)
                table.setItem(i, col, item)
        table.setSortingEnabled(True)
        for i in range(table.rowCount()):
            if table.item(i, 0).data(Qt.ItemDataRole.UserRole) in selected:
                table.setRangeSelected(_whole_row(table, i), True)
        table.blockSignals(False)
        self._apply_filter(self.filter.text())
        if self.selected_ids() != sorted(selected):
            self._on_selection()
        else:
            self._update_buttons()

    def _apply_filter(self, text: str) -> None:
        words = text.lower().split()
        for i in range(self.table.rowCount()):
            row = " ".join(
                f"{self.table.item(i, c).text()} {self.table.item(i, c).key}" for c in range(len(COLUMNS))
            ).lower()
            self.table.setRowHidden(i, not all(w in row for w in words))

    def selected_ids(self) -> list[str]:
        rows = {index.row() for index in self.table.selectionModel().selectedRows()}
        return sorted(self.table.item(r, 0).data(Qt.ItemDataRole.UserRole) for r in rows)

    def select(self, run_ids: list[str]) -> None:
        """Select these runs (by id) in the table, as a user's (Ctrl-)clicks would."""
        self.table.clearSelection()
        for i in range(self.table.rowCount()):
            if self.table.item(i, 0).data(Qt.ItemDataRole.UserRole) in run_ids:
                self.table.setRangeSelected(_whole_row(self.table, i), True)

    # -- follow and compare ---------------------------------------------------------------------

    def _on_selection(self) -> None:
        self._update_buttons()
        ids = self.selected_ids()
        paths = {i: Path(self.summaries[i]["path"]) for i in ids if i in self.summaries}
        self.evaluations.show_runs(paths)
        from lora_studio.gui.widgets.run_compare import MetricsTail

        self.tails = {i: MetricsTail(p / "metrics.jsonl") for i, p in paths.items()}
        self.compare.set_runs(list(paths), {i: [] for i in paths})
        tails = dict(self.tails)

        def load(cancel: threading.Event) -> tuple[dict[str, int], dict[str, Any], dict[str, Any]]:
            counts = {i: tail.read_new() for i, tail in tails.items()}
            folders = [RunFolder(p) for p in paths.values()]
            diff = config_diff(folders, only_different=len(folders) > 1) if folders else {}
            samples = {i: RunFolder(p).samples() for i, p in paths.items()}
            return counts, diff, samples

        def loaded(result: tuple[dict[str, int], dict[str, Any], dict[str, Any]]) -> None:
            _counts, diff, samples = result
            if any(self.tails.get(i) is not t for i, t in tails.items()):
                return  # the selection changed meanwhile
            self.compare.set_runs(list(paths), {i: list(t.records) for i, t in tails.items()})
            self.compare.set_diff(list(paths), diff)
            self.compare.set_samples(list(paths), samples)
            notes = [f"{i}: {n}" for i in paths for n in self.summaries[i].get("notes") or []]
            if notes:
                self.messages.show_message(
                    "info", "Settings from an older version", "\n".join(notes[:8]), "they are shown as read"
                )

        self.reader.request(load, loaded, self.messages.show_error)

    def _follow(self) -> None:
        """Re-read running runs: new metrics for the shown ones, and the table (status, loss)."""
        if not self.isVisible() and not self.tails:
            return
        running = [i for i, s in self.summaries.items() if s.get("state") in LIVE_STATES]
        if not running or self.listing.busy or self.reader.busy:
            return
        followed = {i: t for i, t in self.tails.items() if i in running}
        if followed:

            def read(cancel: threading.Event) -> dict[str, list[dict[str, Any]]]:
                out = {}
                for i, tail in followed.items():
                    before = len(tail.records)
                    tail.read_new()
                    out[i] = tail.records[before:]
                return out

            def got(new: dict[str, list[dict[str, Any]]]) -> None:
                for i, records in new.items():
                    if self.tails.get(i) is followed[i]:
                        self.compare.add_records(i, records)

            self.reader.request(read, got)
        self.refresh()

    # -- actions --------------------------------------------------------------------------------

    def _update_buttons(self) -> None:
        ids = self.selected_ids()
        states = [self.summaries.get(i, {}).get("state") for i in ids]
        one = len(ids) == 1
        self.buttons["open"].setEnabled(one)
        self.buttons["resume"].setEnabled(one and states[0] in RESUMABLE and not self.runs.active)
        adapter = (
            one and Path(self.summaries.get(ids[0], {}).get("path", "")) / "adapter" / "adapter_config.json"
        )
        self.buttons["chat"].setEnabled(bool(adapter) and adapter.is_file())
        self.buttons["evaluate"].setEnabled(one and states[0] not in (*LIVE_STATES, "unreadable"))
        self.buttons["duplicate"].setEnabled(one and states[0] != "unreadable")
        self.buttons["rename"].setEnabled(one and states[0] not in LIVE_STATES)
        self.buttons["delete"].setEnabled(bool(ids) and not set(LIVE_STATES) & set(states))

    def _selected_folder(self) -> RunFolder | None:
        ids = self.selected_ids()
        return RunFolder(Path(self.summaries[ids[0]]["path"])) if len(ids) == 1 else None

    def open_folder(self) -> None:
        folder = self._selected_folder()
        if folder is not None:
            QDesktopServices.openUrl(QUrl.fromLocalFile(str(folder.path)))

    def resume(self) -> bool:
        folder = self._selected_folder()
        if folder is None or self.runs.active:
            return False
        try:
            config, _notes = folder.config_with_notes()
        except Exception as exc:
            self.messages.show_error(exc)
            return False
        started = self.runs.start(config, resume_dir=str(folder.path))
        if started:
            self.navigate.emit("train")
        return started

    def use_in_chat(self) -> bool:
        """Show the Chat page with this run's final adapter chosen (it loads in the background)."""
        folder = self._selected_folder()
        chat = getattr(self.window(), "pages", {}).get("chat") if "chat" in PAGES else None
        if folder is None or chat is None:
            return False
        self.navigate.emit("chat")  # the window shows it; showing it re-reads its list of runs
        chat.refresh_sources()
        chat.picker.select("run", str(folder.path))
        return chat.picker.choice() == ("run", str(folder.path))

    def evaluate(self, run_dir: Path | None = None) -> Any:
        """Show the Evaluate page with this run chosen (its adapter vs its base, on its held-out data);
        returns the page, or None."""
        folder = self._selected_folder()
        run_dir = run_dir or (folder.path if folder else None)
        page = getattr(self.window(), "pages", {}).get("evaluate") if "evaluate" in PAGES else None
        if run_dir is None or page is None:
            return None
        self.navigate.emit("evaluate")
        page.evaluate_run(run_dir)
        return page

    def open_evaluation(self, evaluation: dict[str, Any]) -> None:
        """A saved evaluation (double-clicked in the Evaluations tab) in full on the Evaluate page."""
        page = self.evaluate(Path(evaluation["path"]).parent.parent)
        if page is not None:
            page.show_saved(evaluation)

    def duplicate(self) -> None:
        folder = self._selected_folder()
        if folder is None:
            return
        try:
            config, notes = folder.config_with_notes()
        except Exception as exc:
            self.messages.show_error(exc)
            return
        self.state.replace(config)
        if notes:
            self.messages.show_message("info", "Settings loaded with notes", "\n".join(notes))
        self.navigate.emit("train")

    def ask_name(self, current: str) -> str | None:
        text, ok = QInputDialog.getText(self, "Rename run", "New name:", text=current)
        return text.strip() if ok and text.strip() else None

    def rename(self, new_name: str | None = None) -> Path | None:
        """Rename the folder's name part (its timestamp stays, so it still sorts by date)."""
        folder = self._selected_folder()
        if folder is None or folder.status().get("state") in LIVE_STATES:
            return None
        name = folder.path.name
        current = name.split("-", 2)[-1]
        prefix = "-".join(name.split("-", 2)[:2]) + "-" if name[:8].isdigit() else ""
        new_name = new_name or self.ask_name(current if prefix else name)
        if not new_name or "/" in new_name or "\\" in new_name:
            return None
        target = folder.path.with_name(prefix + new_name)
        if target.exists():
            self.messages.show_message(
                "error", "Cannot rename", f"{target.name} already exists", "pick another name"
            )
            return None
        folder.path.rename(target)
        self.refresh()
        return target

    def confirm(self, title: str, text: str) -> bool:
        answer = QMessageBox.question(
            self, title, text, QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No
        )
        return answer == QMessageBox.StandardButton.Yes

    def delete(self) -> int:
        ids = [i for i in self.selected_ids() if self.summaries.get(i, {}).get("state") not in LIVE_STATES]
        if not ids:
            return 0
        listing = "\n".join(ids[:10]) + ("\n…" if len(ids) > 10 else "")
        if not self.confirm("Delete runs", f"Move {len(ids)} run(s) to the trash?\n\n{listing}"):
            return 0
        for run_id in ids:
            try:
                move_to_trash(Path(self.summaries[run_id]["path"]))
            except OSError as exc:
                self.messages.show_message("error", "Could not delete", f"{run_id}: {exc}")
        self.refresh()
        return len(ids)

    def page_shown(self) -> None:
        self.refresh()

    def apply_theme(self, theme: Any) -> None:
        self.compare.apply_theme(theme)


def _whole_row(table: QTableWidget, row: int) -> Any:
    from PySide6.QtWidgets import QTableWidgetSelectionRange

    return QTableWidgetSelectionRange(row, 0, row, table.columnCount() - 1)


PAGE = RunsPage
