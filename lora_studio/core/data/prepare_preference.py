"""Preference files → tokenized pairs (DPO, ORPO, SimPO) or labelled answers (KTO), with stats.

The same rendering as supervised data (``render.Encoder``: the model's chat template, the same loss
masks): a pair is two conversations, prompt + chosen and prompt + rejected, each with only its
answer's tokens trained — earlier assistant turns of a multi-turn prompt are context. Each side is
cut to ``max_seq_len`` on its own (the start is kept); a pair whose prompt alone fills
``max_seq_len`` has nothing left to compare and is a located error (or skipped, with
``skip_invalid``).

Rows keep full sequences and their labels rather than TRL's split prompt/answer ids, so the
trained tokens are exactly the ones the Data page highlights; ``collate_preferences`` builds the
batches each TRL trainer reads from them.

Nothing heavy is imported at module level.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lora_studio.core.config import PAIR_METHODS, DataSection
from lora_studio.core.data.files import check_cancel
from lora_studio.core.data.formats import Conversation
from lora_studio.core.data.preference import (
    LabelledAnswer,
    PreferencePair,
    PreferenceReport,
    load_preferences,
)
from lora_studio.core.data.prepare import (
    REPORT_BATCH_SIZE,
    DatasetStats,
    PreparedDataset,
    _histogram,
    _length_stats,
    hold_out_note,
    padding_report,
    split_conversations,
)
from lora_studio.core.data.render import IGNORE, Encoder, Example, TemplateProblem, template_note
from lora_studio.core.errors import DatasetError

if TYPE_CHECKING:
    import datasets
    import torch

Item = PreferencePair | LabelledAnswer


@dataclass
class EncodedPair:
    """One pair as the model sees it: both sides rendered, tokenized and cut."""

    chosen: Example
    rejected: Example
    source: PreferencePair

    @property
    def prompt_tokens(self) -> int:
        return _prompt_length(self.chosen)


@dataclass
class EncodedAnswer:
    """One KTO example: the labelled answer rendered after its prompt."""

    example: Example
    desirable: bool
    source: LabelledAnswer


def prepare_preferences(
    data: DataSection,
    tokenizer: Any,
    method: str,
    *,
    seed: int = 42,
    cancel: threading.Event | None = None,
) -> PreparedDataset:
    """Everything a preference run needs from ``data``; raises :class:`DatasetError` on unusable data.

    Pairs feed DPO, ORPO and SimPO. KTO reads labelled answers, and also pairs: each pair is then
    two labelled answers (chosen good, rejected bad), as TRL does. Labelled answers cannot feed the
    pair methods: a pair cannot be made up from them.
    """
    items, report = load_preferences(data.path, skip_invalid=data.skip_invalid, cancel=cancel)
    _check_kind(report, method, data.path)
    eval_items = None
    if data.eval_path:
        eval_items, eval_report = load_preferences(
            data.eval_path, skip_invalid=data.skip_invalid, cancel=cancel
        )
        _check_kind(eval_report, method, data.eval_path)
        report.skipped += eval_report.skipped
        report.evidence += [f"eval: {e}" for e in eval_report.evidence]
    train_items, held_items = (
        (items, eval_items) if eval_items is not None else split_items(items, data, seed)
    )
    note = hold_out_note(len(items), data) if eval_items is None else None
    if note:
        report.warnings.append(note)
    encoder = Encoder(tokenizer, train_on="assistant", max_seq_len=data.max_seq_len)
    skipped = list(report.skipped)
    train = encode_items(encoder, train_items, data, method, skipped, cancel)
    held = encode_items(encoder, held_items, data, method, skipped, cancel) if held_items else []
    if not train:
        raise DatasetError(
            f"no usable {_unit(method)}: every one was left out",
            file=report.files[0] if len(report.files) == 1 else None,
            hint=f"first: {skipped[0]}" if skipped else None,
        )
    stats = _stats(report, data, method, encoder, train, held, skipped)
    return PreparedDataset(_rows(train), _rows(held) if held else None, stats, skipped)


def encode_items(
    encoder: Encoder,
    items: list[Item],
    data: DataSection,
    method: str,
    skipped: list[DatasetError],
    cancel: threading.Event | None = None,
) -> list[EncodedPair | EncodedAnswer]:
    """Encode each pair or labelled answer; a bad one raises, or is skipped with ``skip_invalid``."""
    out: list[EncodedPair | EncodedAnswer] = []
    for item in items:
        check_cancel(cancel)
        try:
            out.extend(_encode(encoder, item, data, method))
        except DatasetError as exc:
            if not data.skip_invalid:
                raise
            skipped.append(exc)
    return out


def _encode(
    encoder: Encoder, item: Item, data: DataSection, method: str
) -> list[EncodedPair | EncodedAnswer]:
    prompt = _with_system(item.prompt, data.system_prompt)
    if isinstance(item, LabelledAnswer):
        example = _encode_side(encoder, item, prompt, item.completion, "completion", data.max_seq_len)
        return [EncodedAnswer(example, item.desirable, item)]
    chosen = _encode_side(encoder, item, prompt, item.chosen, "chosen", data.max_seq_len)
    rejected = _encode_side(encoder, item, prompt, item.rejected, "rejected", data.max_seq_len)
    if method == "kto":  # a pair is two labelled answers to KTO
        return [
            EncodedAnswer(
                chosen,
                True,
                LabelledAnswer(item.prompt, item.chosen, True, item.file, item.line, item.record),
            ),
            EncodedAnswer(
                rejected,
                False,
                LabelledAnswer(item.prompt, item.rejected, False, item.file, item.line, item.record),
            ),
        ]
    return [EncodedPair(chosen, rejected, item)]


def _encode_side(
    encoder: Encoder,
    item: Item,
    prompt: list[dict[str, str]],
    answer: list[dict[str, str]],
    name: str,
    limit: int,
) -> Example:
    conv = Conversation(messages=[*prompt, *answer], file=item.file, line=item.line, record=item.record)
    try:
        example = encoder.encode(conv, answer_from=len(prompt))
    except TemplateProblem as exc:
        raise conv.error(f"{name}: {exc}") from None
    if example.trainable == 0:
        # the example was cut to the limit: count the whole prompt, so the hint names a length that fits
        rendered = encoder.render(prompt, None, generation=True)
        prompt_tokens = len(encoder.tokenizer(rendered, add_special_tokens=False)["input_ids"])
        answer_name = "the answer" if name == "completion" else f"the {name} answer"
        raise conv.error(
            f"the prompt is {prompt_tokens:,} tokens, so nothing of {answer_name} fits in "
            f"max_seq_len = {limit}",
            hint=f"raise data.max_seq_len above {prompt_tokens}, or shorten this record's prompt "
            "(or skip such records: skip_invalid)",
        )
    return example


def _with_system(prompt: list[dict[str, str]], system: str | None) -> list[dict[str, str]]:
    if system and not (prompt and prompt[0]["role"] == "system"):
        return [{"role": "system", "content": system}, *prompt]
    return prompt


def _prompt_length(example: Example) -> int:
    """Tokens before the first trained one (the answer's start)."""
    return next((i for i, label in enumerate(example.labels) if label != IGNORE), len(example.labels))


def _check_kind(report: PreferenceReport, method: str, path: str) -> None:
    if method in PAIR_METHODS and report.kind == "labels":
        raise DatasetError(
            f"{method.upper()} learns from pairs of a chosen and a rejected answer; this file has single "
            f"answers labelled good or bad ({report.desirable} good, {report.undesirable} bad)",
            file=path,
            hint="choose KTO as the method (training.method = 'kto'), or use a file with chosen/rejected pairs",
        )


def split_items(items: list[Item], data: DataSection, seed: int) -> tuple[list[Item], list[Item]]:
    """(training, held-out) exactly as :func:`prepare_preferences` splits them: evaluating a run on
    its held-out pairs reads the same pairs its training left out."""
    return split_conversations(items, data, seed)


def _unit(method: str) -> str:
    return "labelled answers" if method == "kto" else "pairs"


def _sides(encoded: EncodedPair | EncodedAnswer) -> list[Example]:
    return [encoded.chosen, encoded.rejected] if isinstance(encoded, EncodedPair) else [encoded.example]


def _stats(
    report: PreferenceReport,
    data: DataSection,
    method: str,
    encoder: Encoder,
    train: list[EncodedPair | EncodedAnswer],
    held: list[EncodedPair | EncodedAnswer],
    skipped: list[DatasetError],
) -> DatasetStats:
    everything = [side for e in train + held for side in _sides(e)]
    lengths = [sum(len(s.ids) for s in _sides(e)) for e in train]
    answers = [e for e in train if isinstance(e, EncodedAnswer)]
    truncated = sum(1 for e in train + held if any(s.original_length > len(s.ids) for s in _sides(e)))
    warnings = list(report.warnings)
    if truncated:
        warnings.append(
            f"{truncated} {_unit(method)} were cut to max_seq_len = {data.max_seq_len} (the start is kept)"
        )
    if method == "kto" and answers:
        good = sum(a.desirable for a in answers)
        bad = len(answers) - good
        if good and bad and not (0.75 <= good / bad <= 1.33):
            warnings.append(
                f"{good} good and {bad} bad answers: KTO learns best when desirable_weight × good is 1 to "
                "1.33 × undesirable_weight × bad; adjust the weights"
            )
        if not good or not bad:
            warnings.append(f"every answer is labelled {'good' if good else 'bad'}: KTO needs both kinds")
    return DatasetStats(
        format=f"preference ({report.format})",
        detected=True,
        files=report.files,
        records=report.records,
        examples=len(train),
        eval_examples=len(held),
        trainable_tokens=sum(s.trainable for e in train for s in _sides(e)),
        total_tokens=sum(lengths),
        truncated=truncated,
        truncated_tokens=sum(s.original_length - len(s.ids) for s in everything),
        dropped=0,
        skipped=[str(e) for e in skipped],
        fallback_template=encoder.fallback,
        template=template_note(encoder, "preference"),
        max_seq_len=data.max_seq_len,
        train_on="assistant",
        lengths=_length_stats(lengths),
        histogram=_histogram(lengths),
        padding=padding_report(lengths, REPORT_BATCH_SIZE),
        evidence=list(report.evidence),
        warnings=warnings,
        method=method,
        desirable=sum(a.desirable for a in answers),
        undesirable=sum(not a.desirable for a in answers),
    )


def _rows(encoded: list[EncodedPair | EncodedAnswer]) -> datasets.Dataset:
    import datasets

    ints = datasets.List(datasets.Value("int32"))
    if encoded and isinstance(encoded[0], EncodedAnswer):
        answers = [e for e in encoded if isinstance(e, EncodedAnswer)]
        features = datasets.Features(
            {"ids": ints, "labels": ints, "label": datasets.Value("bool"), "length": datasets.Value("int32")}
        )
        columns: dict[str, list[Any]] = {
            "ids": [a.example.ids for a in answers],
            "labels": [a.example.labels for a in answers],
            "label": [a.desirable for a in answers],
            "length": [len(a.example.ids) for a in answers],
        }
        return datasets.Dataset.from_dict(columns, features=features)
    pairs = [e for e in encoded if isinstance(e, EncodedPair)]
    features = datasets.Features(
        {
            "chosen_ids": ints,
            "chosen_labels": ints,
            "rejected_ids": ints,
            "rejected_labels": ints,
            "length": datasets.Value("int32"),
        }
    )
    columns = {
        "chosen_ids": [p.chosen.ids for p in pairs],
        "chosen_labels": [p.chosen.labels for p in pairs],
        "rejected_ids": [p.rejected.ids for p in pairs],
        "rejected_labels": [p.rejected.labels for p in pairs],
        "length": [len(p.chosen.ids) + len(p.rejected.ids) for p in pairs],
    }
    return datasets.Dataset.from_dict(columns, features=features)


# -- batches ------------------------------------------------------------------------------------


def collate_preferences(
    method: str, pad_token_id: int, max_seq_len: int
) -> Callable[[list[dict]], dict[str, Any]]:
    """The batch each TRL trainer reads, built from our rows (labels decide the trained tokens).

    DPO: chosen rows then rejected rows in one ``input_ids`` with a ``completion_mask``. ORPO and
    SimPO (TRL's CPO trainer): ``chosen_*`` and ``rejected_*`` tensors with ``-100`` labels. KTO: the
    answers, plus the KL batch — each prompt with the previous row's answer (rotated within the
    batch, as TRL does) — and the boolean ``label``.
    """
    import torch

    def pad(rows: list[list[int]], value: int) -> torch.Tensor:
        width = max(len(r) for r in rows)
        return torch.tensor([r + [value] * (width - len(r)) for r in rows], dtype=torch.long)

    def masks(rows: list[list[int]]) -> torch.Tensor:
        return pad([[1] * len(r) for r in rows], 0)

    def completion(labels: list[list[int]]) -> torch.Tensor:
        return pad([[int(x != IGNORE) for x in r] for r in labels], 0)

    def dpo(features: list[dict]) -> dict[str, Any]:
        ids = [f["chosen_ids"] for f in features] + [f["rejected_ids"] for f in features]
        labels = [f["chosen_labels"] for f in features] + [f["rejected_labels"] for f in features]
        return {
            "input_ids": pad(ids, pad_token_id),
            "attention_mask": masks(ids),
            "completion_mask": completion(labels),
        }

    def cpo(features: list[dict]) -> dict[str, Any]:
        batch: dict[str, Any] = {}
        for side in ("chosen", "rejected"):
            ids = [f[f"{side}_ids"] for f in features]
            batch[f"{side}_input_ids"] = pad(ids, pad_token_id)
            batch[f"{side}_attention_mask"] = masks(ids)
            batch[f"{side}_labels"] = pad([f[f"{side}_labels"] for f in features], IGNORE)
        return batch

    def kto(features: list[dict]) -> dict[str, Any]:
        ids = [f["ids"] for f in features]
        labels = [f["labels"] for f in features]
        starts = [next((i for i, x in enumerate(r) if x != IGNORE), len(r)) for r in labels]
        kl_ids, kl_labels = [], []
        for i in range(len(features)):
            j = i - 1  # x_i with y_{i-1}: (x_1, y_n), (x_2, y_1), …
            kl_ids.append((ids[i][: starts[i]] + ids[j][starts[j] :])[:max_seq_len])
            kl_labels.append(([IGNORE] * starts[i] + labels[j][starts[j] :])[:max_seq_len])
        return {
            "input_ids": pad(ids, pad_token_id),
            "attention_mask": masks(ids),
            "completion_mask": completion(labels),
            "KL_input_ids": pad(kl_ids, pad_token_id),
            "KL_attention_mask": masks(kl_ids),
            "KL_completion_mask": completion(kl_labels),
            "label": torch.tensor([bool(f["label"]) for f in features]),
        }

    if method == "dpo":
        return dpo
    if method == "kto":
        return kto
    if method in ("orpo", "simpo"):
        return cpo
    raise ValueError(f"no preference batches for method {method!r}")
