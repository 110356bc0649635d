"""Preference data as the model will see it: pairs side by side, counts, truncation and every problem.

The Data page and ``inspect-data`` show a preference file through here, and both say the same
thing, because both go through :func:`inspect_preferences`: the file is read with every bad record
collected (not only the first), then prepared exactly as training would
(:func:`prepare_preferences`, so the counts and the truncation are training's own), and the first
few pairs are rendered side by side — each side the prompt plus that answer, through the model's
chat template, with the trained tokens marked (:class:`PreviewExample`, as for supervised data).

Which methods fit is a property of the file: pairs train with DPO, ORPO and SimPO, and with KTO (a
pair is then a good and a bad answer); answers labelled good or bad train only with KTO.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from lora_studio.core.config import DataSection
from lora_studio.core.data.files import check_cancel
from lora_studio.core.data.preference import (
    PreferenceReport,
    scan_preferences,
    sniff_preference_format,
)
from lora_studio.core.data.prepare import DatasetStats, PreviewExample, _histogram, _preview_example
from lora_studio.core.data.prepare_preference import (
    EncodedAnswer,
    EncodedPair,
    Item,
    _prompt_length,
    encode_items,
    prepare_preferences,
)
from lora_studio.core.data.render import Encoder
from lora_studio.core.errors import DatasetError

#: Preference methods, in the order they are offered.
PREFERENCE_METHODS = ("dpo", "orpo", "simpo", "kto")
METHOD_NAMES = {"sft": "supervised", "dpo": "DPO", "orpo": "ORPO", "simpo": "SimPO", "kto": "KTO"}


def methods_for(kind: str) -> list[str]:
    """The training methods a preference file of this kind ("pairs" or "labels") can feed."""
    return list(PREFERENCE_METHODS) if kind == "pairs" else ["kto"]


def methods_text(kind: str) -> str:
    """'DPO, ORPO, SimPO or KTO' / 'KTO' (for messages)."""
    names = [METHOD_NAMES[m] for m in methods_for(kind)]
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def is_preference_data(data: DataSection, method: str) -> bool:
    """Whether training with ``method`` reads ``data`` as preference data.

    A preference method always does. With supervised fine-tuning ("sft") a file whose records are
    chosen/rejected pairs or KTO labels is still shown as preference data — it was made for
    preference tuning, and training it as supervised data would learn the rejected or bad answers
    too — unless the user chose a record format (``data.format``) or to keep only the answers
    labelled true (``data.positive_only``), which read it as supervised data.
    """
    if method != "sft":
        return True
    if data.format != "auto":
        return False
    shape = sniff_preference_format(data.path)
    return shape is not None and not (shape == "kto" and data.positive_only)


@dataclass
class PairPreview:
    """One pair as the model sees it: the prompt + chosen answer, and the prompt + rejected answer."""

    chosen: PreviewExample
    rejected: PreviewExample
    location: str
    prompt_tokens: int  # tokens before the answer (the same on both sides)

    @property
    def truncated(self) -> bool:
        return self.chosen.truncated or self.rejected.truncated

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "pair",
            "location": self.location,
            "prompt_tokens": self.prompt_tokens,
            "truncated": self.truncated,
            "chosen": self.chosen.to_dict(),
            "rejected": self.rejected.to_dict(),
        }


@dataclass
class AnswerPreview:
    """One KTO answer as the model sees it (prompt + answer), labelled good (desirable) or bad."""

    answer: PreviewExample
    desirable: bool
    location: str
    prompt_tokens: int

    @property
    def truncated(self) -> bool:
        return self.answer.truncated

    @property
    def label(self) -> str:
        return "good" if self.desirable else "bad"

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "answer",
            "location": self.location,
            "prompt_tokens": self.prompt_tokens,
            "truncated": self.truncated,
            "label": self.label,
            "desirable": self.desirable,
            "answer": self.answer.to_dict(),
        }


Preview = PairPreview | AnswerPreview


def preview_preferences(
    items: list[Item], data: DataSection, tokenizer: Any, method: str, n: int = 3
) -> list[Preview]:
    """The first ``n`` pairs (KTO: answers) of ``items`` exactly as training with ``method`` renders
    them; an item training would leave out (its prompt fills ``max_seq_len``) is passed over."""
    encoder = Encoder(tokenizer, train_on="assistant", max_seq_len=data.max_seq_len)
    collect = data.model_copy(update={"skip_invalid": True})
    out: list[Preview] = []
    for item in items:
        if len(out) >= n:
            break
        for encoded in encode_items(encoder, [item], collect, method, []):
            out.append(_preview(encoded, tokenizer, encoder.fallback))
    return out[:n]


def _preview(encoded: EncodedPair | EncodedAnswer, tokenizer: Any, fallback: bool) -> Preview:
    if isinstance(encoded, EncodedPair):
        return PairPreview(
            chosen=_preview_example(encoded.chosen, tokenizer, fallback),
            rejected=_preview_example(encoded.rejected, tokenizer, fallback),
            location=encoded.chosen.conversation.where(),
            prompt_tokens=encoded.prompt_tokens,
        )
    return AnswerPreview(
        answer=_preview_example(encoded.example, tokenizer, fallback),
        desirable=encoded.desirable,
        location=encoded.example.conversation.where(),
        prompt_tokens=_prompt_length(encoded.example),
    )


@dataclass
class PreferenceInspection:
    """What a preference file gives a preference run, for ``inspect-data`` and the Data page.

    ``report``: the file's shape and its usable pairs / good and bad answers, every invalid record
    in ``report.skipped``. ``method``: the method the file was prepared for (the one asked for, else
    DPO for pairs and KTO for labels). ``stats``: training's own statistics for that method (pairs
    or answers for training and held out, trained tokens, how many cut to ``max_seq_len``), or None
    when the data cannot train with it (then ``error`` says why). ``errors``: every located problem,
    reading and tokenizing (a pair whose prompt alone fills ``max_seq_len``). ``longest_side``: the
    histogram of each pair's longer side (KTO: each answer) in tokens — what ``max_seq_len`` cuts.
    """

    report: PreferenceReport
    method: str
    requested: str | None
    stats: DatasetStats | None
    previews: list[Preview]
    errors: list[DatasetError]
    error: DatasetError | None = None
    longest_side: dict[str, list[int]] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return self.report.kind

    @property
    def methods(self) -> list[str]:
        return methods_for(self.kind)

    @property
    def usable(self) -> int:
        """Pairs or labelled answers read without a problem."""
        return self.report.pairs + self.report.desirable + self.report.undesirable

    def counts(self) -> dict[str, int | None]:
        """The numbers both views show (``inspect-data --json`` key ``counts``)."""
        stats = self.stats
        return {
            "records": self.report.records,
            "pairs": self.report.pairs,
            "desirable": self.report.desirable,
            "undesirable": self.report.undesirable,
            "train": stats.examples if stats else None,
            "eval": stats.eval_examples if stats else None,
            "train_desirable": stats.desirable if stats and self.method == "kto" else None,
            "train_undesirable": stats.undesirable if stats and self.method == "kto" else None,
            "truncated": stats.truncated if stats else None,
            "truncated_tokens": stats.truncated_tokens if stats else None,
            "skipped": len(self.errors),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "format": self.report.format,
            "method": self.method,
            "method_requested": self.requested,
            "methods": self.methods,
            "counts": self.counts(),
            "stats": self.stats.to_dict() if self.stats else None,
            "longest_side": self.longest_side,
            "preview": [p.to_dict() for p in self.previews],
        }


def inspect_preferences(
    data: DataSection,
    tokenizer: Any,
    method: str | None = None,
    *,
    seed: int = 42,
    preview_count: int = 3,
    cancel: threading.Event | None = None,
) -> PreferenceInspection:
    """Read, check and prepare a preference file as training with ``method`` would.

    ``method`` None (or "sft") inspects pairs for DPO (ORPO and SimPO prepare pairs the same way)
    and labels for KTO. Problems with the file as a whole (missing, not preference data, broken
    JSON) raise :class:`DatasetError`; problems with records or with the method are collected.
    """
    items, report = scan_preferences(data.path, cancel=cancel)
    requested = method if method in PREFERENCE_METHODS else None
    chosen = requested or ("kto" if report.kind == "labels" else "dpo")
    errors = list(report.skipped)
    stats: DatasetStats | None = None
    error: DatasetError | None = None
    longest: list[int] = []
    try:
        collecting = data.model_copy(update={"skip_invalid": True})
        prepared = prepare_preferences(collecting, tokenizer, chosen, seed=seed, cancel=cancel)
        stats = prepared.stats
        errors = list(prepared.skipped)
        longest = _longest_sides(items, data, tokenizer, chosen, cancel)
    except DatasetError as exc:
        error = exc
    if error is None and errors and not data.skip_invalid:
        error = errors[0]  # training stops at the first one
    previews = [] if not items else preview_preferences(items, data, tokenizer, chosen, preview_count)
    return PreferenceInspection(
        report=report,
        method=chosen,
        requested=requested,
        stats=stats,
        previews=previews,
        errors=errors,
        error=error,
        longest_side=_histogram(longest) if longest else {"edges": [], "counts": []},
    )


def _longest_sides(
    items: list[Item], data: DataSection, tokenizer: Any, method: str, cancel: threading.Event | None
) -> list[int]:
    """Each pair's longer side (KTO: each answer) in tokens before cutting: what max_seq_len meets."""
    encoder = Encoder(tokenizer, train_on="assistant", max_seq_len=data.max_seq_len)
    collect = data.model_copy(update={"skip_invalid": True})
    lengths = []
    for item in items:
        check_cancel(cancel)
        for encoded in encode_items(encoder, [item], collect, method, []):
            sides = (
                [encoded.chosen, encoded.rejected] if isinstance(encoded, EncodedPair) else [encoded.example]
            )
            lengths.append(max(s.original_length for s in sides))
    return lengths
