"""The prompt set editor of the Chat page: choose a saved set (or the run's sample prompts), edit its
prompts, save, import or delete.

The editor holds one :class:`PromptSet` being edited; saved sets are files in the config folder
(``core.prompt_sets``), re-listed whenever one is saved or deleted. Replacing unsaved edits and
deleting a set ask first. Problems (a broken file, an empty name) go out through ``failed`` to the
page's message bar — the editor has no dialog of its own for errors.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QMessageBox,
    QPushButton,
    QWidget,
)

from lora_studio.core.chat import (
    PromptSet,
    PromptSetError,
    list_prompt_sets,
    load_prompt_set,
    save_prompt_set,
    slug,
)
from lora_studio.core.errors import LoraStudioError
from lora_studio.gui.widgets.forms import Card

SAMPLES, NEW, SAVED = "samples", "new", "saved"


def entry(kind: str, path: str = "") -> str:
    """A chooser entry's data: a string, since Qt would turn a tuple into a list."""
    return f"{kind}\t{path}"


class PromptSetEditor(Card):
    """Emits ``failed(error)`` for the page to show, ``changed()`` whenever the prompts change."""

    failed = Signal(object)
    changed = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("Prompt set", parent)
        #: the run's sample prompts, supplied by the page (they depend on the chosen model/run)
        self.samples: Callable[[], PromptSet] = lambda: PromptSet("Sample prompts", [])
        self.confirm: Callable[[str, str], bool] = self._ask
        self.dirty = False
        self.shown = entry(SAMPLES)  # the chooser entry the editor holds
        self.chooser = QComboBox()
        self.chooser.setToolTip("A saved prompt set, the sample prompts of the chosen run, or a new set")
        self.chooser.activated.connect(lambda _index: self.choose(self.chooser.currentData()))
        self.name = QLineEdit()
        self.name.setPlaceholderText("Name (to save the set)")
        self.name.textEdited.connect(self._edited)
        self.system = QLineEdit()
        self.system.setPlaceholderText("System prompt for every prompt (optional)")
        self.system.textEdited.connect(self._edited)
        self.list = QListWidget()
        self.list.setWordWrap(True)
        self.list.setAlternatingRowColors(True)
        self.list.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.list.setDragDropMode(QAbstractItemView.DragDropMode.InternalMove)
        self.list.setToolTip("Double-click a prompt to edit it; drag to reorder")
        self.list.itemChanged.connect(self._edited)
        self.list.model().rowsMoved.connect(self._edited)
        self.list.itemSelectionChanged.connect(self._update_buttons)
        self.new_prompt = QLineEdit()
        self.new_prompt.setPlaceholderText("Type a prompt, Enter adds it")
        self.new_prompt.returnPressed.connect(self.add_prompt)
        self.count = QLabel()
        self.count.setObjectName("muted")
        buttons = {
            "add": ("Add", "Add the prompt typed on the left", self.add_prompt),
            "remove": ("Remove", "Remove the selected prompts", self.remove_selected),
            "save": ("Save", "Save this set under its name (in the app's settings folder)", self.save),
            "import": ("Import…", "Read prompts from a .txt (one per line), .jsonl or .json file", self.import_file),
            "delete": ("Delete", "Delete this saved set", self.delete),
        }  # fmt: skip
        self.buttons: dict[str, QPushButton] = {}
        for key, (text, tip, slot) in buttons.items():
            button = self.buttons[key] = QPushButton(text)
            button.setToolTip(tip)
            button.clicked.connect(lambda _checked=False, slot=slot: slot())
        top = QHBoxLayout()
        top.addWidget(self.chooser, 1)
        top.addWidget(self.buttons["import"])
        self.body.addLayout(top)
        self.body.addWidget(self.name)
        self.body.addWidget(self.system)
        self.body.addWidget(self.list, 1)
        add = QHBoxLayout()
        add.addWidget(self.new_prompt, 1)
        add.addWidget(self.buttons["add"])
        add.addWidget(self.buttons["remove"])
        self.body.addLayout(add)
        bottom = QHBoxLayout()
        bottom.addWidget(self.count, 1)
        bottom.addWidget(self.buttons["delete"])
        bottom.addWidget(self.buttons["save"])
        self.body.addLayout(bottom)
        self.refresh()
        self.choose(entry(SAMPLES))

    # -- the set being edited ---------------------------------------------------------------------

    def prompt_set(self) -> PromptSet:
        """What the editor shows now (not necessarily saved)."""
        prompts = [self.list.item(i).text().strip() for i in range(self.list.count())]
        return PromptSet(self.name.text().strip(), prompts, self.system.text().strip())

    def show_set(self, prompt_set: PromptSet, *, dirty: bool = False) -> None:
        self.name.setText(prompt_set.name)
        self.system.setText(prompt_set.system)
        self.list.blockSignals(True)
        self.list.clear()
        for prompt in prompt_set.prompts:
            self._add_item(prompt)
        self.list.blockSignals(False)
        self.dirty = dirty
        self._update_buttons()
        self.changed.emit()

    def _add_item(self, text: str) -> None:
        item = QListWidgetItem(text)
        item.setFlags(item.flags() | Qt.ItemFlag.ItemIsEditable)
        self.list.addItem(item)

    def add_prompt(self, text: str | None = None) -> None:
        text = (self.new_prompt.text() if text is None else text).strip()
        if not text:
            return
        self._add_item(text)
        self.new_prompt.clear()
        self.list.scrollToBottom()
        self._edited()

    def remove_selected(self) -> None:
        for item in self.list.selectedItems():
            self.list.takeItem(self.list.row(item))
        self._edited()

    def _edited(self, *_args: object) -> None:
        self.dirty = True
        self._update_buttons()
        self.changed.emit()

    # -- saved sets -------------------------------------------------------------------------------

    def refresh(self, select: str | None = None) -> None:
        """List the saved sets again (cheap: a few small files), keeping or setting the selection."""
        current = select or self.shown
        self.chooser.blockSignals(True)
        self.chooser.clear()
        self.chooser.addItem("Sample prompts of the chosen run", entry(SAMPLES))
        for saved in list_prompt_sets():
            label = (
                f"{saved.name} ({saved.count} prompts)"
                if saved.problem is None
                else f"{saved.name} (cannot be read)"
            )
            self.chooser.addItem(label, entry(SAVED, str(saved.path)))
            if saved.problem:
                self.chooser.setItemData(self.chooser.count() - 1, saved.problem, Qt.ItemDataRole.ToolTipRole)
        self.chooser.addItem("New prompt set", entry(NEW))
        index = self.chooser.findData(current)
        self.chooser.setCurrentIndex(index if index >= 0 else self.chooser.count() - 1)
        self.chooser.blockSignals(False)
        self._update_buttons()

    def choose(self, key: str) -> bool:
        """Show a chooser entry; unsaved edits are replaced only if the user agrees."""
        if self.dirty and not self.confirm("Unsaved prompts", "Replace the prompts you have not saved?"):
            self.refresh()
            return False
        kind, _, path = key.partition("\t")
        try:
            prompt_set = (
                load_prompt_set(path)
                if kind == SAVED
                else self.samples()
                if kind == SAMPLES
                else PromptSet("", [])
            )
        except LoraStudioError as exc:
            self.failed.emit(exc)
            prompt_set = PromptSet("", [])
        self.shown = key
        self.refresh()
        self.show_set(prompt_set)
        if kind == NEW:
            self.new_prompt.setFocus()
        return True

    def samples_changed(self) -> None:
        """The chosen run changed: show its sample prompts if they are what is shown, unedited."""
        if self.shown == entry(SAMPLES) and not self.dirty:
            self.choose(entry(SAMPLES))

    def save(self) -> Path | None:
        prompt_set = self.prompt_set()
        try:
            prompt_set.check()
            existing = {s.path.stem: s for s in list_prompt_sets()}.get(slug(prompt_set.name))
            if (
                existing is not None
                and self.shown != entry(SAVED, str(existing.path))
                and not self.confirm(
                    "Replace prompt set", f"A set named '{existing.name}' is saved. Replace it?"
                )
            ):
                return None
            path = save_prompt_set(prompt_set)
        except LoraStudioError as exc:
            self.failed.emit(exc)
            return None
        self.dirty, self.shown = False, entry(SAVED, str(path))
        self.refresh()
        return path

    def delete(self) -> bool:
        kind, _, path = self.shown.partition("\t")
        if kind != SAVED or not self.confirm(
            "Delete prompt set", f"Delete the saved set '{self.name.text()}'?"
        ):
            return False
        try:
            Path(path).unlink(missing_ok=True)
        except OSError as exc:
            self.failed.emit(PromptSetError(f"{path}: cannot be deleted ({exc.strerror or exc})"))
            return False
        self.dirty = False
        self.choose(entry(NEW))
        return True

    def import_file(self, path: str | None = None) -> bool:
        """Prompts from a .txt / .jsonl / .json file, as a new unsaved set named after the file."""
        if path is None:
            path, _ = QFileDialog.getOpenFileName(
                self, "Import prompts", "", "Prompt files (*.txt *.jsonl *.json);;All files (*)"
            )
            if not path:
                return False
        try:
            prompt_set = load_prompt_set(path)
        except LoraStudioError as exc:
            self.failed.emit(exc)
            return False
        if self.dirty and not self.confirm("Unsaved prompts", "Replace the prompts you have not saved?"):
            return False
        self.shown = entry(NEW)
        self.refresh()
        self.show_set(prompt_set, dirty=True)
        return True

    # -- state ------------------------------------------------------------------------------------

    def set_busy(self, busy: bool) -> None:
        """While a set runs, its prompts cannot change under it."""
        for widget in (
            self.chooser,
            self.name,
            self.system,
            self.list,
            self.new_prompt,
            *self.buttons.values(),
        ):
            widget.setEnabled(not busy)
        if not busy:
            self._update_buttons()

    def _update_buttons(self) -> None:
        n = self.list.count()
        kind = self.shown.partition("\t")[0]
        self.count.setText(f"{n} prompt{'s' if n != 1 else ''}" + (" · not saved" if self.dirty else ""))
        self.buttons["remove"].setEnabled(bool(self.list.selectedItems()))
        self.buttons["delete"].setEnabled(kind == SAVED)
        self.buttons["save"].setEnabled(n > 0)

    def _ask(self, title: str, text: str) -> bool:
        answer = QMessageBox.question(
            self, title, text, QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No
        )
        return answer == QMessageBox.StandardButton.Yes
