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
        #: Answers of the stage being written, by prompt: (stage, text so far, done). The engine's
        #: Samples event then replaces them with the stage's batch.
        self.writing: dict[str, tuple[str, str, bool]] = {}
        self.muted = "#5f6b7a"
        self.setPlaceholderText(
            "The model's answers to the sample prompts appear here, before and after training."
        )

    def clear_samples(self) -> None:
        self.batches = []
        self.writing = {}
        self.setHtml("")

    def show_progress(self, stage: str, prompt: str, text: str, done: bool) -> None:
        """An answer being written, under its prompt, as it grows."""
        if self.writing.get(prompt) == (stage, text, done):
            return
        self.writing[prompt] = (stage, text, done)
        self._render()

    def end_progress(self) -> None:
        if self.writing:
            self.writing = {}
            self._render()

    def add(self, stage: str, step: int, samples: list[tuple[str, str]]) -> None:
        self.batches.append((stage, step, list(samples)))
        self._render()

    def set_theme(self, theme: Any) -> None:
        self.muted = theme.muted
        self._render()

    def _render(self) -> None:
        """One block per prompt with each stage's answer under it: the change reads at a glance."""
        prompts: dict[str, list[tuple[str, int | None, str]]] = {}
        for stage, step, samples in self.batches:
            for prompt, answer in samples:
                prompts.setdefault(prompt, []).append((stage, step, answer))
        for prompt, (stage, text, done) in self.writing.items():
            prompts.setdefault(prompt, []).append((stage, -1 if done else None, text))
        parts = []
        for prompt, answers in prompts.items():
            parts.append(f"<p style='margin:4px 0 2px 0'><b>{html.escape(prompt)}</b></p>")
            for i, (stage, step, answer) in enumerate(answers):
                latest = i == len(answers) - 1
                colour = "" if latest else f"color:{self.muted};"
                name = _STAGES.get(stage, stage.capitalize())
                label = {None: f"{name} (writing…)", -1: name}.get(step, f"{name} (step {step})")
                text = html.escape(answer) or ("<i>(empty answer)</i>" if step is not None else "…")
                parts.append(
                    f"<p style='margin:0 0 2px 12px; {colour}'><span style='color:{self.muted}'>{label}:</span> "
                    f"{text}</p>"
                )
        self.setHtml("".join(parts))

    def count(self) -> int:
        return sum(len(samples) for _stage, _step, samples in self.batches)
