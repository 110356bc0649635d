"""What the Data page shows about a dataset: the preview, the length histogram, the problem list.

The preview is the example *as the model sees it* — the chat template applied, trained tokens
highlighted and masked tokens greyed — because that is the one view that catches a wrong loss mask
or a missing end-of-turn token before hours of training. Tool calls (bold, in the accent colour),
tool results (in the warning colour) and reasoning (italic) are marked apart from the conversation
around them, so a call trained as an empty answer or a result trained as speech shows at a glance.
"""

from __future__ import annotations

import html
from typing import Any

import pyqtgraph as pg
from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtGui import QColor, QFontDatabase, QTextCursor
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPlainTextEdit,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

from lora_studio.gui import theme as th
from lora_studio.gui.widgets.plots import LivePlot


class PreviewView(QWidget):
    """One example at a time, with ◀ ▶ to step through the first few.

    Preference data shows each pair side by side — the prompt with the chosen answer, and with the
    rejected one, each as training renders it — or a KTO answer with its good / bad label; a
    supervised example uses the left column alone, without a header.
    """

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.text = QTextBrowser()
        self.text.setOpenLinks(False)
        self.text.setMinimumHeight(120)
        self.second = QTextBrowser()  # the rejected side of a pair
        self.second.setObjectName("previewRejected")
        self.second.setOpenLinks(False)
        self.second.setMinimumHeight(120)
        self.headers = [QLabel(), QLabel()]
        for header in self.headers:  # one line: a wrapped label would ask for the height of several
            header.setTextFormat(Qt.TextFormat.RichText)
        self.position = QLabel()
        self.position.setObjectName("muted")
        self.previous = QPushButton("◀")
        self.previous.setToolTip("Previous example")
        self.next = QPushButton("▶")
        self.next.setToolTip("Next example")
        for button in (self.previous, self.next):
            button.setFixedWidth(40)
        self.previous.clicked.connect(lambda: self.show_example(self.index - 1))
        self.next.clicked.connect(lambda: self.show_example(self.index + 1))
        legend = QLabel()
        legend.setObjectName("muted")
        self.legend = legend
        self.kinds_legend = QLabel()  # tool calls, results, reasoning: a line of its own when shown
        self.kinds_legend.setObjectName("muted")
        self.kinds_legend.setAlignment(Qt.AlignmentFlag.AlignRight)
        row = QHBoxLayout()
        row.addWidget(self.previous)
        row.addWidget(self.next)
        row.addWidget(self.position, 1)
        row.addWidget(legend)
        columns = QHBoxLayout()
        columns.setSpacing(8)
        self.columns = columns
        for header, browser in zip(self.headers, (self.text, self.second), strict=True):
            column = QVBoxLayout()
            column.setSpacing(2)
            column.addWidget(header)
            column.addWidget(browser, 1)
            columns.addLayout(column, 1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(row)
        layout.addWidget(self.kinds_legend)
        layout.addLayout(columns, 1)
        self.examples: list[Any] = []
        self.records: int | None = None
        self.index = 0
        self.theme = th.LIGHT
        self.set_examples([])

    def set_theme(self, theme: Any) -> None:
        self.theme = theme
        self.show_example(self.index)

    def set_examples(self, examples: list[Any], records: int | None = None) -> None:
        """Show ``examples`` (the first few of the data); ``records``: how many the data has in all.

        Each is a ``PreviewExample``, or a preference ``PairPreview`` / ``AnswerPreview``."""
        self.examples = examples
        self.records = records
        self.show_example(0)

    def mode(self) -> str:
        """What is shown: "example" (supervised), "pair" or "answer" (KTO)."""
        if self.examples and hasattr(self.examples[0], "chosen"):
            return "pair"
        if self.examples and hasattr(self.examples[0], "desirable"):
            return "answer"
        return "example"

    def show_example(self, index: int) -> None:
        t = self.theme
        self.legend.setText(
            f"<span style='background:{t.trained_bg}'>&nbsp;trained&nbsp;</span>&nbsp; "
            f"<span style='color:{t.masked_text}'>masked (context only)</span>"
        )
        kinds = {k for e in self.examples for k in (getattr(e, "kinds", None) or [])}
        marked = [
            f"<span style='{_kind_style(k, t)}'>{w}</span>" for k, w in KIND_WORDS.items() if k in kinds
        ]
        self.kinds_legend.setText("&nbsp; ".join(marked))
        self.kinds_legend.setVisible(bool(marked))
        mode = self.mode()
        self.headers[0].setVisible(mode != "example")
        self.headers[1].setVisible(mode == "pair")
        self.second.setVisible(mode == "pair")
        self.columns.setStretch(1, 1 if mode == "pair" else 0)  # a lone column takes the whole width
        for browser in (self.text, self.second):  # the side headers take a line: no taller than before
            browser.setMinimumHeight(120 if mode == "example" else 100)
        if not self.examples:
            self.index = 0
            self.position.setText("No example to show")
            self.text.setHtml("")
            self.second.setHtml("")
            self.previous.setEnabled(False)
            self.next.setEnabled(False)
            return
        self.index = max(0, min(index, len(self.examples) - 1))
        shown = self.examples[self.index]
        unit = {"example": "Example", "pair": "Pair", "answer": "Answer"}[mode]
        of = f"{len(self.examples)}"
        if self.records is not None and self.records > len(self.examples):
            of = f"{len(self.examples)} shown (of {self.records:,} records)"
        if mode == "example":
            notes = []
            if shown.truncated:
                notes.append(f"cut from {shown.original_tokens} tokens")
            if shown.dropped:
                notes.append("dropped: nothing left to train on")
            self.position.setText(
                f"Example {self.index + 1} of {of} · {shown.tokens} tokens, "
                f"{shown.trainable_tokens} trained" + (f" · {', '.join(notes)}" if notes else "")
            )
            kinds = getattr(shown, "kinds", None)
            # a long tools prompt comes first: start the view at the first thing learnt
            self._render(self.text, shown.segments, kinds=kinds, scroll=bool(set(kinds or []) - {"text"}))
        else:
            sides = (
                [("Chosen", shown.chosen, t.ok), ("Rejected", shown.rejected, t.error)]
                if mode == "pair"
                else [(shown.label, shown.answer, t.ok if shown.desirable else t.error)]
            )
            cut = " · cut to fit" if shown.truncated else ""
            self.position.setText(
                f"{unit} {self.index + 1} of {of} · prompt {shown.prompt_tokens} tokens{cut}"
            )
            for header, browser, (name, side, colour) in zip(
                self.headers, (self.text, self.second), sides, strict=False
            ):
                header.setText(self._header(mode, name, side, colour))
                self._render(browser, side.segments, scroll=True)
        self.position.setToolTip(shown.location)
        self.previous.setEnabled(self.index > 0)
        self.next.setEnabled(self.index < len(self.examples) - 1)

    def _header(self, mode: str, name: str, side: Any, colour: str) -> str:
        """'Chosen · 40 tokens, 12 trained' with the side's name as a coloured badge."""
        label = name if mode == "pair" else f"labelled {name}"
        badge = (
            f"<span style='background:{colour}; color:#ffffff; font-weight:600'>&nbsp;{html.escape(name)}&nbsp;</span>"
            if mode == "answer"
            else f"<b style='color:{colour}'>{html.escape(label)}</b>"
        )
        lead = "Answer " if mode == "answer" else ""
        cut = f", cut from {side.original_tokens}" if side.truncated else ""
        return (
            f"{lead}{badge} <span style='color:{self.theme.muted}'>· {side.tokens} tokens{cut}, "
            f"{side.trainable_tokens} trained</span>"
        )

    def _render(
        self,
        browser: QTextBrowser,
        segments: list[tuple[str, bool]],
        *,
        scroll: bool = False,
        kinds: list[str] | None = None,
    ) -> None:
        browser.setHtml(segments_html(segments, self.theme, kinds))
        start = next((i for i, (_, trained) in enumerate(segments) if trained), 0)
        if scroll and start:  # the answer's start at the top, a line of its prompt above it
            offset = sum(len(text) for text, _ in segments[:start])
            QTimer.singleShot(0, browser, lambda: _scroll_to(browser, offset))

    def side_texts(self) -> tuple[str, str]:
        """The plain text of the two columns (for tests)."""
        return self.text.toPlainText(), self.second.toPlainText()


def _scroll_to(browser: QTextBrowser, offset: int) -> None:
    """Scroll so that the character at ``offset`` is on the second line of the view (once laid out)."""
    cursor = QTextCursor(browser.document())
    cursor.setPosition(min(offset, browser.document().characterCount() - 1))
    bar = browser.verticalScrollBar()
    rect = browser.cursorRect(cursor)
    bar.setValue(max(0, bar.value() + rect.top() - rect.height()))


#: How the preview names the parts it marks apart (``PreviewExample.kinds``).
KIND_WORDS = {"tool_call": "tool call", "tool_result": "tool result", "reasoning": "reasoning"}


def _kind_style(kind: str, theme: Any) -> str:
    return {
        "tool_call": f"color:{theme.accent}; font-weight:600",
        "tool_result": f"color:{theme.warn}",
        "reasoning": "font-style:italic",
    }.get(kind, "")


def segments_html(segments: list[tuple[str, bool]], theme: Any, kinds: list[str] | None = None) -> str:
    """Segments as monospaced HTML: trained text highlighted, masked text greyed; tool calls, results
    and reasoning (``kinds``) styled apart."""
    parts = []
    for i, (text, trained) in enumerate(segments):
        escaped = html.escape(text)
        kind = kinds[i] if kinds and i < len(kinds) else "text"
        extra = _kind_style(kind, theme)
        if trained:
            colour = "" if kind == "tool_call" else f"; color:{theme.text}"
            style = f"background:{theme.trained_bg}{colour}" + (f"; {extra}" if extra else "")
        else:
            style = (
                extra
                if kind == "tool_result"
                else f"color:{theme.masked_text}" + (f"; {extra}" if extra else "")
            )
        parts.append(f"<span style='{style}'>{escaped}</span>")
    font = QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont).family()
    return f"<pre style='white-space: pre-wrap; font-family: \"{font}\"; font-size: 9.5pt'>{''.join(parts)}</pre>"


class LengthHistogram(LivePlot):
    """Example lengths in tokens, with the maximum sequence length as a line."""

    def __init__(self, parent: QWidget | None = None) -> None:
        self._fg = th.LIGHT.plot_fg
        super().__init__("Example lengths", "Examples", parent, x_label="Tokens per example")
        self.setMinimumHeight(170)
        self.legend.hide()
        self.bars = pg.BarGraphItem(x0=[], x1=[], height=[], brush=QColor(th.SERIES["histogram"]))
        self.addItem(self.bars)
        pen = pg.mkPen(QColor(th.SERIES["max_seq_len"]), width=2, style=Qt.PenStyle.DashLine)
        self.limit = pg.InfiniteLine(angle=90, pen=pen, movable=False, label="", labelOpts={"position": 0.9})
        self.addItem(self.limit)
        self.bar_count = 0

    def set_data(
        self,
        histogram: dict[str, list[int]],
        max_seq_len: int,
        truncated: int,
        *,
        subject: str = "Example lengths",
        unit: str = "Examples",
        x_label: str = "Tokens per example",
    ) -> None:
        """Bars of ``histogram`` with the ``max_seq_len`` line; preference data plots each pair's longer
        side (``subject`` / ``unit`` / ``x_label`` name what is counted)."""
        edges, counts = histogram.get("edges", []), histogram.get("counts", [])
        self.setLabel("left", unit)
        self.setLabel("bottom", x_label)
        self.bar_count = len(counts)
        if counts:
            self.bars.setOpts(
                x0=edges[:-1], x1=[e - 0.08 * (edges[1] - edges[0]) for e in edges[1:]], height=counts
            )
        else:
            self.bars.setOpts(x0=[], x1=[], height=[])
        longest = edges[-1] if edges else 0
        # the limit line is drawn only when it is near the data; far away it would squash the bars
        near = bool(edges) and max_seq_len <= 1.6 * longest
        self.limit.setVisible(near)
        self.limit.setValue(max_seq_len)
        cut = f", {truncated} cut" if truncated else ""
        self.limit.label.setFormat(f"max length {max_seq_len}{cut}")
        # the count cut goes on the limit line and in the Statistics: in the title it was clipped
        self.title_text = f"{subject} — maximum {max_seq_len} tokens"
        self.getPlotItem().setTitle(self.title_text, color=self._fg, size="10pt")
        right = max(longest, max_seq_len if near else 0) * 1.05 or 1
        left = max(0, edges[0] - (edges[1] - edges[0])) if len(edges) > 1 else 0
        self.setXRange(left, right, padding=0)
        self.setYRange(0, max(counts or [1]) * 1.12, padding=0)

    def apply_theme(self, theme: Any) -> None:
        self._fg = theme.plot_fg
        super().apply_theme(theme)
        if hasattr(self, "limit"):
            self.limit.label.setColor(theme.plot_fg)


class SpeakerTable(QWidget):
    """Speaker names the data uses with no known role, each with a role to choose (a guess first).

    Nothing changes until "Use these roles": a guess is a suggestion, and one click maps every
    speaker at once (``data.role_map``). Names already mapped stay listed so the mapping can be
    changed or forgotten.
    """

    mapping_chosen = Signal(dict)

    ROLES = (("user", "user"), ("assistant", "assistant"), ("system", "system"), ("tool", "tool result"))

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.note = QLabel()
        self.note.setObjectName("muted")
        self.note.setWordWrap(True)
        self.table = QTableWidget(0, 3)
        self.table.setObjectName("speakerTable")
        self.table.setHorizontalHeaderLabels(["Speaker", "Records", "Role"])
        self.table.verticalHeader().hide()
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.NoSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        header.setSectionResizeMode(1, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(2, QHeaderView.ResizeMode.ResizeToContents)
        self.apply = QPushButton("Use these roles")
        self.apply.setToolTip("Map each speaker to the role chosen here (data.role_map).")
        self.apply.clicked.connect(lambda: self.mapping_chosen.emit(self.mapping()))
        self.forget = QPushButton("Forget the mapping")
        self.forget.clicked.connect(lambda: self.mapping_chosen.emit({}))
        buttons = QHBoxLayout()
        buttons.addWidget(self.apply)
        buttons.addWidget(self.forget)
        buttons.addStretch(1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.note)
        layout.addWidget(self.table)
        layout.addLayout(buttons)
        self.combos: dict[str, QComboBox] = {}

    def set_speakers(self, unknown: dict[str, dict[str, Any]], role_map: dict[str, str]) -> None:
        """``unknown``: name → {records, guess}; ``role_map``: the mapping in use."""
        names = {name: (facts.get("records", 0), facts["guess"]) for name, facts in unknown.items()}
        for name, role in role_map.items():
            names.setdefault(name, ("", role))
        self.table.setRowCount(len(names))
        self.combos = {}
        for row, (name, (records, role)) in enumerate(names.items()):
            self.table.setItem(row, 0, QTableWidgetItem(name))
            self.table.setItem(row, 1, QTableWidgetItem(str(records)))
            combo = QComboBox()
            for value, text in self.ROLES:
                combo.addItem(text, value)
            combo.setCurrentIndex(max(0, combo.findData(role)))
            self.table.setCellWidget(row, 2, combo)
            self.combos[name] = combo
        rows = sum(self.table.rowHeight(r) for r in range(len(names)))
        self.table.setFixedHeight(
            self.table.horizontalHeader().height() + rows + 2 * self.table.frameWidth() + 2
        )
        if unknown:
            self.note.setText(
                "These speakers have no known role, so their records cannot be read. Check the guessed "
                "roles and use them:"
            )
        else:
            self.note.setText("Speaker names mapped to roles:")
        self.apply.setEnabled(bool(names))
        self.forget.setVisible(bool(role_map))

    def mapping(self) -> dict[str, str]:
        return {name: combo.currentData() for name, combo in self.combos.items()}


class ProblemList(QListWidget):
    """Located dataset problems; double-click (or Enter) shows the offending record."""

    record_requested = Signal(object)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWordWrap(True)
        self.setAlternatingRowColors(False)
        # two rows at least, then it scrolls: a list of problems must not push the window past the
        # screen's bottom (with the error message above it, it grew a 1360×860 window by 25 px)
        self.setMinimumHeight(40)
        self.itemActivated.connect(
            lambda item: self.record_requested.emit(item.data(Qt.ItemDataRole.UserRole))
        )
        self.setToolTip("Double-click a problem to see the record it is about.")

    def set_problems(self, problems: list[Any], total: int) -> None:
        self.clear()
        for error in problems:
            item = QListWidgetItem(problem_text(error))
            item.setData(Qt.ItemDataRole.UserRole, error)
            item.setToolTip(str(error))
            self.addItem(item)
        if total > len(problems):
            self.addItem(QListWidgetItem(f"… and {total - len(problems)} more"))

    def texts(self) -> list[str]:
        return [self.item(i).text() for i in range(self.count())]


def problem_text(error: Any) -> str:
    """'file.jsonl · line 3 · record 2 · field messages — reason'."""
    where = []
    if error.file:
        where.append(str(error.file).rsplit("/", 1)[-1])
    if error.line is not None:
        where.append(f"line {error.line}")
    if error.record is not None:
        where.append(f"record {error.record}")
    if error.field:
        where.append(f"field '{error.field}'")
    text = " · ".join(where)
    return f"{text} — {error.reason}" if text else error.reason


class RecordDialog(QDialog):
    """The offending lines of a dataset file around a problem, with the problem and its hint."""

    def __init__(self, error: Any, context: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Dataset problem")
        self.resize(760, 360)
        message = QLabel(f"<b>{html.escape(problem_text(error))}</b>")
        message.setWordWrap(True)
        hint = QLabel(f"What to do: {error.hint}" if error.hint else "")
        hint.setWordWrap(True)
        hint.setVisible(bool(error.hint))
        text = QPlainTextEdit(context or "(this problem is about the file as a whole, not one record)")
        text.setReadOnly(True)
        text.setLineWrapMode(QPlainTextEdit.LineWrapMode.NoWrap)
        text.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(QLabel(str(error.file or "")))
        layout.addWidget(message)
        layout.addWidget(hint)
        layout.addWidget(text, 1)
        layout.addWidget(buttons)
