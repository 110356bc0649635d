"""From answers to numbers: per-example scores, summary metrics, and the comparison table's rows.

Every summary metric is a *statistic over per-example rows* (:data:`SUMMARY_METRICS`), so the
number in the table and its bootstrap interval are computed the same way: eval loss is the
token-weighted mean negative log-likelihood of the trained tokens, accuracy the mean of 0/1
correctness, macro-F1 is recomputed from the drawn examples' labels, and so on. Adding a metric is
one entry here plus its per-example value in :func:`score_examples` (see CONTRIBUTING.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from lora_studio.core.evaluate import metrics as m
from lora_studio.core.evaluate.bootstrap import Statistic, mean_of, paired_difference, ratio_of

Rows = Sequence[dict[str, Any]]


def _loss(rows: Rows) -> Statistic:
    return ratio_of([r.get("nll") or 0.0 for r in rows], [r.get("tokens") or 0 for r in rows])


def _perplexity(rows: Rows) -> Statistic:
    loss = _loss(rows)

    def statistic(indices: Sequence[int]) -> float:
        value = loss(indices)
        return math.exp(min(value, 700.0)) if math.isfinite(value) else math.nan

    return statistic


def _mean(key: str) -> Callable[[Rows], Statistic]:
    return lambda rows: mean_of([r.get(key) for r in rows])


def _macro_f1(rows: Rows) -> Statistic:
    labels = sorted({r["gold"] for r in rows if r.get("gold") is not None})

    def statistic(indices: Sequence[int]) -> float:
        picked = [rows[i] for i in indices if rows[i].get("gold") is not None]
        if not picked:
            return math.nan
        scores = m.classification_scores(
            [r["prediction"] for r in picked], [r["gold"] for r in picked], labels
        )
        return scores["macro_f1"] if scores["macro_f1"] is not None else math.nan

    return statistic


@dataclass(frozen=True)
class SummaryMetric:
    """A number in the comparison table: its family, direction, format and how it is computed."""

    key: str
    title: str
    family: str  # "loss" (always) or the task metric it belongs to: "accuracy" | "exact" | "rouge"
    higher_is_better: bool
    digits: int
    statistic: Callable[[Rows], Statistic]
    scale: str = "fraction"  # "fraction" (0-1) | "0-100" | "nats" | "ratio"


SUMMARY_METRICS: tuple[SummaryMetric, ...] = (
    SummaryMetric("eval_loss", "eval loss", "loss", False, 4, _loss, "nats"),
    SummaryMetric("perplexity", "perplexity", "loss", False, 2, _perplexity, "ratio"),
    SummaryMetric("accuracy", "accuracy", "accuracy", True, 3, _mean("correct")),
    SummaryMetric("macro_f1", "macro-F1", "accuracy", True, 3, _macro_f1),
    SummaryMetric("exact_match", "exact match", "exact", True, 3, _mean("exact")),
    SummaryMetric("token_f1", "token F1", "exact", True, 3, _mean("f1")),
    SummaryMetric("rouge_l", "ROUGE-L", "rouge", True, 3, _mean("rouge_l")),
    SummaryMetric("chrf", "chrF", "rouge", True, 1, _mean("chrf"), "0-100"),
    SummaryMetric("bleu", "BLEU", "rouge", True, 1, _mean("bleu"), "0-100"),
)


def metrics_for(task: str | None) -> list[SummaryMetric]:
    """The loss metrics plus those of the chosen task metric."""
    return [s for s in SUMMARY_METRICS if s.family in ("loss", task)]


def score_examples(
    task: str | None,
    answers: Sequence[str | None],
    references: Sequence[str | None],
    parser: m.LabelParser | None = None,
) -> list[dict[str, Any]]:
    """Per-example scores of one model's answers (``None`` where an example has no reference)."""
    rows: list[dict[str, Any]] = [{} for _ in answers]
    pairs = [
        (i, a or "", r) for i, (a, r) in enumerate(zip(answers, references, strict=True)) if r is not None
    ]
    if task is None or not pairs:
        return rows
    if task == "accuracy":
        assert parser is not None
        for i, answer, reference in pairs:
            gold = parser.parse(reference) or m.normalize(reference)
            prediction = parser.parse(answer)
            rows[i].update(gold=gold, prediction=prediction, correct=float(prediction == gold))
    elif task == "exact":
        for i, answer, reference in pairs:
            rows[i].update(exact=m.exact_match(answer, reference), f1=m.token_f1(answer, reference))
    elif task == "rouge":
        given = [a for _, a, _ in pairs]
        wanted = [r for _, _, r in pairs]
        columns = {
            "rouge_l": m.rouge_l(given, wanted),
            "chrf": m.chrf(given, wanted),
            "bleu": m.bleu(given, wanted),
        }
        for k, (i, _, _) in enumerate(pairs):
            rows[i].update({name: values[k] for name, values in columns.items()})
    else:
        raise ValueError(f"unknown task metric {task!r}")
    return rows


def summarize(task: str | None, rows: Rows) -> dict[str, Any]:
    """Summary metrics of one model on all its examples (``None`` where undefined)."""
    everything = range(len(rows))
    values: dict[str, Any] = {}
    for metric in metrics_for(task):
        value = metric.statistic(rows)(everything) if rows else math.nan
        values[metric.key] = round(value, 6) if math.isfinite(value) else None
    values["loss_tokens"] = sum(r.get("tokens") or 0 for r in rows)
    if task == "accuracy":
        graded = [r for r in rows if r.get("gold") is not None]
        labels = sorted({r["gold"] for r in graded})
        scores = m.classification_scores(
            [r["prediction"] for r in graded], [r["gold"] for r in graded], labels
        )
        values.update(
            unparseable=scores["unparseable"],
            unparseable_rate=scores["unparseable_rate"],
            accuracy_parsed=scores["accuracy_parsed"],
            per_label=scores["per_label"],
            confusion=scores["confusion"],
        )
    return values


def comparison_rows(
    task: str | None,
    labels: Sequence[str],
    rows_per_model: Sequence[Rows],
    *,
    baseline: int = 0,
    resamples: int,
    confidence: float,
    seed: int,
) -> list[dict[str, Any]]:
    """One row per summary metric: each model's value, and each other model's difference from the
    baseline with its paired bootstrap interval over the same examples."""
    n = len(rows_per_model[0]) if rows_per_model else 0
    if any(len(rows) != n for rows in rows_per_model):
        raise ValueError("every model must be scored on the same examples")
    table = []
    for metric in metrics_for(task):
        stats = [metric.statistic(rows) for rows in rows_per_model]
        values = [s(range(n)) if n else math.nan for s in stats]
        differences = []
        for k, stat in enumerate(stats):
            if k == baseline or len(stats) < 2:
                continue
            ci = paired_difference(
                n, stats[baseline], stat, resamples=resamples, confidence=confidence, seed=seed
            )
            differences.append({"model": labels[k], "vs": labels[baseline], **(ci.to_dict() if ci else {})})
        table.append(
            {
                "metric": metric.key,
                "title": metric.title,
                "higher_is_better": metric.higher_is_better,
                "digits": metric.digits,
                "scale": metric.scale,
                "values": [round(v, 6) if math.isfinite(v) else None for v in values],
                "differences": differences,
            }
        )
    if task == "accuracy":
        table.append(
            {
                "metric": "unparseable",
                "title": "unparseable answers",
                "higher_is_better": False,
                "digits": 0,
                "scale": "count",
                "values": [
                    sum(1 for r in rows if r.get("gold") is not None and r.get("prediction") is None)
                    for rows in rows_per_model
                ],
                "differences": [],
            }
        )
    return table
