"""The application and its main window: navigation rail, pages, status bar, shortcuts, drag and drop.

Start-up order matters: the window is built and painted before any background task may start
(``workers.hold_background``), because the first task imports torch (~1.5 s) and would otherwise
compete with the first paint for the GIL. ``--startup-check`` prints when the window was shown and
whether torch was already imported, then quits (tests and ``bench/`` use it).
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from PySide6.QtCore import QByteArray, QEvent, QSettings, QSize, Qt, QTimer
from PySide6.QtGui import QAction, QActionGroup, QDragEnterEvent, QDropEvent, QKeySequence
from PySide6.QtWidgets import (
    QApplication,
    QButtonGroup,
    QFrame,
    QHBoxLayout,
    QLabel,
    QMainWindow,
    QMessageBox,
    QProgressDialog,
    QScrollArea,
    QSplitter,
    QStackedWidget,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from lora_studio.core.config import RunConfig
from lora_studio.core.errors import LoraStudioError
from lora_studio.gui import icons, jobs, theme, workers
from lora_studio.gui.pages import Page, Pages, page_classes
from lora_studio.gui.pages.train import PAUSE_KEYS, START_KEYS, STOP_KEYS
from lora_studio.gui.qt_fixes import guard_paint_override_refcount
from lora_studio.gui.run_controller import RunController
from lora_studio.gui.state import AppState

APP_NAME = "LoRA Studio"
#: How long closing the window waits for a running training to stop and save its adapter.
CLOSE_TIMEOUT_MS = 60_000
DATA_SUFFIXES = {".json", ".jsonl", ".ndjson", ".csv", ".tsv", ".parquet", ".txt"}
_RUN_WORDS = {
    "idle": "Ready", "starting": "Preparing", "running": "Training", "paused": "Paused",
    "stopping": "Stopping", "completed": "Completed", "cancelled": "Stopped", "failed": "Failed",
}  # fmt: skip


def settings() -> QSettings:
    """The app's settings; ``LORA_STUDIO_SETTINGS`` points them at an ini file (tests, portable use)."""
    path = os.environ.get("LORA_STUDIO_SETTINGS")
    if path:
        return QSettings(path, QSettings.Format.IniFormat)
    return QSettings("lora-studio", "LoRA Studio")


def _short_paths(text: str) -> str:
    """Absolute paths cut to their last two parts: the status bar has one line for several facts."""
    return re.sub(r"(?<!\S)/\S+", lambda m: "/".join(Path(m.group(0)).parts[-2:]), text)


def classify_drop(path: Path) -> str | None:
    """'model' for a model folder or .gguf file, 'data' for a dataset file or folder, else None."""
    if path.is_dir():
        if (path / "config.json").is_file():
            return "model"
        if any(p.suffix.lower() in DATA_SUFFIXES for p in path.iterdir() if p.is_file()):
            return "data"
        return None
    if path.suffix.lower() == ".gguf":
        return "model"
    if path.suffix.lower() in DATA_SUFFIXES:
        return "data"
    return None


class PageHolder(QScrollArea):
    """A page in the window: as wide as it needs (the window keeps that minimum, as before), and
    scrolling when it is taller than the window — a message bar above a full page, or a short
    screen. A page's minimum height then never resizes the window: a broken file's message once
    grew it from 860 to 885 px for good.

    The page gets the viewport's size, or its own minimum height when that is more — not its
    preferred height, which ``widgetResizable`` would give a page of word-wrapped labels (every
    splitter and plot stretched to its preferred size, the page twice the window's height)."""

    def __init__(self, page: Page) -> None:
        super().__init__()
        self.setObjectName(f"pageHolder:{page.key}")
        self.setFrameShape(QFrame.Shape.NoFrame)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setWidget(page)
        page.installEventFilter(self)

    def minimumSizeHint(self) -> QSize:
        page = self.widget().minimumSizeHint()
        return QSize(page.width() + self.verticalScrollBar().sizeHint().width(), min(page.height(), 480))

    def eventFilter(self, watched: Any, event: Any) -> bool:
        if watched is self.widget() and event.type() == QEvent.Type.LayoutRequest:
            QTimer.singleShot(0, self, self.fit)  # after the layout has taken it; never after self is gone
        # QScrollArea's own filter updates the scroll range when the page is resized: without it a
        # page grown by a message bar was cut off at the bottom with nothing to scroll
        return super().eventFilter(watched, event)

    def viewportEvent(self, event: Any) -> bool:
        if event.type() == QEvent.Type.Resize:
            self.fit()
        return super().viewportEvent(event)

    def fit(self) -> None:
        page, width = self.widget(), self.viewport().width()
        layout = page.layout()
        need = page.minimumSizeHint().height()
        if layout is not None and layout.hasHeightForWidth():
            need = max(need, layout.minimumHeightForWidth(width))
        size = QSize(width, max(self.viewport().height(), need))
        if page.size() != size:
            page.resize(size)


class MainWindow(QMainWindow):
    def __init__(self, state: AppState | None = None, store: QSettings | None = None) -> None:
        super().__init__()
        self.store = store or settings()
        self.state = state or AppState(_saved_config(self.store))
        if self.state.parent() is None:
            # the window's pages and the state reference each other: as the window's child it is
            # deleted with the window, on the GUI thread, never by a collection in a worker thread
            self.state.setParent(self)
        self.runs = RunController(self.state, self)
        #: Asks a yes/no question; replaced in tests.
        self.confirm: Callable[[str, str], bool] = self._ask
        self.setWindowTitle(APP_NAME)
        self.setAcceptDrops(True)
        self.theme_mode = str(self.store.value("theme", "system"))
        self.stack = QStackedWidget()
        self._holders: dict[str, PageHolder] = {}
        self.pages = Pages(page_classes(), self._make_page)
        self.rail = QFrame()
        self.rail.setObjectName("navRail")
        self.nav = QButtonGroup(self)
        self.nav.setExclusive(True)
        self.nav_buttons: dict[str, QToolButton] = {}
        rail = QVBoxLayout(self.rail)
        rail.setContentsMargins(6, 12, 6, 10)
        rail.setSpacing(4)
        for number, page in enumerate(self.pages.classes.values(), start=1):
            button = QToolButton()
            button.setObjectName("navButton")
            button.setText(page.title)
            button.setCheckable(True)
            button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextUnderIcon)
            button.setIconSize(icons.ICON_SIZE)
            button.setFixedWidth(76)
            button.setToolTip(f"{page.summary} (Ctrl+{number})")
            button.clicked.connect(lambda _=False, key=page.key: self.show_page(key))
            self.nav.addButton(button)
            self.nav_buttons[page.key] = button
            rail.addWidget(button)
        rail.addStretch(1)
        self.theme_button = QToolButton()
        self.theme_button.setObjectName("navButton")
        self.theme_button.setText("Theme")
        self.theme_button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextUnderIcon)
        self.theme_button.setIconSize(icons.ICON_SIZE)
        self.theme_button.setFixedWidth(76)
        self.theme_button.setToolTip("Switch between the light and dark theme")
        self.theme_button.clicked.connect(self.toggle_theme)
        rail.addWidget(self.theme_button)
        central = QWidget()
        layout = QHBoxLayout(central)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(0)
        layout.addWidget(self.rail)
        layout.addWidget(self.stack, 1)
        self.setCentralWidget(central)
        self._build_status_bar()
        self._build_actions()
        self.state.config_changed.connect(lambda *_: self._save_config_soon())
        self.state.run_state_changed.connect(self._on_run_state)
        self.state.model_info_changed.connect(lambda _info: self._update_model_label())
        self.state.chat_model_changed.connect(lambda _text: self._update_model_label())
        self.state.device_changed.connect(self._on_device)
        self.set_theme_mode(self.theme_mode)
        self.setWindowIcon(icons.app_icon())
        hints = QApplication.styleHints()
        if hints is not None:
            hints.colorSchemeChanged.connect(lambda _scheme: self.set_theme_mode(self.theme_mode))
        self._restore()
        self._device_task = workers.BackgroundTask(self)
        self._device_task.request(lambda _cancel: jobs.device_summary(), self.state.set_device)

    # -- structure ------------------------------------------------------------------------------

    def _build_status_bar(self) -> None:
        bar = self.statusBar()
        bar.setSizeGripEnabled(False)
        self.device_label = QLabel("Device: detecting…")
        self.model_label = QLabel("Model: —")
        self.run_label = QLabel("Ready")
        self.run_label.setObjectName("runState")
        for label in (self.device_label, self.model_label):
            bar.addWidget(label)
        bar.addPermanentWidget(self.run_label)
        self._update_model_label()

    def _build_actions(self) -> None:
        go = self.menuBar().addMenu("&Go")
        for number, (key, page) in enumerate(self.pages.classes.items(), start=1):
            action = QAction(page.title, self)
            action.setShortcut(QKeySequence(f"Ctrl+{number}"))
            action.triggered.connect(lambda _=False, k=key: self.show_page(k))
            go.addAction(action)
            self.addAction(action)
        run = self.menuBar().addMenu("&Run")
        self.start_action = QAction("Start training", self)
        self.start_action.setShortcuts([QKeySequence(START_KEYS), QKeySequence("Ctrl+Enter")])
        self.start_action.triggered.connect(self.start_training)
        self.pause_action = QAction("Pause / resume", self)
        self.pause_action.setShortcut(QKeySequence(PAUSE_KEYS))
        self.pause_action.triggered.connect(self.runs.toggle_pause)
        self.stop_action = QAction("Stop", self)
        self.stop_action.setShortcut(QKeySequence(STOP_KEYS))
        self.stop_action.triggered.connect(self.runs.stop)
        for action in (self.start_action, self.pause_action, self.stop_action):
            run.addAction(action)
            self.addAction(action)
        view = self.menuBar().addMenu("&View")
        group = QActionGroup(self)
        self.theme_actions: dict[str, QAction] = {}
        for mode, text in (("system", "Follow the system theme"), ("light", "Light"), ("dark", "Dark")):
            action = QAction(text, self, checkable=True)
            action.triggered.connect(lambda _=False, m=mode: self.set_theme_mode(m))
            group.addAction(action)
            view.addAction(action)
            self.theme_actions[mode] = action
        help_menu = self.menuBar().addMenu("&Help")
        check = QAction("System check…", self)
        check.setToolTip("Can this machine train? torch, GPU, bitsandbytes, disk, the default model")
        check.triggered.connect(self.show_system_check)
        about = QAction("About LoRA Studio…", self)
        about.setMenuRole(QAction.MenuRole.AboutRole)
        about.triggered.connect(self.show_about)
        help_menu.addAction(check)
        help_menu.addAction(about)

    def show_system_check(self) -> Any:
        """Open the System check dialog (non-blocking) and start its checks in a worker."""
        from lora_studio.gui.dialogs.system_check import open_dialog

        return open_dialog(self, self.state.theme)

    def show_about(self) -> Any:
        """Open About / Settings: versions, folders, the model cache."""
        from lora_studio.gui.dialogs.about import AboutDialog

        runs = self.state.config.output.runs_dir
        dialog = AboutDialog(self, runs_folder=Path(runs) if runs else None, run_state=self.state.run_state)
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dialog.show()
        return dialog

    def _make_page(self, page_class: type[Page]) -> Page:
        page = page_class(self.state, self.runs)
        page.navigate.connect(self.show_page)
        # A page taller than the window (a message bar above a full page, a small screen) scrolls
        # inside it: its minimum height never resizes the window (a broken file once grew it for good)
        holder = PageHolder(page)
        self._holders[page.key] = holder
        self.stack.addWidget(holder)
        for splitter in page.findChildren(QSplitter):
            saved = self.store.value(f"splitters/{splitter.objectName()}")
            if splitter.objectName() and isinstance(saved, QByteArray | bytes):
                splitter.restoreState(saved)
        if self.state.theme is not None:
            page.apply_theme(self.state.theme)
        return page

    def build_all_pages(self) -> None:
        """Build the pages not shown yet (called once the window is on screen)."""
        self.pages.build_all()

    def show_page(self, key: str) -> None:
        if key not in self.pages:
            return
        page = self.pages[key]
        self.stack.setCurrentWidget(self._holders[key])
        self.nav_buttons[key].setChecked(True)
        page.page_shown()

    def current_page(self) -> str:
        holder = self.stack.currentWidget()
        widget = holder.widget() if isinstance(holder, QScrollArea) else holder
        return widget.key if isinstance(widget, Page) else ""

    # -- theme ----------------------------------------------------------------------------------

    def set_theme_mode(self, mode: str) -> None:
        self.theme_mode = mode if mode in theme.MODES else "system"
        chosen = theme.resolve(self.theme_mode)
        app = QApplication.instance()
        if isinstance(app, QApplication):
            theme.apply(app, chosen)
        for key, button in self.nav_buttons.items():
            button.setIcon(icons.icon(self.pages.classes[key].icon, chosen.muted, chosen.accent))
        self.theme_button.setIcon(icons.icon("theme", chosen.muted))
        if self.theme_mode in self.theme_actions:
            self.theme_actions[self.theme_mode].setChecked(True)
        self.store.setValue("theme", self.theme_mode)
        self.state.set_theme(chosen)

    def toggle_theme(self) -> None:
        current = self.state.theme
        self.set_theme_mode("light" if current is not None and current.dark else "dark")

    # -- status bar -----------------------------------------------------------------------------

    def _on_device(self, device: Any) -> None:
        self.device_label.setText(f"Device: {device.describe()}")

    def _update_model_label(self) -> None:
        info = self.state.model_info
        name = info.name if info is not None else self.state.config.model.source
        if self.state.model_failure is not None:
            loaded = "cannot be used"
        elif self.state.run_state in ("starting", "running", "stopping") and self.state.shared_model.loaded:
            loaded = "loaded for training"
        elif self.state.run_state == "paused":
            # asked to pause, the run first ends its step (or its sample answers)
            pausing = self.state.run_detail.startswith("pausing")
            loaded = "loaded for training" if pausing else "loaded, paused"
        else:
            loaded = "not loaded"
        # the training model's state; what Chat has loaded (maybe another model) is said beside it
        chat = f" · Chat: {_short_paths(self.state.chat_model)}" if self.state.chat_model else ""
        self.model_label.setText(f"Model: {name} ({loaded}){chat}")

    def _on_run_state(self, state: str, detail: str) -> None:
        word = _RUN_WORDS.get(state, state)
        self.run_label.setText(f"{word}: {detail}" if detail else word)
        self._update_model_label()

    # -- actions -------------------------------------------------------------------------------

    def start_training(self) -> None:
        train = self.pages.get("train")
        if train is not None:
            self.show_page("train")
            train.start()  # type: ignore[attr-defined]

    def _ask(self, title: str, text: str) -> bool:
        answer = QMessageBox.question(
            self, title, text, QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No
        )
        return answer == QMessageBox.StandardButton.Yes

    # -- drag and drop --------------------------------------------------------------------------

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:
        urls = event.mimeData().urls()
        if urls and all(u.isLocalFile() for u in urls):
            event.acceptProposedAction()

    def dropEvent(self, event: QDropEvent) -> None:
        for url in event.mimeData().urls():
            self.open_path(Path(url.toLocalFile()))
        event.acceptProposedAction()

    def open_path(self, path: Path) -> str | None:
        """Use a dropped (or command-line) path as the model or the dataset, whichever it is."""
        kind = classify_drop(path)
        if kind == "model":
            self.state.set_value("model.source", str(path))
            self.show_page("model")
        elif kind == "data":
            self.state.set_value("data.path", str(path))
            self.show_page("data")
        else:
            page = self.pages[self.current_page() or next(iter(self.pages))]
            page.messages.show_message(
                "warning",
                "Not a model or a dataset",
                str(path),
                "drop a model folder (with config.json), a .gguf file, or a .jsonl/.json/.csv/.tsv/.parquet/.txt file",
            )
        return kind

    # -- persistence and closing ----------------------------------------------------------------

    def _save_config_soon(self) -> None:
        if not hasattr(self, "_save_timer"):
            self._save_timer = QTimer(self)
            self._save_timer.setSingleShot(True)
            self._save_timer.setInterval(500)
            self._save_timer.timeout.connect(self._save_config)
        self._save_timer.start()

    def _save_config(self) -> None:
        self.store.setValue("config", self.state.config.to_toml())

    def _restore(self) -> None:
        geometry = self.store.value("geometry")
        if isinstance(geometry, QByteArray | bytes) and geometry:
            self.restoreGeometry(geometry)
        else:
            self.resize(1360, 860)
        page = str(self.store.value("page", ""))
        self.show_page(page if page in self.pages else next(iter(self.pages)))

    def save_settings(self) -> None:
        self.store.setValue("geometry", self.saveGeometry())
        for splitter in self.findChildren(QSplitter):
            if splitter.objectName():
                self.store.setValue(f"splitters/{splitter.objectName()}", splitter.saveState())
        self.store.setValue("page", self.current_page())
        self._save_config()
        self.store.sync()

    def closeEvent(self, event: Any) -> None:
        if self.runs.active:
            if not self.confirm(
                "Stop training?", "A run is in progress. Stop it (the adapter is saved) and quit?"
            ):
                event.ignore()
                return
            self.runs.stop()
            progress = QProgressDialog("Stopping the run and saving the adapter…", "", 0, 0, self)
            progress.setCancelButton(None)
            progress.setWindowModality(Qt.WindowModality.WindowModal)
            progress.show()
            stopped = self.runs.wait_stopped(CLOSE_TIMEOUT_MS)
            progress.close()
            if not stopped and not self.confirm(
                "Still stopping",
                "The run has not stopped yet. Quit anyway? It will be marked interrupted and can be resumed "
                "from its last checkpoint.",
            ):
                event.ignore()
                return
        self.save_settings()
        event.accept()


def _saved_config(store: QSettings) -> RunConfig:
    """The last-used config; a stale or invalid one falls back to the defaults (never blocks start-up)."""
    text = store.value("config")
    if not text:
        return RunConfig()
    try:
        import tomllib

        return RunConfig.from_dict(tomllib.loads(str(text)))
    except (LoraStudioError, ValueError):
        return RunConfig()


def create_app(argv: Sequence[str] | None = None) -> QApplication:
    app = QApplication.instance()
    if not isinstance(app, QApplication):
        app = QApplication(list(argv or sys.argv[:1]))
    app.setApplicationName(APP_NAME)
    app.setOrganizationName("lora-studio")
    guard_paint_override_refcount()
    app.setDesktopFileName("lora-studio")  # matches packaging/linux/lora-studio.desktop (Wayland)
    app.setWindowIcon(icons.app_icon())
    return app


def main(
    config_path: str | None = None,
    *,
    open_path: str | None = None,
    startup_check: bool = False,
    print_startup_time: bool = False,
) -> int:
    """Open the window (optionally on a config file or a dropped-style path) and run the event loop.

    ``print_startup_time`` prints how long the window took to appear (from process start to its
    first paint) and carries on; ``startup_check`` prints the same as JSON and quits.
    """
    from lora_studio.gui.startup import FirstPaint, startup_line, startup_report

    started = time.perf_counter()
    app = create_app()
    from lora_studio.gui import widget_map

    widget_map.start_if_requested(app)  # tests that drive the real window from outside
    workers.hold_background()
    window = MainWindow()
    if config_path:
        window.state.replace(RunConfig.load(config_path))
    if open_path:
        window.open_path(Path(open_path))
    window.show()

    def shown() -> None:
        if print_startup_time or startup_check:
            report = startup_report(started)
            if print_startup_time:
                print(startup_line(report), flush=True)
            if startup_check:
                print(json.dumps(report), flush=True)
        if startup_check:
            window.save_settings = lambda: None  # type: ignore[method-assign]
            app.quit()
            return
        window.build_all_pages()
        workers.release_background()
        from lora_studio.gui.dialogs.system_check import open_on_first_run

        open_on_first_run(window, window.store, window.state.theme)

    FirstPaint(window, shown)
    code = app.exec()
    if workers.live_count():
        # a run that would not stop in time: do not let Qt destroy a running thread (that aborts)
        sys.stdout.flush()
        os._exit(code)
    return code
