"""Sample generations as they arrive: each prompt with its answers before and after training (and at
any other stage the engine reports), the latest one in full colour."""

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
        """One block per prompt with each stage's answer under it: the change reads at a glance."""
        prompts: dict[str, list[tuple[str, int, str]]] = {}
        for stage, step, samples in self.batches:
            for prompt, answer in samples:
                prompts.setdefault(prompt, []).append((stage, step, answer))
        parts = []
        for prompt, answers in prompts.items():
            parts.append(f"<p style='margin:4px 0 2px 0'><b>{html.escape(prompt)}</b></p>")
            for i, (stage, step, answer) in enumerate(answers):
                latest = i == len(answers) - 1
                colour = "" if latest else f"color:{self.muted};"
                label = f"{_STAGES.get(stage, stage.capitalize())} (step {step})"
                text = html.escape(answer) or "<i>(empty answer)</i>"
                parts.append(
                    f"<p style='margin:0 0 2px 12px; {colour}'><span style='color:{self.muted}'>{label}:</span> "
                    f"{text}</p>"
                )
        self.setHtml("".join(parts))

    def count(self) -> int:
        return sum(len(samples) for _stage, _step, samples in self.batches)
