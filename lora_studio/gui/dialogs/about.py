"""About / Settings: the version, where the app keeps its files, and the model cache.

A person who wants to back up their runs, free disk space or report a bug finds everything here:
the versions that matter (Python, torch and its build, Qt), the three folders with a button to open
each, and the size of the model cache with a way to clear it. Clearing deletes only converted
models (re-created on next use); runs are never touched.
"""

from __future__ import annotations

import platform
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, requires, version
from pathlib import Path

from PySide6 import __version__ as pyside_version
from PySide6.QtCore import QSize, Qt, QUrl, qVersion
from PySide6.QtGui import QDesktopServices
from PySide6.QtWidgets import (
    QDialog,
    QFrame,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QLayout,
    QMessageBox,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from lora_studio import __version__
from lora_studio.core import paths
from lora_studio.core.cache import cache_usage, clear_cache
from lora_studio.gui import icons
from lora_studio.gui.widgets.memory_bar import gb
from lora_studio.gui.widgets.messages import MessageBar

LICENSE = "Apache-2.0"
_BUSY_RUN_STATES = ("starting", "running", "paused", "stopping")


def package_version(name: str) -> str:
    """An installed package's version without importing it (torch alone takes seconds to import)."""
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def open_folder(path: Path) -> bool:
    """Show ``path`` in the system's file manager, creating it first (a fresh install has none)."""
    path.mkdir(parents=True, exist_ok=True)
    return QDesktopServices.openUrl(QUrl.fromLocalFile(str(path)))


class AboutDialog(QDialog):
    """Versions, folders (each with Open) and the model cache (size, Clear cache…)."""

    def __init__(
        self, parent: QWidget | None = None, *, runs_folder: Path | None = None, run_state: str = "idle"
    ) -> None:
        super().__init__(parent)
        #: Opens a folder; replaced in tests.
        self.open_folder: Callable[[Path], bool] = open_folder
        #: Asks a yes/no question; replaced in tests.
        self.confirm: Callable[[str, str], bool] = self._ask
        self.runs_folder = Path(runs_folder or paths.runs_dir()).expanduser()
        #: A run may be loading the cached model: clearing waits until it has ended.
        self.run_busy = run_state in _BUSY_RUN_STATES
        self.folders = {
            "Settings": (paths.config_dir(), "saved prompt sets and other small files you write"),
            "Model cache": (paths.cache_dir(), "converted models; re-created when needed"),
            "Runs": (self.runs_folder, "your training runs: checkpoints, adapters, metrics"),
        }
        self.setWindowTitle("About LoRA Studio")
        self.setMinimumWidth(640)
        self.messages = MessageBar()
        layout = QVBoxLayout(self)
        layout.setSizeConstraint(QLayout.SizeConstraint.SetFixedSize)  # its natural size: nothing clips
        layout.setContentsMargins(22, 20, 22, 16)
        layout.setSpacing(12)
        layout.addLayout(self._header())
        layout.addWidget(self.messages)
        layout.addWidget(self._versions_card())
        layout.addWidget(self._folders_card())
        layout.addWidget(self._cache_card())
        close = QPushButton("Close")
        close.setObjectName("primary")
        close.setDefault(True)
        close.clicked.connect(self.accept)
        buttons = QHBoxLayout()
        buttons.addStretch(1)
        buttons.addWidget(close)
        layout.addLayout(buttons)
        self.refresh_cache()

    # -- sections ------------------------------------------------------------------------------

    def _header(self) -> QHBoxLayout:
        logo = QLabel()
        logo.setPixmap(icons.app_icon().pixmap(QSize(64, 64)))
        logo.setFixedSize(64, 64)
        name = QLabel("LoRA Studio")
        name.setObjectName("pageTitle")
        self.version_label = QLabel(f"Version {__version__}  ·  License {LICENSE}")
        self.version_label.setObjectName("muted")
        blurb = QLabel(
            "Fine-tune a language model on your own GPU (or CPU) with LoRA and QLoRA: "
            "load a model, check the memory it needs, train on your data, chat with the result "
            "and export it."
        )
        blurb.setWordWrap(True)
        column = QVBoxLayout()
        column.setSpacing(2)
        column.addWidget(name)
        column.addWidget(self.version_label)
        column.addSpacing(4)
        column.addWidget(blurb)
        row = QHBoxLayout()
        row.setSpacing(16)
        row.addWidget(logo, 0, Qt.AlignmentFlag.AlignTop)
        row.addLayout(column, 1)
        return row

    def _versions_card(self) -> QFrame:
        card, grid = _card("Versions")
        self.versions = {
            "Python": f"{platform.python_version()} ({platform.system()} {platform.machine()})",
            "torch": _torch_description(),
            "Qt": f"PySide6 {pyside_version}, Qt {qVersion()}",
        }
        for row, (label, value) in enumerate(self.versions.items(), start=1):
            grid.addWidget(_muted(label), row, 0)
            text = QLabel(value)
            text.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
            grid.addWidget(text, row, 1, 1, 2)
        return card

    def _folders_card(self) -> QFrame:
        card, grid = _card("Folders")
        self.open_buttons: dict[str, QPushButton] = {}
        for row, (label, (folder, what)) in enumerate(self.folders.items(), start=1):
            grid.addWidget(_muted(label), row, 0, Qt.AlignmentFlag.AlignTop)
            path = QLabel(str(folder))
            path.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
            purpose = _muted(what)
            purpose.setObjectName("unit")
            texts = QVBoxLayout()
            texts.setSpacing(1)
            texts.addWidget(path)
            texts.addWidget(purpose)
            grid.addLayout(texts, row, 1)
            button = QPushButton("Open")
            button.setToolTip(f"Open {folder} in the file manager")
            button.clicked.connect(lambda _=False, key=label: self.open(key))
            grid.addWidget(button, row, 2, Qt.AlignmentFlag.AlignTop)
            self.open_buttons[label] = button
        return card

    def _cache_card(self) -> QFrame:
        card, grid = _card("Model cache")
        self.cache_label = QLabel()
        self.cache_label.setObjectName("factValue")
        note = QLabel(
            "Models converted from GGUF files, kept so they load in a second. Clearing frees the "
            "space; the default model is converted again on next use (about 30 seconds). Runs are never deleted."
        )
        note.setObjectName("muted")
        note.setWordWrap(True)
        self.clear_button = QPushButton("Clear cache…")
        self.clear_button.clicked.connect(self.clear_cache)
        grid.addWidget(self.cache_label, 1, 0, 1, 2)
        grid.addWidget(self.clear_button, 1, 2)
        grid.addWidget(note, 2, 0, 1, 3)
        return card

    # -- actions -------------------------------------------------------------------------------

    def refresh_cache(self) -> None:
        usage = cache_usage(protect=[self.runs_folder])
        self.cache_size = usage.size
        if usage.entries:
            self.cache_label.setText(f"{gb(usage.size)} in {usage.describe()}")
        else:
            self.cache_label.setText("Empty")
        self.clear_button.setEnabled(bool(usage.entries) and not self.run_busy)
        if self.run_busy:
            self.clear_button.setToolTip("Not while a training run is in progress")
        elif usage.entries:
            self.clear_button.setToolTip(f"Delete {usage.describe()} from {usage.folder}")
        else:
            self.clear_button.setToolTip("Nothing to clear")

    def open(self, key: str) -> None:
        folder = self.folders[key][0]
        try:
            opened = self.open_folder(folder)
        except OSError as exc:
            self.messages.show_message(
                "error", f"Cannot open the {key.lower()} folder", f"{folder}: {exc.strerror or exc}",
                "check that the folder's parent exists and that you may write there",
            )  # fmt: skip
            return
        if not opened:
            self.messages.show_message(
                "warning", f"No file manager opened the {key.lower()} folder", str(folder),
                "open that path in your file manager (it is selectable above)",
            )  # fmt: skip

    def clear_cache(self) -> None:
        usage = cache_usage(protect=[self.runs_folder])
        if not usage.entries:
            self.refresh_cache()
            return
        question = (
            f"Delete {usage.describe()} ({gb(usage.size)}) from {usage.folder}?\n\n"
            "They are re-created when needed (the default model takes about 30 s). "
            "Your runs are not touched."
        )
        if not self.confirm("Clear the model cache?", question):
            return
        try:
            removed = clear_cache(protect=[self.runs_folder])
        except OSError as exc:
            self.messages.show_message(
                "error", "The cache could not be cleared completely", f"{exc.filename or ''}: {exc.strerror or exc}",
                "close other LoRA Studio windows that may be using the model, then try again",
            )  # fmt: skip
        else:
            self.messages.show_message("info", "Cache cleared", f"Freed {gb(removed.size)}.")
        self.refresh_cache()

    def _ask(self, title: str, text: str) -> bool:
        answer = QMessageBox.question(
            self, title, text, QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No
        )
        return answer == QMessageBox.StandardButton.Yes


def _torch_description() -> str:
    """torch's version and build from its metadata: ``2.13.0+cpu`` → "2.13.0 (CPU-only build)"."""
    found = package_version("torch")
    base, _, local = found.partition("+")
    if local.startswith("cu") and local[2:].isdigit():
        digits = local[2:]
        return f"{base} (CUDA {digits[:-1]}.{digits[-1]} build)"
    if local == "cpu":
        return f"{base} (CPU-only build)"
    if not local:  # PyPI's Linux wheels: a CUDA build that names its CUDA libraries as requirements
        cuda = any(r.lower().startswith("nvidia-cuda-runtime") for r in requires("torch") or [])
        return f"{base} (CUDA build)" if cuda else base
    return found


def _card(title: str) -> tuple[QFrame, QGridLayout]:
    card = QFrame()
    card.setObjectName("card")
    grid = QGridLayout(card)
    grid.setContentsMargins(16, 12, 16, 14)
    grid.setHorizontalSpacing(16)
    grid.setVerticalSpacing(8)
    grid.setColumnMinimumWidth(0, 90)
    grid.setColumnStretch(1, 1)
    heading = QLabel(title)
    heading.setObjectName("cardTitle")
    grid.addWidget(heading, 0, 0, 1, 3)
    return card, grid


def _muted(text: str) -> QLabel:
    label = QLabel(text)
    label.setObjectName("muted")
    return label
