"""Evaluate models on an eval set and compare them: did the fine-tune change what it should?

The API a GUI worker, the CLI and the benchmark share::

    eval_set = load_eval_set(run=RunFolder.open(run_dir))          # or load_eval_set("file.jsonl")
    tuned = ModelSpec.from_run(run_dir)
    report = evaluate([tuned.base_of(), tuned], eval_set, EvalOptions(), progress=..., cancel=...)
    report.to_dict(); report.saved                                  # eval/<stamp>.json (+ .examples.jsonl)

Always measured: eval loss and perplexity on the trained tokens (the tokens training would learn).
The task metric is chosen from the reference answers (:func:`lora_studio.core.evaluate.metrics.choose_metric`)
or forced; one that does not apply becomes a note, never a number. A preference eval set (pairs,
or KTO's labelled answers) is measured from each model's log-probabilities of the answers instead,
with no generation: how often the chosen answer is preferred, by what margin, and each fine-tune's
implicit reward against its base (definitions in :mod:`lora_studio.core.evaluate.scoring`). Each model is loaded once as
it was trained (same quantization), and a base model compared with its fine-tune is the same
weights with the adapter switched off. Progress events are plain values; ``cancel`` is checked
between batches and raises :class:`CancelledError`. Results go into every run folder evaluated.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import random
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from lora_studio.core.atomic import atomic_write_text
from lora_studio.core.evaluate import metrics as m
from lora_studio.core.evaluate import model as runner
from lora_studio.core.evaluate import scoring
from lora_studio.core.evaluate.bootstrap import CONFIDENCE, RESAMPLES
from lora_studio.core.evaluate.inputs import (
    EvalSet,
    EvaluationError,
    ModelSpec,
    answer_text,
)
from lora_studio.core.runs import read_jsonl

SCHEMA = 1
EVAL_DIR = "eval"
_RUN_ID = re.compile(r"^\d{8}-\d{6}-")


@dataclass(frozen=True)
class EvalProgress:
    """What the evaluation is doing: ``stage`` of model ``model_index`` (0-based) of ``models``."""

    stage: str  # "loading model" | "loss" | "generating" | "scoring" | "comparing" | "saving"
    done: int
    total: int
    model: str = ""
    model_index: int = 0
    models: int = 1

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


ProgressListener = Callable[[EvalProgress], None]


@dataclass
class EvalOptions:
    """How to evaluate. ``max_new_tokens`` None sizes answers from the longest reference."""

    metric: str = "auto"  # "auto" | "accuracy" | "exact" | "rouge"
    max_examples: int | None = None  # a seeded sample of this many examples (file order kept)
    batch_size: int = 8
    max_new_tokens: int | None = None
    labels: list[str] | None = None  # the label set; default: the distinct reference answers
    synonyms: dict[str, str] = field(default_factory=dict)  # answer word -> label
    baseline: int = 0  # differences are "model - models[baseline]"
    resamples: int = RESAMPLES
    confidence: float = CONFIDENCE
    seed: int = 0

    def check(self) -> None:
        problems = []
        if self.metric not in m.METRIC_CHOICES:
            problems.append(f"metric must be one of {', '.join(m.METRIC_CHOICES)}")
        if self.max_examples is not None and self.max_examples < 1:
            problems.append("max_examples must be at least 1")
        if self.batch_size < 1:
            problems.append("batch_size must be at least 1")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            problems.append("max_new_tokens must be at least 1")
        if not 0 < self.confidence < 1:
            problems.append("confidence must be between 0 and 1")
        if self.resamples < 10:
            problems.append("resamples must be at least 10")
        if problems:
            raise EvaluationError("Invalid evaluation settings: " + "; ".join(problems))


@dataclass
class ModelResult:
    spec: ModelSpec
    metrics: dict[str, Any]
    rows: list[dict[str, Any]]  # per example: answer, loss, tokens and the task metric's scores
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.spec.to_dict(), "metrics": self.metrics, "seconds": round(self.seconds, 2)}


@dataclass
class EvalReport:
    """Everything an evaluation found; ``to_dict()`` is the saved JSON and the CLI's ``--json``."""

    eval_set: EvalSet
    metric: str | None
    metric_reason: str
    results: list[ModelResult]
    comparison: list[dict[str, Any]]
    options: EvalOptions
    notes: list[str] = field(default_factory=list)
    created_at: float = field(default_factory=time.time)
    saved: list[str] = field(default_factory=list)

    @property
    def labels(self) -> list[str]:
        return [r.spec.label for r in self.results]

    def to_dict(self, *, examples: bool = False) -> dict[str, Any]:
        data = {
            "schema": SCHEMA,
            "created_at": self.created_at,
            "eval_set": self.eval_set.to_dict(),
            "metric": self.metric,
            "metric_reason": self.metric_reason,
            "options": dataclasses.asdict(self.options),
            "models": [r.to_dict() for r in self.results],
            "baseline": self.labels[self.options.baseline] if self.results else None,
            "comparison": self.comparison,
            "notes": self.notes,
            "saved": self.saved,
        }
        if examples:
            data["examples"] = self.example_rows()
        return data

    def example_rows(self) -> list[dict[str, Any]]:
        """One row per example with every model's answer and scores (the sortable table); a pair
        also has its ``rejected`` answer, a KTO answer its ``label`` (good or bad)."""
        out = []
        for item in self.eval_set.items:
            prompt = item.prompt[-1]["content"] if item.prompt else None
            scores = {r.spec.label: r.rows[item.index] for r in self.results}
            row = {
                "index": item.index,
                "location": item.location,
                "prompt": prompt,
                "reference": item.reference,
                "models": scores,
            }
            if item.pair is not None and hasattr(item.pair, "rejected"):
                row["rejected"] = answer_text(item.pair.rejected)
            elif item.pair is not None:
                row["label"] = "good" if item.pair.desirable else "bad"
            out.append(row)
        return out

    def save(self, folder: Path) -> Path:
        """``folder/eval/<stamp>.json`` and ``<stamp>.examples.jsonl``, each written atomically."""
        target = Path(folder) / EVAL_DIR
        target.mkdir(parents=True, exist_ok=True)
        stamp = datetime.fromtimestamp(self.created_at).strftime("%Y%m%d-%H%M%S")
        name = next(
            s
            for s in (f"{stamp}{'' if k == 0 else f'-{k}'}" for k in range(1000))
            if not (target / f"{s}.json").exists()
        )
        lines = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in self.example_rows())
        atomic_write_text(target / f"{name}.examples.jsonl", lines)
        payload = {**self.to_dict(), "examples_file": f"{name}.examples.jsonl"}
        payload.pop("saved")  # where else it went is not part of the result
        atomic_write_text(target / f"{name}.json", json.dumps(payload, indent=2, ensure_ascii=False))
        return target / f"{name}.json"


def evaluate(
    models: Sequence[ModelSpec],
    eval_set: EvalSet,
    options: EvalOptions | None = None,
    *,
    progress: ProgressListener | None = None,
    cancel: threading.Event | None = None,
    save: bool = True,
    save_dir: Path | None = None,
) -> EvalReport:
    """Evaluate each model on the same examples and compare them with the baseline model.

    With ``save``, the report goes into every evaluated run's folder (and ``save_dir`` if given).
    Raises :class:`CancelledError` when cancelled, the chat module's error for an adapter that does
    not fit its base, and :class:`EvaluationError` for impossible requests.
    """
    options = options or EvalOptions()
    options.check()
    cancel = cancel or threading.Event()
    if not models:
        raise EvaluationError("nothing to evaluate", hint="give a run, an adapter or a base model")
    if not 0 <= options.baseline < len(models):
        raise EvaluationError(f"baseline {options.baseline} is not one of the {len(models)} models")
    models = _unique_labels(models)
    eval_set = sample_examples(eval_set, options)
    task, reason, notes = task_metric(eval_set, options)
    if task in m.PREFERENCE_TASKS:
        results = _evaluate_preferences(models, eval_set, task, options, cancel, notes, progress)
        return _report(models, eval_set, task, reason, notes, results, options, progress, save, save_dir)
    parser = (
        m.LabelParser(
            options.labels or m.reference_profile(eval_set.references())["labels"], options.synonyms
        )
        if task == "accuracy"
        else None
    )
    emit = _emitter(progress, len(models))
    results: list[ModelResult | None] = [None] * len(models)

    def work(indices: list[int], chat: Any) -> None:
        examples = _encode(chat.tokenizer, eval_set, notes)
        budget = options.max_new_tokens or _answer_budget(
            task, runner.reference_tokens(chat, eval_set.references())
        )
        for i in indices:
            results[i] = _evaluate_one(
                chat, models[i], i, eval_set, examples, task, parser, budget, options, cancel, emit
            )

    _for_each_load(models, emit, work)
    done = [r for r in results if r is not None]
    return _report(models, eval_set, task, reason, notes, done, options, progress, save, save_dir)


def _report(
    models: Sequence[ModelSpec],
    eval_set: EvalSet,
    task: str | None,
    reason: str,
    notes: list[str],
    done: list[ModelResult],
    options: EvalOptions,
    progress: ProgressListener | None,
    save: bool,
    save_dir: Path | None,
) -> EvalReport:
    """Compare the results with the baseline (bootstrap intervals) and save the report."""
    emit = _emitter(progress, len(models))
    emit(EvalProgress("comparing", 0, 1, "", 0))
    comparison = scoring.comparison_rows(
        task,
        [r.spec.label for r in done],
        [r.rows for r in done],
        baseline=options.baseline,
        resamples=options.resamples,
        confidence=options.confidence,
        seed=options.seed,
    )
    report = EvalReport(eval_set, task, reason, done, comparison, options, notes)
    if save:
        folders = list(
            dict.fromkeys(
                [*(Path(s.run_dir) for s in models if s.run_dir), *([save_dir] if save_dir else [])]
            )
        )
        for k, folder in enumerate(folders):
            emit(EvalProgress("saving", k, len(folders), "", 0))
            report.saved.append(str(report.save(folder)))
    return report


def _evaluate_one(
    chat: Any,
    spec: ModelSpec,
    position: int,
    eval_set: EvalSet,
    examples: list[Any],
    task: str | None,
    parser: m.LabelParser | None,
    budget: int,
    options: EvalOptions,
    cancel: threading.Event,
    emit: Callable[[EvalProgress], None],
) -> ModelResult:
    started = time.monotonic()
    if spec.adapter is not None and spec.use_adapter and not chat.has_adapter:
        raise EvaluationError(f"{spec.label}: the adapter did not load")

    def ticker(stage: str) -> runner.Tick:
        return lambda done, total: emit(EvalProgress(stage, done, total, spec.label, position))

    losses = runner.token_losses(
        chat,
        examples,
        use_adapter=spec.use_adapter,
        batch_size=options.batch_size,
        cancel=cancel,
        tick=ticker("loss"),
    )
    prompts = [item.prompt if task is not None else None for item in eval_set.items]
    answers = (
        runner.generate_answers(
            chat,
            prompts,
            use_adapter=spec.use_adapter,
            max_new_tokens=budget,
            batch_size=options.batch_size,
            cancel=cancel,
            tick=ticker("generating"),
        )
        if task is not None
        else [None] * len(prompts)
    )
    emit(EvalProgress("scoring", 0, 1, spec.label, position))
    references = [item.reference for item in eval_set.items]
    rows = scoring.score_examples(task, answers, references, parser)
    for row, answer, (nll, tokens) in zip(rows, answers, losses, strict=True):
        row.update(answer=answer, nll=nll, tokens=tokens, loss=nll / tokens if tokens else None)
    return ModelResult(spec, scoring.summarize(task, rows), rows, time.monotonic() - started)


def task_metric(eval_set: EvalSet, options: EvalOptions) -> tuple[str | None, str, list[str]]:
    """(task metric or None, why, notes) for this eval set: what an evaluation will measure, known
    before any model is loaded (the GUI shows it as soon as the eval set is chosen)."""
    references = eval_set.references()
    notes = list(eval_set.notes)
    if eval_set.kind != "sft":
        task = "preference" if eval_set.kind == "pairs" else "kto"
        what = (
            "chosen/rejected pairs: how often each model gives the chosen answer the higher log-probability"
            if task == "preference"
            else "answers labelled good or bad (KTO): whether each fine-tune raised the good answers' "
            "log-probability and lowered the bad ones'"
        )
        if options.metric != "auto":
            notes.append(
                f"{options.metric} does not apply to preference data: measured from log-probabilities"
            )
        return task, f"auto: {what}", notes
    if len(references) < len(eval_set.items):
        notes.append(
            f"{len(eval_set.items) - len(references)} examples have no answer to compare with: loss only"
        )
    if options.metric == "auto":
        choice = m.choose_metric(references)
        return choice.metric, f"auto: {choice.reason}", notes
    problem = (
        None
        if options.labels and options.metric == "accuracy" and references
        else m.not_applicable(options.metric, references)
    )
    if problem:
        return None, f"{options.metric} (chosen, not applicable)", [*notes, problem]
    return options.metric, f"{options.metric} (chosen)", notes


def _evaluate_preferences(
    models: Sequence[ModelSpec],
    eval_set: EvalSet,
    task: str,
    options: EvalOptions,
    cancel: threading.Event,
    notes: list[str],
    progress: ProgressListener | None,
) -> list[ModelResult]:
    """Each model's log-probabilities of the answers, scored against the base's (adapter off).

    Models that share their loaded weights are scored on one load; a fine-tune's reference is the
    same weights with the adapter off, measured once per load (reused when the base is evaluated).
    """
    emit = _emitter(progress, len(models))
    results: list[ModelResult | None] = [None] * len(models)
    desirable = [getattr(item.pair, "desirable", None) for item in eval_set.items]

    def work(indices: list[int], chat: Any) -> None:
        encoded = _encode_preferences(chat.tokenizer, eval_set, notes)
        measured: dict[int, tuple[list[Any], float]] = {}
        reference: list[Any] | None = None
        for i in indices:
            spec = models[i]
            if spec.adapter is not None and spec.use_adapter and not chat.has_adapter:
                raise EvaluationError(f"{spec.label}: the adapter did not load")
            started = time.monotonic()
            logps = _answer_logps(
                chat, encoded, spec.use_adapter, "loss", spec.label, i, options, cancel, emit
            )
            measured[i] = (logps, time.monotonic() - started)
            if not (spec.use_adapter and chat.has_adapter):
                reference = logps  # the base: the same weights, adapter off
        tuned = [i for i in indices if models[i].use_adapter and chat.has_adapter]
        if tuned and reference is None:
            label = f"{models[tuned[0]].label} (reference: adapter off)"
            reference = _answer_logps(
                chat, encoded, False, "reference", label, tuned[0], options, cancel, emit
            )
        for i in indices:
            spec = models[i]
            emit(EvalProgress("scoring", 0, 1, spec.label, i))
            logps, seconds = measured[i]
            own = spec.use_adapter and chat.has_adapter
            beta = spec.beta or DEFAULT_BETA
            rows = scoring.preference_rows(task, logps, reference if own else None, beta, desirable)
            results[i] = ModelResult(spec, scoring.summarize(task, rows), rows, seconds)

    _for_each_load(models, emit, work)
    _preference_notes(models, notes)
    return [r for r in results if r is not None]


def _for_each_load(
    models: Sequence[ModelSpec], emit: Callable[[EvalProgress], None], work: Callable[[list[int], Any], None]
) -> None:
    """Load each distinct model once and run ``work(indices of the models it serves, chat model)``:
    a base compared with its fine-tune is the same loaded weights with the adapter off. Each load is
    released before the next one."""
    groups: dict[tuple[Any, ...], list[int]] = {}
    for i, spec in enumerate(models):
        groups.setdefault(spec.load_key, []).append(i)
    for indices in groups.values():
        first = models[indices[0]]
        emit(EvalProgress("loading model", 0, 1, first.label, indices[0]))
        chat = runner.load_chat_model(
            first.source,
            adapter=first.adapter,
            quantization=first.quantization,
            compute_dtype=first.compute_dtype,
            double_quant=first.double_quant,
            trust_remote_code=first.trust_remote_code,
        )
        try:
            work(indices, chat)
        finally:
            del chat
            gc.collect()


#: β of the implicit reward when a fine-tune does not say (an adapter from outside a run): TRL's default.
DEFAULT_BETA = 0.1


def _encode_preferences(tokenizer: Any, eval_set: EvalSet, notes: list[str]) -> list[Any]:
    """Each pair or labelled answer as training renders it (its prompt, each answer's trained tokens,
    cut to ``max_seq_len``); None for one whose prompt alone fills ``max_seq_len``."""
    from lora_studio.core.data import Encoder
    from lora_studio.core.data.prepare_preference import encode_items

    data = eval_set.data.model_copy(update={"skip_invalid": True})
    encoder = Encoder(tokenizer, train_on="assistant", max_seq_len=data.max_seq_len)
    method = "kto" if eval_set.kind == "labels" else "dpo"
    out: list[Any] = []
    skipped: list[Any] = []
    for item in eval_set.items:
        found = encode_items(encoder, [item.pair], data, method, skipped)
        out.append(found[0] if found else None)
    if skipped:
        notes.append(
            f"{len(skipped)} {'pairs' if method == 'dpo' else 'answers'} have no answer token within "
            f"max_seq_len = {data.max_seq_len} (first: {skipped[0]}): not scored"
        )
    return out


def _answer_logps(
    chat: Any,
    encoded: list[Any],
    use_adapter: bool,
    stage: str,
    label: str,
    position: int,
    options: EvalOptions,
    cancel: threading.Event,
    emit: Callable[[EvalProgress], None],
) -> list[tuple[float, ...] | None]:
    """Summed log-probability and token count of each answer: (chosen, n, rejected, n) per pair,
    (answer, n) per labelled answer; None where nothing was encoded."""
    sides: list[Any] = []
    for e in encoded:
        if e is None:
            continue
        sides += [e.chosen, e.rejected] if hasattr(e, "rejected") else [e.example]
    losses = runner.token_losses(
        chat,
        sides,
        use_adapter=use_adapter,
        batch_size=options.batch_size,
        cancel=cancel,
        tick=lambda done, total: emit(EvalProgress(stage, done, total, label, position)),
    )
    out: list[tuple[float, ...] | None] = []
    k = 0
    for e in encoded:
        if e is None:
            out.append(None)
            continue
        count = 2 if hasattr(e, "rejected") else 1
        out.append(tuple(v for nll, n in losses[k : k + count] for v in (-nll, n)))
        k += count
    return out


def _preference_notes(models: Sequence[ModelSpec], notes: list[str]) -> None:
    """What the implicit rewards were measured against, for each fine-tune whose β or reference
    differs from the plain case."""
    for spec in models:
        if not (spec.adapter and spec.use_adapter):
            continue
        if spec.beta is None:
            notes.append(f"{spec.label}: not a preference run, rewards use β = {DEFAULT_BETA}")
        if spec.init_adapter:
            notes.append(
                f"{spec.label} started from the adapter {spec.init_adapter}: its training reference was "
                "base + that adapter, the rewards here are against the base alone"
            )


def _answer_budget(task: str | None, longest_reference: int) -> int:
    """Room for a label plus a short sentence around it; free text gets twice the longest reference."""
    if task == "accuracy":
        return max(16, longest_reference + 8)
    if task == "exact":
        return max(24, longest_reference + 8)
    return min(512, max(32, 2 * longest_reference + 16))


def _encode(tokenizer: Any, eval_set: EvalSet, notes: list[str]) -> list[Any]:
    """Token ids and loss labels as training renders them; ``None`` where nothing is left to score."""
    from lora_studio.core.data import Encoder, TemplateProblem

    encoder = Encoder(tokenizer, train_on=eval_set.data.train_on, max_seq_len=eval_set.data.max_seq_len)
    examples: list[Any] = []
    for item in eval_set.items:
        try:
            example = encoder.encode(item.conversation)
        except TemplateProblem as exc:
            raise item.conversation.error(str(exc)) from None
        examples.append(example if example.trainable else None)
    empty = sum(1 for e in examples if e is None)
    note = f"{empty} examples have no trained tokens within max_seq_len = {eval_set.data.max_seq_len}: not in the loss"
    if empty and note not in notes:
        notes.append(note)
    return examples


def sample_examples(eval_set: EvalSet, options: EvalOptions) -> EvalSet:
    """A seeded sample of ``max_examples`` (file order kept, re-indexed), or the set itself: what
    :func:`evaluate` measures, and what the Evaluate page counts before it runs."""
    n = len(eval_set.items)
    if options.max_examples is None or options.max_examples >= n:
        return eval_set
    keep = sorted(random.Random(options.seed).sample(range(n), options.max_examples))
    items = [dataclasses.replace(eval_set.items[i], index=k) for k, i in enumerate(keep)]
    note = f"a seeded sample of {len(items)} of the {n} examples (seed {options.seed})"
    return dataclasses.replace(eval_set, items=items, notes=[*eval_set.notes, note])


def _unique_labels(models: Sequence[ModelSpec]) -> list[ModelSpec]:
    seen: dict[str, int] = {}
    out = []
    for spec in models:
        count = seen.get(spec.label, 0)
        seen[spec.label] = count + 1
        out.append(spec if count == 0 else dataclasses.replace(spec, label=f"{spec.label} ({count + 1})"))
    return out


def _emitter(progress: ProgressListener | None, count: int) -> Callable[[EvalProgress], None]:
    def emit(event: EvalProgress) -> None:
        if progress is not None:
            progress(dataclasses.replace(event, models=count))

    return emit


# -- reading saved evaluations (the Runs page) ----------------------------------------------------


def display_labels(labels: Sequence[str]) -> dict[str, str]:
    """Model labels as tables show them: run ids without their timestamp ("20250101-120000-reviews"
    → "reviews", "…-reviews@35" → "reviews@35") when that keeps them unique, else unchanged."""
    short = {label: _RUN_ID.sub("", label) or label for label in labels}
    return short if len(set(short.values())) == len(short) else {label: label for label in labels}


def list_evaluations(run_dir: str | Path) -> list[dict[str, Any]]:
    """The saved evaluations of a run, oldest first, each with its ``path``; unreadable files skipped."""
    folder = Path(run_dir) / EVAL_DIR
    found = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(data, dict):
            found.append({**data, "path": str(path)})
    return found


def load_examples(evaluation: dict[str, Any]) -> list[dict[str, Any]]:
    """The per-example rows of a saved evaluation (as listed by :func:`list_evaluations`)."""
    name = evaluation.get("examples_file")
    if not name or "path" not in evaluation:
        return []
    return read_jsonl(Path(evaluation["path"]).parent / name)
