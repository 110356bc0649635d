"""The pages of the window, in the order of the work, and the small contract each one follows.

``PAGES`` lists page modules in navigation order; each module exposes ``PAGE``, a :class:`Page`
subclass with a ``key``, ``title``, one-sentence ``summary`` and ``icon``. Adding a page means
writing its module and adding one name here — the window builds the rail, the shortcuts
(Ctrl+1…) and the header from these attributes. A page that does not exist yet is simply not
listed: nothing in the window shows a feature that is not real.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any, ClassVar

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QLabel, QVBoxLayout, QWidget

from lora_studio.gui.run_controller import RunController
from lora_studio.gui.state import AppState
from lora_studio.gui.widgets.messages import MessageBar

#: Navigation order (DESIGN.md §7: Model → Data → Train → Chat → Export → Runs; Evaluate sits before
#: Runs, whose Evaluate… action opens it).
PAGES = ["model", "data", "train", "chat", "export", "evaluate", "runs"]


class Page(QWidget):
    """A page: header (title + one sentence), a message bar for its errors, then its content."""

    key: ClassVar[str] = ""
    title: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    icon: ClassVar[str] = ""

    #: Ask the window to show another page (by key), e.g. "Data" from a dataset error.
    navigate = Signal(str)

    def __init__(self, state: AppState, runs: RunController, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.state = state
        self.runs = runs
        self.setObjectName(f"page:{self.key}")
        outer = QVBoxLayout(self)
        outer.setContentsMargins(24, 18, 24, 12)
        outer.setSpacing(10)
        heading = QLabel(self.title)
        heading.setObjectName("pageTitle")
        summary = QLabel(self.summary)
        summary.setObjectName("pageSummary")
        summary.setWordWrap(True)
        header = QVBoxLayout()
        header.setSpacing(2)
        header.addWidget(heading)
        header.addWidget(summary)
        outer.addLayout(header)
        self.messages = MessageBar()
        outer.addWidget(self.messages)
        self.content = QVBoxLayout()
        self.content.setSpacing(12)
        outer.addLayout(self.content, 1)
        state.theme_changed.connect(self.apply_theme)

    def page_shown(self) -> None:
        """Called each time the page becomes the visible one."""

    def apply_theme(self, theme: Any) -> None:
        """Re-colour what the style sheet cannot reach (plots, painted widgets)."""


def page_classes() -> list[type[Page]]:
    classes = []
    for name in PAGES:
        module = importlib.import_module(f"lora_studio.gui.pages.{name}")
        classes.append(module.PAGE)
    return classes


class Pages(Mapping[str, Page]):
    """Every page by key, in rail order; each is built the first time it is asked for.

    The window builds the visible page before it is shown and the others just after, so start-up
    does not pay for widgets (and libraries, such as pyqtgraph) that are not on screen yet.
    """

    def __init__(self, classes: list[type[Page]], build: Callable[[type[Page]], Page]) -> None:
        self.classes = {cls.key: cls for cls in classes}
        self._build = build
        self._built: dict[str, Page] = {}

    def __getitem__(self, key: str) -> Page:
        if key not in self._built:
            self._built[key] = self._build(self.classes[key])
        return self._built[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.classes)

    def __len__(self) -> int:
        return len(self.classes)

    def built(self) -> list[Page]:
        return list(self._built.values())

    def build_all(self) -> None:
        for key in self.classes:
            self.__getitem__(key)
