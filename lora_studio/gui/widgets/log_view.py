"""The run's log: one line per engine event, in plain words, bounded so a long run cannot grow it."""

from __future__ import annotations

import time
from typing import Any

from PySide6.QtGui import QFontDatabase, QTextCursor
from PySide6.QtWidgets import QPlainTextEdit, QWidget

from lora_studio.core.train import events as ev
from lora_studio.core.train import format_duration

MAX_LINES = 5000


class LogView(QPlainTextEdit):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setReadOnly(True)
        self.setMaximumBlockCount(MAX_LINES)
        self.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        self.setPlaceholderText("The run's messages appear here.")

    def add(self, text: str) -> None:
        self.appendPlainText(f"{time.strftime('%H:%M:%S')}  {text}")

    def at_end(self) -> bool:
        bar = self.verticalScrollBar()
        return bar.value() >= bar.maximum()

    def resizeEvent(self, event: Any) -> None:
        """A message bar appearing above shrinks the log: it keeps its last line in full view
        (the line that says how the run ended was left half hidden)."""
        following = self.at_end()
        super().resizeEvent(event)
        if following:
            self.scroll_to_end()

    def scroll_to_end(self) -> None:
        cursor = self.textCursor()
        cursor.movePosition(QTextCursor.MoveOperation.End)
        self.setTextCursor(cursor)
        self.ensureCursorVisible()

    def add_event(self, event: Any) -> None:
        text = event_text(event)
        if text:
            self.add(text)


def event_text(event: Any) -> str:
    """The log line for an engine event ('' for events the log does not show)."""
    if isinstance(event, ev.Phase):
        return f"{event.name[:1].upper()}{event.name[1:]}" + (f": {event.detail}" if event.detail else "")
    if isinstance(event, ev.RunStarted):
        pct = 100 * event.trainable_params / max(event.total_params, 1)
        resumed = f", resuming from step {event.resumed_from_step}" if event.resumed_from_step else ""
        held = event.dataset.get("eval_examples") or 0
        evaluated = f" ({held} held out for evaluation)" if held else ""
        notes = "".join(f"\n  Note: {w}" for w in event.dataset.get("warnings") or [])
        return (
            f"Run {event.run_id} started on {event.device} ({event.dtype}): {event.total_steps} steps, "
            f"{event.dataset.get('examples', '?')} examples{evaluated}, {event.trainable_params:,} trainable "
            f"parameters ({pct:.2f}%){resumed}{notes}"
        )
    if isinstance(event, ev.Step):
        grad = f"  grad norm {event.grad_norm:.3f}" if event.grad_norm is not None else ""
        return (
            f"Step {event.step}/{event.total_steps}  loss {event.loss:.4f}  lr {event.learning_rate:.2e}"
            f"{grad}  {event.tokens_per_s:,.0f} tokens/s{_preference(event.preference, '  ')}"
        )
    if isinstance(event, ev.Evaluation):
        return f"Evaluation at step {event.step}: eval loss {event.eval_loss:.4f}" + _preference(
            event.preference, ", eval "
        )
    if isinstance(event, ev.CheckpointSaved):
        return f"Checkpoint saved at step {event.step}"
    if isinstance(event, ev.Samples):
        return f"Sample answers {event.stage} training ({len(event.samples)} prompts)"
    if isinstance(event, ev.Paused):
        return f"Paused at step {event.step}" if event.paused else f"Resumed at step {event.step}"
    if isinstance(event, ev.Finished):
        loss = f", final loss {event.final_loss:.4f}" if event.final_loss is not None else ""
        took = format_duration(event.elapsed_s)
        return f"Run {event.status} at step {event.step} after {took}{loss}. Folder: {event.run_dir}"
    if isinstance(event, ev.Failed):
        return f"Run failed after step {event.step}: {event.message}" + (
            f" — {event.hint}" if event.hint else ""
        )
    return ""


def _preference(values: dict[str, float], sep: str) -> str:
    """A preference run's margin and accuracy (KTO: KL) for its log line ('' for SFT)."""
    return "".join(sep + word for word in ev.preference_words(values))
