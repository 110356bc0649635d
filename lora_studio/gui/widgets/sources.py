"""A picker for "what to use": the base model, a run or one of its checkpoints, an adapter folder.

Shared by the Chat and Export pages. Each entry's data is ``(kind, path)`` with kind one of
``base``, ``paused`` (the Train page's paused run, Chat only), ``run``, ``checkpoint``,
``folder`` (chosen with "Adapter folder…"). Runs are read from the runs folder of the current
settings each time :meth:`SourcePicker.refresh` is called (cheap: directory listings only).
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QComboBox, QFileDialog, QWidget

from lora_studio.core.runs import list_runs

BROWSE = "browse\t"


def _key(kind: str, path: str = "") -> str:
    return f"{kind}\t{path}"  # item data as a string: Qt would turn a tuple into a list


class SourcePicker(QComboBox):
    """Emits ``chosen((kind, path))`` when the user picks an entry (folder dialog for "browse")."""

    chosen = Signal(object)

    def __init__(self, *, base: bool = True, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.offer_base = base
        self.offer_paused = False
        self.folders: list[str] = []
        self._runs_seen: set[str] | None = None  # finished runs at the last refresh (None: never)
        self.setMinimumContentsLength(40)
        self.activated.connect(self._activated)

    def refresh(self, runs_root: str | Path | None, *, paused: bool = False) -> None:
        current = self.currentData()
        self.offer_paused = paused
        self.blockSignals(True)
        self.clear()
        if self.offer_base:
            self.addItem("Base model only", _key("base"))
        if paused:
            self.addItem("Current paused run (the Train page's model)", _key("paused"))
        finished = []
        for run in reversed(list_runs(Path(runs_root) if runs_root else None)):
            if (run.adapter_dir / "adapter_config.json").is_file():
                self.addItem(f"Run {run.run_id} — final adapter", _key("run", str(run.path)))
                finished.append(_key("run", str(run.path)))
            for step, path in reversed(run.checkpoints()):
                self.addItem(f"Run {run.run_id} — checkpoint {step}", _key("checkpoint", str(path)))
        for folder in self.folders:
            self.addItem(f"Adapter folder {folder}", _key("folder", folder))
        self.addItem("Adapter folder…", BROWSE)
        index = self.findData(current) if current else -1
        # a run that finished since the last look is what a person wants next: it is preselected
        new = [key for key in finished if self._runs_seen is not None and key not in self._runs_seen]
        if new:
            index = self.findData(new[0])
        self._runs_seen = set(finished)
        self.setCurrentIndex(index if index >= 0 and current != BROWSE else 0)
        self.blockSignals(False)

    def select(self, kind: str, path: str = "") -> None:
        """Choose an entry programmatically (adds a folder entry when needed) and emit ``chosen``."""
        if kind == "folder" and path not in self.folders:
            self.folders.append(path)
            self.insertItem(self.count() - 1, f"Adapter folder {path}", _key("folder", path))
        index = self.findData(_key(kind, path))
        if index >= 0:
            self.setCurrentIndex(index)
            self.chosen.emit((kind, path))

    def _activated(self, index: int) -> None:
        data = self.itemData(index)
        if data == BROWSE:
            folder = QFileDialog.getExistingDirectory(self, "Choose an adapter, checkpoint or run folder")
            if folder:
                self.select("folder", folder)
            else:
                self.setCurrentIndex(0)
            return
        self.chosen.emit(self.choice())

    def choice(self) -> tuple[str, str]:
        """The current entry as ``(kind, path)``."""
        kind, _, path = str(self.currentData() or _key("base")).partition("\t")
        return kind, path
