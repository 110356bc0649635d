"""Dataset files → tokenized training examples with loss masks; the stats, preview and collators.

The pipeline: :func:`load_conversations` (strict, located validation; no tokenizer) → render
each conversation with the model's chat template → token ids and labels → truncate → split →
``datasets.Dataset``. :func:`prepare_dataset` does it all and raises :class:`DatasetError` before
any model is loaded; :func:`preview` shows exactly what the model will learn.

Loss masks, rendering and the fallback template are explained in :mod:`lora_studio.core.data.render`.

Nothing heavy is imported at module level (``tests/test_core_is_qt_free.py``).
"""

from __future__ import annotations

import random
import statistics
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from lora_studio.core.config import DataSection
from lora_studio.core.data.files import check_cancel
from lora_studio.core.data.formats import (
    Conversation,
    DetectionReport,
    load_conversations,
    scan_conversations,
)
from lora_studio.core.data.render import (
    IGNORE,
    NO_TOOL_CALLS,
    NO_TOOL_CALLS_HINT,
    Encoder,
    Example,
    TemplateProblem,
    template_note,
)
from lora_studio.core.errors import DatasetError

if TYPE_CHECKING:
    import datasets
    import torch

T = TypeVar("T")

#: Batch size assumed for the padding report when the training batch size is not known.
REPORT_BATCH_SIZE = 8


@dataclass
class DatasetStats:
    """What the data will do to training, for the Data page, ``inspect-data`` and the run folder.

    ``examples`` counts training examples after dropping those with nothing left to learn;
    ``trainable_tokens``, ``total_tokens``, ``lengths`` and ``histogram`` describe them;
    ``truncated`` / ``truncated_tokens`` / ``dropped`` count train and eval examples; ``skipped`` holds
    the located message of every record left out (``skip_invalid``).
    """

    format: str
    detected: bool
    files: list[str]
    records: int
    examples: int
    eval_examples: int
    trainable_tokens: int
    total_tokens: int
    truncated: int
    truncated_tokens: int
    dropped: int
    skipped: list[str]
    fallback_template: bool
    template: str
    max_seq_len: int
    train_on: str
    lengths: dict[str, float] = field(default_factory=dict)
    histogram: dict[str, list[int]] = field(default_factory=dict)
    padding: dict[str, float] = field(default_factory=dict)
    evidence: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    method: str = "sft"  # preference data: "dpo" … "kto"; then ``examples`` counts pairs or answers
    desirable: int = 0  # KTO: answers labelled good and bad
    undesirable: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class PreparedDataset:
    """Tokenized train (and eval) sets with columns ``input_ids``, ``labels`` and ``length``."""

    train: datasets.Dataset
    eval: datasets.Dataset | None
    stats: DatasetStats
    skipped: list[DatasetError]


@dataclass
class PreviewExample:
    """One example exactly as the model sees it: text segments marked trained or not.

    ``kinds`` names each segment: "text", or "tool_call", "tool_result", "reasoning" — so a preview
    can show calls and results apart from the conversation around them.
    """

    segments: list[tuple[str, bool]]
    tokens: int
    trainable_tokens: int
    original_tokens: int
    truncated: bool
    dropped: bool
    location: str
    fallback_template: bool
    kinds: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Segments as ``{text, trained}``, with ``kind`` only on tool calls, results and reasoning."""
        data = asdict(self)
        kinds = self.kinds or ["text"] * len(self.segments)
        data["segments"] = [
            {"text": t, "trained": b, **({"kind": k} if k != "text" else {})}
            for (t, b), k in zip(self.segments, kinds, strict=True)
        ]
        del data["kinds"]
        return data


# -- building the dataset -----------------------------------------------------------------------


def prepare_dataset(
    data: DataSection, tokenizer: Any, *, seed: int = 42, cancel: threading.Event | None = None
) -> PreparedDataset:
    """Everything the trainer needs from ``data``; raises :class:`DatasetError` on unusable data.

    Cheap enough to call before loading a model (the demo set takes well under a second), and
    checks ``cancel`` between records.
    """
    conversations, report = load_conversations(data, cancel=cancel)
    eval_conversations = None
    if data.eval_path:
        eval_data = data.model_copy(update={"path": data.eval_path, "eval_path": None, "eval_fraction": 0.0})
        eval_conversations, eval_report = load_conversations(eval_data, cancel=cancel)
        report.skipped += eval_report.skipped
        report.evidence += [f"eval: {e}" for e in eval_report.evidence]
    return build_dataset(
        conversations, report, data, tokenizer, seed=seed, cancel=cancel, eval=eval_conversations
    )


def build_dataset(
    conversations: list[Conversation],
    report: DetectionReport,
    data: DataSection,
    tokenizer: Any,
    *,
    seed: int = 42,
    cancel: threading.Event | None = None,
    eval: list[Conversation] | None = None,
) -> PreparedDataset:
    """Tokenize already-loaded conversations (``inspect-data`` loads them itself to list errors)."""
    import datasets

    train_convs, eval_convs = (
        (conversations, eval) if eval is not None else split_conversations(conversations, data, seed)
    )
    encoder = Encoder(tokenizer, train_on=data.train_on, max_seq_len=data.max_seq_len)
    if not data.skip_invalid:
        check_tool_calls(encoder, conversations if eval is None else conversations + eval, report.files)
    skipped = list(report.skipped)
    train = _encode_all(encoder, train_convs, data.skip_invalid, skipped, cancel)
    held_out = _encode_all(encoder, eval_convs, data.skip_invalid, skipped, cancel) if eval_convs else []
    everything = train + held_out
    kept = [e for e in train if e.trainable]
    kept_eval = [e for e in held_out if e.trainable]
    warnings = list(report.warnings)
    note = hold_out_note(len(conversations), data) if eval is None else None
    if note:
        warnings.append(note)
    if not train:
        raise DatasetError(
            "no usable examples: the chat template rejected every conversation",
            file=report.files[0] if len(report.files) == 1 else None,
            hint=f"first: {skipped[len(report.skipped)]}",
        )
    if not kept:
        longest = max((e.original_length for e in everything), default=0)
        raise DatasetError(
            f"no usable examples: all {len(train)} examples lose every trained token when cut to "
            f"max_seq_len = {data.max_seq_len}",
            file=report.files[0] if len(report.files) == 1 else None,
            hint=f"raise max_seq_len (the longest example has {longest} tokens)",
        )
    dropped = [e for e in everything if not e.trainable]
    if dropped:
        warnings.append(
            f"{len(dropped)} examples have nothing left to learn within max_seq_len = {data.max_seq_len} and "
            f"were dropped (first: {dropped[0].conversation.where()})"
        )
    if held_out and not kept_eval:
        warnings.append("every eval example lost its trained tokens to truncation: evaluation is off")
    lengths = [len(e.ids) for e in kept]
    stats = DatasetStats(
        format=report.format,
        detected=report.detected,
        files=report.files,
        records=report.records,
        examples=len(kept),
        eval_examples=len(kept_eval),
        trainable_tokens=sum(e.trainable for e in kept),
        total_tokens=sum(lengths),
        truncated=sum(1 for e in everything if e.original_length > len(e.ids)),
        truncated_tokens=sum(e.original_length - len(e.ids) for e in everything),
        dropped=len(everything) - len(kept) - len(kept_eval),
        skipped=[str(e) for e in skipped],
        fallback_template=encoder.fallback and report.format != "text",
        template=template_note(encoder, report.format),
        max_seq_len=data.max_seq_len,
        train_on="all" if report.format == "text" else data.train_on,
        lengths=_length_stats(lengths),
        histogram=_histogram(lengths),
        padding=padding_report(lengths, REPORT_BATCH_SIZE, seed=seed),
        evidence=list(report.evidence),
        warnings=warnings,
    )
    return PreparedDataset(
        _to_dataset(datasets, kept), _to_dataset(datasets, kept_eval) if kept_eval else None, stats, skipped
    )


def split_conversations(conversations: list[T], data: DataSection, seed: int) -> tuple[list[T], list[T]]:
    """Seeded hold-out; both parts keep file order so examples stay easy to find.

    Preference pairs and labelled answers are split by the same rule (``prepare_preference``), so a
    run's held-out part is the same whichever kind of record its file holds.
    """
    n = len(conversations)
    k = held_out_count(n, data)
    if k == 0:
        return conversations, []
    order = list(range(n))
    random.Random(seed).shuffle(order)
    held = set(order[:k])
    return [c for i, c in enumerate(conversations) if i not in held], [conversations[i] for i in sorted(held)]


def held_out_count(records: int, data: DataSection) -> int:
    """How many of ``records`` a run holds out: none when its share is less than one record (a file
    too small to spare any trains on all of it, see :func:`hold_out_note`), else
    ``round(records * share)`` — at most 200 for the default share — never every record.

    The held-out records are the first ones of one seeded order, so a cap changes which records a
    run trains on but never puts a trained record into an evaluation."""
    share = data.hold_out_share()
    if share <= 0 or records * share < 1 - 1e-9:
        return 0
    k = min(records - 1, max(1, round(records * share)))
    cap = data.hold_out_cap()
    return min(k, cap) if cap else k


def hold_out_note(records: int, data: DataSection) -> str | None:
    """The line that says a file was too small to hold any of it out (None when it was not)."""
    if data.eval_path or data.hold_out_share() <= 0 or held_out_count(records, data):
        return None
    return (
        f"nothing held out for evaluation: {data.hold_out_share():.0%} of {records} records is less than "
        "one, so every record trains (evaluate on a separate file, or add records)"
    )


def check_tool_calls(encoder: Encoder, conversations: list[Conversation], files: list[str]) -> None:
    """One message, not one per record, when the template cannot render the file's tool calls."""
    if encoder.renders_calls:
        return
    calling = [c for c in conversations if any(m.get("tool_calls") for m in c.messages)]
    if calling:
        raise DatasetError(
            f"{len(calling)} of {len(conversations)} conversations have tool calls (first: "
            f"{calling[0].where()}), but {NO_TOOL_CALLS}",
            file=files[0] if len(files) == 1 else None,
            hint=NO_TOOL_CALLS_HINT,
        )


def _encode_all(
    encoder: Encoder,
    conversations: list[Conversation],
    skip_invalid: bool,
    skipped: list[DatasetError],
    cancel: threading.Event | None,
) -> list[Example]:
    examples = []
    for conv in conversations:
        check_cancel(cancel)
        try:
            examples.append(encoder.encode(conv))
        except TemplateProblem as exc:
            error = conv.error(str(exc))
            if not skip_invalid:
                raise error from None
            skipped.append(error)
    return examples


def _to_dataset(datasets: Any, examples: list[Example]) -> datasets.Dataset:
    features = datasets.Features(
        {
            "input_ids": datasets.List(datasets.Value("int32")),
            "labels": datasets.List(datasets.Value("int32")),
            "length": datasets.Value("int32"),
        }
    )
    columns = {
        "input_ids": [e.ids for e in examples],
        "labels": [e.labels for e in examples],
        "length": [len(e.ids) for e in examples],
    }
    return datasets.Dataset.from_dict(columns, features=features)


# -- statistics ---------------------------------------------------------------------------------


def _length_stats(lengths: list[int]) -> dict[str, float]:
    if not lengths:
        return {}
    ordered = sorted(lengths)
    p95 = ordered[min(len(ordered) - 1, max(0, -(-95 * len(ordered) // 100) - 1))]  # nearest rank
    return {
        "min": ordered[0],
        "median": statistics.median(ordered),
        "p95": p95,
        "max": ordered[-1],
        "mean": round(sum(ordered) / len(ordered), 1),
    }


def _histogram(lengths: list[int], bins: int = 10) -> dict[str, list[int]]:
    """Equal-width bins from the shortest to the longest example (``edges`` has bins + 1 values)."""
    if not lengths:
        return {"edges": [], "counts": []}
    low, high = min(lengths), max(lengths)
    bins = min(bins, high - low + 1)
    width = max(1, -(-(high - low + 1) // bins))
    edges = [low + i * width for i in range(bins + 1)]
    counts = [0] * bins
    for n in lengths:
        counts[min(bins - 1, (n - low) // width)] += 1
    return {"edges": edges, "counts": counts}


def padding_fraction(lengths: list[int], batch_size: int, *, grouped: bool, seed: int = 42) -> float:
    """Share of a padded batch that is padding, in random order or grouped by length.

    Grouping mirrors transformers' ``LengthGroupedSampler``: shuffle, cut into mega-batches of 50
    batches, sort each by length (longest first), then cut into batches.
    """
    order = list(range(len(lengths)))
    random.Random(seed).shuffle(order)
    if grouped:
        mega = 50 * batch_size
        order = [
            i
            for s in range(0, len(order), mega)
            for i in sorted(order[s : s + mega], key=lambda i: -lengths[i])
        ]
    padded = real = 0
    for s in range(0, len(order), batch_size):
        batch = [lengths[i] for i in order[s : s + batch_size]]
        padded += max(batch) * len(batch)
        real += sum(batch)
    return round(1 - real / padded, 4) if padded else 0.0


def padding_report(lengths: list[int], batch_size: int, *, seed: int = 42) -> dict[str, float]:
    """Padding each way: plain batches, length-grouped batches, and packing (none, by construction)."""
    return {
        "batch_size": batch_size,
        "padded_random": padding_fraction(lengths, batch_size, grouped=False, seed=seed),
        "padded_length_grouped": padding_fraction(lengths, batch_size, grouped=True, seed=seed),
        "packed": 0.0,
    }


# -- preview ------------------------------------------------------------------------------------


def preview(data: DataSection, tokenizer: Any, n: int = 3) -> list[PreviewExample]:
    """The first ``n`` usable examples as the model sees them (invalid records are passed over)."""
    conversations, report = scan_conversations(data)
    if not conversations:
        raise report.skipped[0] if report.skipped else DatasetError("no records", file=data.path)
    return preview_conversations(conversations, data, tokenizer, n)


def preview_conversations(
    conversations: list[Conversation], data: DataSection, tokenizer: Any, n: int = 3
) -> list[PreviewExample]:
    """:func:`preview` for conversations already loaded."""
    encoder = Encoder(tokenizer, train_on=data.train_on, max_seq_len=data.max_seq_len)
    examples = []
    for conv in conversations:
        if len(examples) >= n:
            break
        try:
            example = encoder.encode(conv)
            examples.append(_preview_example(example, tokenizer, encoder.fallback, encoder.kind_spans(conv)))
        except TemplateProblem:
            continue
    return examples


def _preview_example(
    example: Example, tokenizer: Any, fallback: bool, spans: list[tuple[int, int, str]] | None = None
) -> PreviewExample:
    """``spans``: character spans of tool calls, results and reasoning (``Encoder.kind_spans``)."""
    flags = [label != IGNORE for label in example.labels]
    kinds = _token_kinds(example.offsets, spans) if spans and example.offsets else ["text"] * len(flags)
    runs: list[tuple[int, int, tuple[bool, str]]] = []  # token ranges with one trained state and kind
    for i, state in enumerate(zip(flags, kinds, strict=True)):
        if runs and runs[-1][2] == state:
            runs[-1] = (runs[-1][0], i + 1, state)
        else:
            runs.append((i, i + 1, state))
    segments = []
    for k, (a, b, (flag, _)) in enumerate(runs):
        if example.offsets:
            start = example.offsets[a][0] if k else 0
            end = example.offsets[runs[k + 1][0]][0] if k + 1 < len(runs) else example.offsets[b - 1][1]
            text = example.text[start:end]
        else:
            text = tokenizer.decode(example.ids[a:b])
        segments.append((text, flag))
    return PreviewExample(
        kinds=[kind for _, _, (_, kind) in runs],
        segments=segments,
        tokens=len(example.ids),
        trainable_tokens=example.trainable,
        original_tokens=example.original_length,
        truncated=example.original_length > len(example.ids),
        dropped=example.trainable == 0,
        location=example.conversation.where(),
        fallback_template=fallback,
    )


def _token_kinds(offsets: list[tuple[int, int]], spans: list[tuple[int, int, str]]) -> list[str]:
    """Each token's kind: that of the span its first character is in ("text" outside every span)."""
    kinds = []
    k = 0
    for start, end in offsets:
        while k < len(spans) and spans[k][1] <= start:
            k += 1
        inside = k < len(spans) and spans[k][0] <= start < spans[k][1] and end > start
        kinds.append(spans[k][2] if inside else "text")
    return kinds


# -- collators ----------------------------------------------------------------------------------


def make_collator(tokenizer: Any, *, packing: bool) -> Callable[[list[dict]], dict[str, torch.Tensor]]:
    """Batches for the trainer.

    ``packing=False``: right-padded ``input_ids`` (pad token), ``labels`` (-100) and
    ``attention_mask``; pair it with length-grouped sampling (the ``length`` column) to cut padding.
    ``packing=True``: one row of all examples back to back with ``position_ids`` restarting at each
    example and no attention mask; the label of each example's first token is -100 so no example
    learns from the one before. Examples stay isolated only when the model runs with
    ``use_cache=False`` (transformers builds the per-example mask only then).
    """
    if packing:
        from transformers import DataCollatorWithFlattening

        flatten = DataCollatorWithFlattening(return_position_ids=True, separator_id=IGNORE)

        def packed(features: list[dict]) -> dict[str, torch.Tensor]:
            return flatten([{"input_ids": f["input_ids"], "labels": f["labels"]} for f in features])

        return packed
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id or 0

    def padded(features: list[dict]) -> dict[str, torch.Tensor]:
        import torch

        width = max(len(f["input_ids"]) for f in features)
        input_ids = torch.full((len(features), width), pad_id, dtype=torch.long)
        labels = torch.full((len(features), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(features), width), dtype=torch.long)
        for row, f in enumerate(features):
            n = len(f["input_ids"])
            input_ids[row, :n] = torch.as_tensor(f["input_ids"], dtype=torch.long)
            labels[row, :n] = torch.as_tensor(f["labels"], dtype=torch.long)
            mask[row, :n] = 1
        return {"input_ids": input_ids, "labels": labels, "attention_mask": mask}

    return padded
