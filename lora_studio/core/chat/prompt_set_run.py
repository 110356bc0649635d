"""Running a prompt set: every prompt answered by each model (base, fine-tuned), as a table.

Both columns come from one loaded model, the base with its adapter switched off
(:meth:`ChatModel.answer`), so a table costs no second copy of the weights. Greedy decoding is the
default so that the same set on the same adapter gives the same table, and two tables can be
compared. The table renders as Markdown with a header saying what was compared, how and when.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from lora_studio.core.atomic import atomic_write_text
from lora_studio.core.chat.model import ChatModel, Reply, Sampling
from lora_studio.core.chat.prompt_sets import PromptSet, PromptSetError

#: Greedy by default: the table is reproducible, so two runs of a set can be compared.
GREEDY = Sampling(greedy=True)


@dataclass(frozen=True)
class CellProgress:
    """One cell of the table starting (``reply`` None) or answered; ``index`` counts from 1."""

    row: int
    column: int
    index: int
    total: int
    reply: Reply | None = None


@dataclass
class PromptSetResult:
    """The table prompt × model. ``answers[row][column]`` is None for a cell not run (stopped)."""

    name: str
    system: str
    prompts: list[str]
    columns: list[str]
    answers: list[list[Reply | None]]
    model: str
    adapter: str | None
    sampling: Sampling
    started_at: float = field(default_factory=time.time)
    stopped: bool = False

    @property
    def total(self) -> int:
        return len(self.prompts) * len(self.columns)

    @property
    def done(self) -> int:
        return sum(reply is not None for row in self.answers for reply in row)

    def text(self, row: int, column: int) -> str | None:
        reply = self.answers[row][column]
        return None if reply is None else reply.text

    def to_markdown(self) -> str:
        """A header naming what was compared, then the table; renders on GitHub and most viewers."""
        when = datetime.fromtimestamp(self.started_at).astimezone().strftime("%Y-%m-%d %H:%M %Z")
        lines = [
            f"## Prompt set: {_cell(self.name)}",
            "",
            f"- **Model:** {_cell(self.model)}",
            f"- **Adapter:** {_cell(self.adapter) if self.adapter else 'none'}",
            f"- **Sampling:** {describe_sampling(self.sampling)}",
        ]
        if self.system.strip():
            lines.append(f"- **System prompt:** {_cell(self.system)}")
        lines.append(f"- **Date:** {when}")
        totals = []
        for column, label in enumerate(self.columns):
            replies = [row[column] for row in self.answers if row[column] is not None]
            tokens, seconds = sum(r.new_tokens for r in replies), sum(r.seconds for r in replies)
            totals.append(f"{label} {tokens} tokens in {seconds:.1f} s")
        lines.append(f"- **Generated:** {'; '.join(totals)}")
        if self.stopped:
            lines.append(f"- **Stopped** after {self.done} of {self.total} answers.")
        lines += ["", "| # | Prompt | " + " | ".join(map(_cell, self.columns)) + " |"]
        lines.append("|---:|---|" + "---|" * len(self.columns))
        for row, prompt in enumerate(self.prompts):
            cells = [_answer_cell(reply) for reply in self.answers[row]]
            lines.append(f"| {row + 1} | {_cell(prompt)} | " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"

    def write_markdown(self, path: str | Path) -> Path:
        path = Path(path).expanduser()
        try:
            atomic_write_text(path, self.to_markdown())
        except OSError as exc:
            raise PromptSetError(
                f"{path}: cannot be written ({exc.strerror or exc})", hint="choose another file or folder"
            ) from None
        return path

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "system": self.system,
            "model": self.model,
            "adapter": self.adapter,
            "sampling": describe_sampling(self.sampling),
            "started_at": self.started_at,
            "stopped": self.stopped,
            "columns": self.columns,
            "rows": [
                {
                    "prompt": p,
                    "answers": {
                        c: (r.to_dict() if r else None) for c, r in zip(self.columns, row, strict=True)
                    },
                }
                for p, row in zip(self.prompts, self.answers, strict=True)
            ],
        }


def describe_sampling(sampling: Sampling) -> str:
    if sampling.greedy:
        how = "greedy"
    else:
        how = (
            f"sampled: temperature {sampling.temperature:g}, top-p {sampling.top_p:g}, top-k {sampling.top_k}"
        )
    return f"{how}, repetition penalty {sampling.repetition_penalty:g}, at most {sampling.max_new_tokens} new tokens"


def default_columns(chat: ChatModel) -> list[tuple[str, bool]]:
    """(label, use_adapter): base and fine-tuned when an adapter is loaded, else the base alone."""
    if chat.has_adapter:
        return [("Base model", False), ("Fine-tuned", True)]
    return [("Base model", True)]


def run_prompt_set(
    chat: ChatModel,
    prompt_set: PromptSet,
    sampling: Sampling | None = None,
    *,
    columns: list[tuple[str, bool]] | None = None,
    cancel: threading.Event | None = None,
    on_cell: Callable[[CellProgress], None] | None = None,
    on_piece: Callable[[int, int, str], None] | None = None,
    model_name: str | None = None,
    adapter_name: str | None = None,
) -> PromptSetResult:
    """Answer every prompt with every column's model, row by row; returns the table.

    ``cancel`` stops within one token of the answer being written (kept, marked stopped) and
    leaves the remaining cells empty. ``on_cell`` is told when each cell starts and ends, and
    ``on_piece(row, column, text)`` receives the streamed text.
    """
    prompt_set.check()
    sampling = sampling or GREEDY
    sampling.check()
    columns = columns or default_columns(chat)
    cancel = cancel or threading.Event()
    result = PromptSetResult(
        name=prompt_set.name,
        system=prompt_set.system,
        prompts=list(prompt_set.prompts),
        columns=[label for label, _ in columns],
        answers=[[None] * len(columns) for _ in prompt_set.prompts],
        model=model_name or chat.source or "model",
        adapter=adapter_name or (str(chat.adapter_path) if chat.adapter_path and chat.has_adapter else None),
        sampling=sampling,
    )
    index = 0
    for row, prompt in enumerate(prompt_set.prompts):
        for column, (_label, use_adapter) in enumerate(columns):
            if cancel.is_set():
                result.stopped = True
                return result
            index += 1
            if on_cell:
                on_cell(CellProgress(row, column, index, result.total))
            pieces = (lambda text, r=row, c=column: on_piece(r, c, text)) if on_piece else None
            reply = chat.answer(
                prompt_set.messages(prompt), sampling, use_adapter=use_adapter, cancel=cancel, on_piece=pieces
            )
            result.answers[row][column] = reply
            result.stopped = result.stopped or reply.stopped
            if on_cell:
                on_cell(CellProgress(row, column, index, result.total, reply))
    return result


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell: pipes and backslashes escaped, line breaks as <br>."""
    text = text.replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;")
    return "<br>".join(line.rstrip() for line in text.strip().splitlines()) if text.strip() else ""


def _answer_cell(reply: Reply | None) -> str:
    if reply is None:
        return "—"
    text = _cell(reply.text) or "*(empty answer)*"
    return f"{text} *(stopped)*" if reply.stopped else text
