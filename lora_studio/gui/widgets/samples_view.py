"""Sample generations as they arrive: each prompt with its answer before and after training."""

from __future__ import annotations

import html
from typing import Any

from PySide6.QtWidgets import QTextBrowser, QWidget

_STAGES = {"before": "Before training", "after": "After training"}


class SamplesView(QTextBrowser):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setOpenLinks(False)
        self.batches: list[tuple[str, int, list[tuple[str, str]]]] = []
        self.muted = "#5f6b7a"
        self.setPlaceholderText(
            "The model's answers to the sample prompts appear here, before and after training."
        )

    def clear_samples(self) -> None:
        self.batches = []
        self.setHtml("")

    def add(self, stage: str, step: int, samples: list[tuple[str, str]]) -> None:
        self.batches.append((stage, step, list(samples)))
        self._render()

    def set_theme(self, theme: Any) -> None:
        self.muted = theme.muted
        self._render()

    def _render(self) -> None:
        parts = []
        for stage, step, samples in self.batches:
            title = _STAGES.get(stage, stage.capitalize())
            parts.append(
                f"<h4 style='margin-bottom:2px'>{title} <span style='color:{self.muted}; "
                f"font-weight:normal'>(step {step})</span></h4>"
            )
            for prompt, answer in samples:
                parts.append(
                    f"<p style='margin:2px 0 8px 0'><span style='color:{self.muted}'>Q: {html.escape(prompt)}"
                    f"</span><br>A: {html.escape(answer) or '<i>(empty answer)</i>'}</p>"
                )
        self.setHtml("".join(parts))

    def count(self) -> int:
        return sum(len(samples) for _stage, _step, samples in self.batches)
