"""The conversation widgets of the Chat page: a transcript with light Markdown, and the input box.

:class:`Transcript` keeps the turns as plain data and re-renders its HTML when told (the page
coalesces streamed pieces and calls :meth:`Transcript.render` a few times a second, not per token).
Markdown support is deliberately small: fenced code blocks in a monospace box, `inline code`,
**bold**, and line breaks — enough to read model answers, never executing or loading anything.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QKeyEvent
from PySide6.QtWidgets import (
    QCheckBox,
    QDoubleSpinBox,
    QFormLayout,
    QPlainTextEdit,
    QSpinBox,
    QTextBrowser,
    QWidget,
)

from lora_studio.core.chat import Reply, Sampling
from lora_studio.gui.widgets.forms import Foldable

_FENCE = re.compile(r"```[^\n`]*\n?(.*?)(?:```|$)", re.S)
_INLINE = re.compile(r"`([^`\n]+)`")
_BOLD = re.compile(r"\*\*([^*\n]+)\*\*")
MONO = "'DejaVu Sans Mono','Menlo','Consolas',monospace"


def markdown_html(text: str, code_bg: str = "#f0f0f0") -> str:
    """Markdown-ish text → safe HTML (everything escaped first)."""
    out, last = [], 0
    for match in _FENCE.finditer(text):
        out.append(_prose(text[last : match.start()]))
        code = html.escape(match.group(1).rstrip("\n"))
        out.append(
            f'<pre style="font-family:{MONO}; background:{code_bg}; padding:6px; margin:4px 0;">{code}</pre>'
        )
        last = match.end()
    out.append(_prose(text[last:]))
    return "".join(out)


def _prose(text: str) -> str:
    text = html.escape(text.strip("\n"))
    if not text:
        return ""
    text = _INLINE.sub(lambda m: f'<code style="font-family:{MONO};">{m.group(1)}</code>', text)
    text = _BOLD.sub(r"<b>\1</b>", text)
    return text.replace("\n", "<br>")


def reply_stats(reply: Reply) -> str:
    """'12 tokens · 3.4 tokens/s · first token 0.21 s': under an answer, or as a table cell's tooltip."""
    first = f"first token {reply.first_token_s:.2f} s" if reply.first_token_s is not None else "no tokens"
    parts = [f"{reply.new_tokens} tokens", f"{reply.tokens_per_s:.1f} tokens/s", first]
    if reply.stopped:
        parts.insert(0, "stopped")
    return " · ".join(parts + reply.notes)


@dataclass
class Turn:
    role: str  # "user" | "assistant"
    text: str
    stats: str = ""
    pending: bool = False


class Transcript(QTextBrowser):
    """One side of the conversation (the page shows one, or two side by side)."""

    def __init__(self, title: str = "", parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.heading = title
        self.turns: list[Turn] = []
        self.setOpenLinks(False)
        self.colours = {"muted": "#777777", "accent": "#3b6fd8", "code": "#f0f0f0"}
        self.render()

    def add(self, role: str, text: str, *, pending: bool = False) -> Turn:
        turn = Turn(role, text, pending=pending)
        self.turns.append(turn)
        return turn

    def clear_turns(self) -> None:
        self.turns.clear()
        self.render()

    def plain_text(self) -> str:
        return "\n".join(f"{t.role}: {t.text}" for t in self.turns)

    def render(self) -> None:
        c = self.colours
        parts = (
            [f'<p style="color:{c["muted"]};"><b>{html.escape(self.heading)}</b></p>'] if self.heading else []
        )
        for turn in self.turns:
            who = "You" if turn.role == "user" else "Assistant"
            colour = c["accent"] if turn.role == "user" else c["muted"]
            empty = "(stopped)" if turn.stats.startswith("stopped") else "(no text)"
            body = markdown_html(turn.text, c["code"]) or ("…" if turn.pending else f"<i>{empty}</i>")
            cursor = " ▍" if turn.pending else ""
            parts.append(
                f'<p style="margin-top:10px;"><b style="color:{colour};">{who}</b><br>{body}{cursor}</p>'
            )
            if turn.stats:
                parts.append(f'<p style="color:{c["muted"]}; font-size:small;">{html.escape(turn.stats)}</p>')
        self.setHtml("".join(parts))
        bar = self.verticalScrollBar()
        bar.setValue(bar.maximum())

    def apply_theme(self, theme: Any) -> None:
        self.colours = {
            "muted": theme.muted,
            "accent": theme.accent,
            "code": theme.window if theme.window != theme.base else theme.card,
        }
        self.render()


class PromptEdit(QPlainTextEdit):
    """The message box: Enter sends, Shift+Enter starts a new line."""

    submitted = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setPlaceholderText("Type a message — Enter sends, Shift+Enter for a new line")
        self.setTabChangesFocus(True)

    def keyPressEvent(self, event: QKeyEvent) -> None:
        enter = event.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter)
        if enter and not event.modifiers() & Qt.KeyboardModifier.ShiftModifier:
            self.submitted.emit()
            return
        super().keyPressEvent(event)


class SamplingPanel(Foldable):
    """Temperature, top-p, top-k, repetition penalty, length and greedy, folded away: the defaults
    are fine for most questions, and the values are one click from view."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("Sampling: temperature, top-p, top-k, repetition penalty, length", parent)
        form = QFormLayout(self.content)
        form.setContentsMargins(0, 0, 0, 0)
        defaults = Sampling()

        def number(value: float, low: float, high: float, step: float) -> QDoubleSpinBox:
            box = QDoubleSpinBox()
            box.setRange(low, high)
            box.setSingleStep(step)
            box.setDecimals(2)
            box.setValue(value)
            return box

        self.temperature = number(defaults.temperature, 0.01, 5.0, 0.05)
        self.top_p = number(defaults.top_p, 0.01, 1.0, 0.05)
        self.repetition = number(defaults.repetition_penalty, 0.5, 3.0, 0.05)
        self.top_k = QSpinBox()
        self.top_k.setRange(0, 10_000)
        self.top_k.setValue(defaults.top_k)
        self.max_tokens = QSpinBox()
        self.max_tokens.setRange(1, 32_768)
        self.max_tokens.setValue(defaults.max_new_tokens)
        self.greedy = QCheckBox("Greedy (always the most likely token: same answer every time)")
        for label, widget in [("Temperature", self.temperature), ("Top-p", self.top_p), ("Top-k", self.top_k),
                              ("Repetition penalty", self.repetition), ("Max new tokens", self.max_tokens),
                              ("", self.greedy)]:  # fmt: skip
            form.addRow(label, widget)

    def sampling(self) -> Sampling:
        return Sampling(
            temperature=self.temperature.value(),
            top_p=self.top_p.value(),
            top_k=self.top_k.value(),
            repetition_penalty=self.repetition.value(),
            max_new_tokens=self.max_tokens.value(),
            greedy=self.greedy.isChecked(),
        )
