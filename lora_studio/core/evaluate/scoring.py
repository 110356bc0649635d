"""From answers to numbers: per-example scores, summary metrics, and the comparison table's rows.

Every summary metric is a *statistic over per-example rows* (:data:`SUMMARY_METRICS`), so the
number in the table and its bootstrap interval are computed the same way: eval loss is the
token-weighted mean negative log-likelihood of the trained tokens, accuracy the mean of 0/1
correctness, macro-F1 is recomputed from the drawn examples' labels, and so on. Adding a metric is
one entry here plus its per-example value in :func:`score_examples` (see CONTRIBUTING.md).

Preference eval sets are scored from log-probabilities, not generated answers
(:func:`preference_rows`). log p(answer) is the sum of the log-probabilities of the answer's trained
tokens given the prompt (the tokens training learns: the answer and its end-of-turn token), as DPO
sums them. On chosen/rejected pairs, for every model:

- *prefers chosen* — the share of pairs with log p(chosen) > log p(rejected);
- *mean margin* — the mean of log p(chosen) − log p(rejected), in nats;
- *chosen loss* — the token-weighted mean negative log-likelihood of the chosen answers.

Each fine-tune's difference from the base gets the same paired bootstrap interval as any metric.
A fine-tune also gets DPO's implicit reward of each answer, r = β·(log p_tuned − log p_base), with
the base (the same weights, adapter off) as the reference and the run's β:

- *reward accuracy* — the share of pairs with r(chosen) > r(rejected), i.e. whose margin grew;
- *reward margin* — the mean of r(chosen) − r(rejected) = β × (the change in mean margin).

These describe one fine-tune against its base, so they have an interval of their own (percentile
bootstrap over the pairs) and a line they are read against (``null``: 0.5 — a change of random
direction — for the shares, 0 for the margin) instead of a difference. On KTO's labelled answers
the same reward says whether the fine-tune moved each answer the way its label asks: *labels
followed* (r > 0 for a good answer, r < 0 for a bad one), and the same share among good answers
(*good answers up*) and among bad ones (*bad answers down*); the loss on good answers and on bad
answers compare base and fine-tunes with paired intervals.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from lora_studio.core.evaluate import metrics as m
from lora_studio.core.evaluate.bootstrap import Statistic, interval, mean_of, paired_difference, ratio_of

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


def _loss_of(kind: bool) -> Callable[[Rows], Statistic]:
    """Token-weighted loss over the answers labelled good (``kind`` True) or bad."""

    def build(rows: Rows) -> Statistic:
        nll = [(r.get("nll") or 0.0) if r.get("desirable") is kind else 0.0 for r in rows]
        tokens = [(r.get("tokens") or 0) if r.get("desirable") is kind else 0 for r in rows]
        return ratio_of(nll, tokens)

    return build


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
    #: False: a fine-tune against its own base (an implicit reward), shown with its own interval
    #: and read against ``null`` rather than as a difference from the baseline
    paired: bool = True
    null: float | None = None


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
    SummaryMetric("pref_accuracy", "prefers chosen", "preference", True, 3, _mean("prefers")),
    SummaryMetric("mean_margin", "mean margin", "preference", True, 3, _mean("margin"), "nats"),
    SummaryMetric(
        "reward_accuracy",
        "reward accuracy",
        "preference",
        True,
        3,
        _mean("reward_correct"),
        paired=False,
        null=0.5,
    ),
    SummaryMetric(
        "reward_margin", "reward margin", "preference", True, 3, _mean("reward_margin"), "nats", False, 0.0
    ),
    SummaryMetric("chosen_loss", "chosen loss", "preference", False, 4, _loss, "nats"),
    SummaryMetric(
        "kto_accuracy", "labels followed", "kto", True, 3, _mean("reward_correct"), paired=False, null=0.5
    ),
    SummaryMetric("good_up", "good answers up", "kto", True, 3, _mean("good_up"), paired=False, null=0.5),
    SummaryMetric("bad_down", "bad answers down", "kto", True, 3, _mean("bad_down"), paired=False, null=0.5),
    SummaryMetric("good_loss", "good-answer loss", "kto", False, 4, _loss_of(True), "nats"),
    SummaryMetric("bad_loss", "bad-answer loss", "kto", True, 4, _loss_of(False), "nats"),
)


#: What a preference evaluation's numbers mean, in one paragraph (the CLI and the Evaluate page).
DEFINITIONS = {
    "preference": (
        "log p = an answer's summed token log-probability given the prompt. Prefers chosen: share of pairs "
        "with log p(chosen) > log p(rejected). Mean margin: mean of log p(chosen) − log p(rejected), in nats. "
        "Chosen loss: mean loss per token of the chosen answers. Reward r = β·(log p_tuned − log p_base), the "
        "base being the same weights with the adapter off: reward accuracy is the share of pairs with "
        "r(chosen) > r(rejected) (the margin grew), reward margin the mean r(chosen) − r(rejected); they are "
        "read against 0.5 and 0 (a change in a random direction)."
    ),
    "kto": (
        "log p = an answer's summed token log-probability given the prompt; reward r = β·(log p_tuned − "
        "log p_base), the base being the same weights with the adapter off. Labels followed: share of answers "
        "with r > 0 if labelled good, r < 0 if labelled bad; good answers up / bad answers down: the same "
        "among the good / the bad answers (read against 0.5, a change in a random direction). Good-/bad-answer "
        "loss: mean loss per token of those answers."
    ),
}


def metrics_for(task: str | None) -> list[SummaryMetric]:
    """The loss metrics plus those of the chosen task metric (a preference task: its own only)."""
    if task in m.PREFERENCE_TASKS:
        return [s for s in SUMMARY_METRICS if s.family == task]
    return [s for s in SUMMARY_METRICS if s.family in ("loss", task)]


def preference_rows(
    task: str,
    logps: Sequence[tuple[float, ...] | None],
    reference: Sequence[tuple[float, ...] | None] | None,
    beta: float,
    desirable: Sequence[bool | None],
) -> list[dict[str, Any]]:
    """Per-item scores of one model on a preference eval set (see the module's docstring).

    ``logps``: per pair (log p(chosen), its tokens, log p(rejected), its tokens), or per labelled
    answer (log p(answer), its tokens); None where an item has nothing to score. ``reference``: the
    same from the base (adapter off) for a fine-tune, None for a base model. ``desirable``: KTO's
    labels (None for pairs).
    """
    rows: list[dict[str, Any]] = []
    for i, values in enumerate(logps):
        ref = reference[i] if reference is not None else None
        row: dict[str, Any] = {}
        if values is not None and task == "preference":
            chosen, n_chosen, rejected, n_rejected = values
            margin = chosen - rejected
            row.update(
                logp_chosen=chosen,
                logp_rejected=rejected,
                tokens_chosen=n_chosen,
                tokens_rejected=n_rejected,
                margin=margin,
                prefers=float(margin > 0),
                nll=-chosen,
                tokens=n_chosen,
            )
            if ref is not None:
                reward_chosen, reward_rejected = beta * (chosen - ref[0]), beta * (rejected - ref[2])
                row.update(
                    reward_chosen=reward_chosen,
                    reward_rejected=reward_rejected,
                    reward_margin=reward_chosen - reward_rejected,
                    reward_correct=float(reward_chosen > reward_rejected),
                )
        elif values is not None:
            logp, tokens = values
            good = bool(desirable[i])
            row.update(logp=logp, tokens=tokens, nll=-logp, desirable=good, label="good" if good else "bad")
            if ref is not None:
                reward = beta * (logp - ref[0])
                row.update(reward=reward, reward_correct=float(reward > 0 if good else reward < 0))
                row["good_up" if good else "bad_down"] = row["reward_correct"]
        rows.append(row)
    return rows


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
        if not metric.paired:
            table.append(
                {
                    **_row_head(metric, values),
                    "differences": [],
                    "null": metric.null,
                    "intervals": [
                        _own_interval(n, stat, value, metric.null, resamples, confidence, seed)
                        for stat, value in zip(stats, values, strict=True)
                    ],
                }
            )
            continue
        differences = []
        for k, stat in enumerate(stats):
            if k == baseline or len(stats) < 2:
                continue
            ci = paired_difference(
                n, stats[baseline], stat, resamples=resamples, confidence=confidence, seed=seed
            )
            differences.append({"model": labels[k], "vs": labels[baseline], **(ci.to_dict() if ci else {})})
        table.append({**_row_head(metric, values), "differences": differences})
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


def _row_head(metric: SummaryMetric, values: Sequence[float]) -> dict[str, Any]:
    return {
        "metric": metric.key,
        "title": metric.title,
        "higher_is_better": metric.higher_is_better,
        "digits": metric.digits,
        "scale": metric.scale,
        "values": [round(v, 6) if math.isfinite(v) else None for v in values],
    }


def _own_interval(
    n: int,
    statistic: Statistic,
    value: float,
    null: float | None,
    resamples: int,
    confidence: float,
    seed: int,
) -> dict[str, Any] | None:
    """A model's own interval for an unpaired metric, and whether it excludes the ``null`` line."""
    if not n or not math.isfinite(value):
        return None
    found = interval(n, statistic, resamples=resamples, confidence=confidence, seed=seed)
    if found is None:
        return None
    excludes = null is not None and (found.low > null or found.high < null)
    return {**found.to_dict(), "excludes_null": excludes}
