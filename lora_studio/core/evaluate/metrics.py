"""Task metrics on generated answers: labels, exact match, ROUGE-L / chrF / BLEU, and which to use.

Everything here is a plain function of strings, so it is tested against hand-computed values and
reused by the evaluation (``core/evaluate/run.py``), the CLI and the benchmark. Scales follow the
libraries users know: accuracy, macro-F1, exact match, token F1 and ROUGE-L are fractions in
[0, 1]; chrF and BLEU are sacrebleu's 0-100. ``rouge-score`` and ``sacrebleu`` are imported
inside the functions that use them (they work offline; the ``evaluate`` library would fetch
metric code from a hub at run time, so it is not used).

Answers are compared after :func:`normalize`: Unicode NFKC, case folded, punctuation turned into
spaces, whitespace collapsed — "  Positive! " and "positive" are the same label.
"""

from __future__ import annotations

import re
import statistics
import unicodedata
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

#: Metric families: ``loss`` is always computed; one task family is chosen per evaluation.
TASK_METRICS = ("accuracy", "exact", "rouge")
METRIC_CHOICES = ("auto", *TASK_METRICS)
#: What preference eval sets measure instead (chosen by the data, never generated): "preference"
#: on chosen/rejected pairs, "kto" on answers labelled good or bad (see ``scoring``).
PREFERENCE_TASKS = ("preference", "kto")

#: Words a model commonly answers instead of the label itself. Only used for labels in the set.
DEFAULT_SYNONYMS: dict[str, str] = {
    "pos": "positive",
    "neg": "negative",
    "neu": "neutral",
    "mixed": "neutral",
    "neither": "neutral",
    "y": "yes",
    "true": "yes",
    "n": "no",
    "false": "no",
}

#: A reference set looks like labels when it has at most this many distinct answers...
MAX_LABELS = 20
#: ...each at most this many words long.
MAX_LABEL_WORDS = 4
#: Short factual answers (exact match): median reference length in words.
MAX_SHORT_ANSWER_WORDS = 8
#: Beyond this median length exact match says nothing (almost no answer matches word for word).
MAX_EXACT_WORDS = 32
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize(text: str) -> str:
    """Case, width, punctuation and whitespace do not change an answer's meaning for scoring."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = "".join(" " if unicodedata.category(ch).startswith("P") else ch for ch in text)
    return " ".join(text.split())


def normalize_short(text: str) -> str:
    """SQuAD-style: :func:`normalize` and English articles dropped ("the Eiffel Tower" = "Eiffel tower")."""
    return " ".join(_ARTICLES.sub(" ", normalize(text)).split())


def words(text: str) -> list[str]:
    """Word tokens of the normalized text; letters of any script count."""
    return re.findall(r"\w+", normalize(text))


# -- classification -------------------------------------------------------------------------------


class LabelParser:
    """Maps a free-form answer to one label of a small set, or ``None`` when it cannot tell.

    An answer that *is* a label or synonym, or *starts with* one and a punctuation mark ("Positive.
    The reviewer…"), is that label; otherwise exactly one label mentioned anywhere wins; no label or
    several different ones ("positive or negative") is unparseable, reported separately rather
    than guessed. Negation is not understood ("not positive" reads as positive).
    """

    def __init__(self, labels: Sequence[str], synonyms: dict[str, str] | None = None) -> None:
        self.labels = list(dict.fromkeys(normalize(label) for label in labels if normalize(label)))
        known = set(self.labels)
        aliases = {label: label for label in self.labels}
        for word, label in {**DEFAULT_SYNONYMS, **(synonyms or {})}.items():
            word, label = normalize(word), normalize(label)
            if label in known and word and word not in known:
                aliases[word] = label
        self.aliases = aliases
        # longest first, so "very positive" is tried before "positive"
        ordered = sorted(aliases, key=len, reverse=True)
        alternatives = "|".join(map(re.escape, ordered))
        self._mention = re.compile(r"(?<!\w)(" + alternatives + r")(?!\w)")
        # a label first, then punctuation or nothing: "Positive." / "**Negative** - the ..."
        self._leading = re.compile(r"[^\w]*(" + alternatives + r")(?!\w)\s*(?:[^\w\s]|$)")

    def parse(self, answer: str) -> str | None:
        text = normalize(answer)
        if not text or not self.labels:
            return None
        if text in self.aliases:
            return self.aliases[text]
        found = self._leading.match(unicodedata.normalize("NFKC", answer).casefold().strip())
        if found and found.group(1) in self.aliases:
            return self.aliases[found.group(1)]
        mentioned = {self.aliases[m.group(1)] for m in self._mention.finditer(text)}
        return mentioned.pop() if len(mentioned) == 1 else None


def classification_scores(
    predictions: Sequence[str | None], golds: Sequence[str], labels: Sequence[str] | None = None
) -> dict[str, Any]:
    """Accuracy, macro-F1, per-label scores and the confusion matrix (rows: gold, columns: predicted).

    Unparseable predictions (``None``) count as wrong for accuracy and as a miss of the gold label
    for F1, and get their own column, so a model that rambles is not confused with one that is
    wrong. Macro-F1 averages the F1 of every gold label with equal weight.
    """
    if len(predictions) != len(golds):
        raise ValueError("predictions and golds differ in length")
    order = list(dict.fromkeys([*(labels or []), *golds, *(p for p in predictions if p is not None)]))
    index = {label: i for i, label in enumerate(order)}
    matrix = [[0] * len(order) for _ in order]
    unparseable_row = [0] * len(order)
    for pred, gold in zip(predictions, golds, strict=True):
        if pred is None:
            unparseable_row[index[gold]] += 1
        else:
            matrix[index[gold]][index[pred]] += 1
    n = len(golds)
    correct = sum(matrix[i][i] for i in range(len(order)))
    per_label = {}
    for i, label in enumerate(order):
        tp = matrix[i][i]
        fp = sum(matrix[r][i] for r in range(len(order))) - tp
        fn = sum(matrix[i]) + unparseable_row[i] - tp
        per_label[label] = {
            "precision": tp / (tp + fp) if tp + fp else 0.0,
            "recall": tp / (tp + fn) if tp + fn else 0.0,
            "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0,
            "support": tp + fn,
        }
    gold_labels = [label for label in order if per_label[label]["support"]]
    unparseable = sum(unparseable_row)
    parsed = n - unparseable
    return {
        "accuracy": correct / n if n else None,
        "macro_f1": sum(per_label[g]["f1"] for g in gold_labels) / len(gold_labels) if gold_labels else None,
        "accuracy_parsed": correct / parsed if parsed else None,
        "unparseable": unparseable,
        "unparseable_rate": unparseable / n if n else None,
        "per_label": per_label,
        "confusion": {"labels": order, "matrix": matrix, "unparseable": unparseable_row},
    }


# -- short answers --------------------------------------------------------------------------------


def exact_match(answer: str, reference: str) -> float:
    """1.0 when the answers are the same after :func:`normalize_short`, else 0.0."""
    return 1.0 if normalize_short(answer) == normalize_short(reference) else 0.0


def token_f1(answer: str, reference: str) -> float:
    """SQuAD's word-overlap F1: partial credit for "Paris, France" against "Paris"."""
    a, r = normalize_short(answer).split(), normalize_short(reference).split()
    if not a or not r:
        return 1.0 if a == r else 0.0
    common = sum((Counter(a) & Counter(r)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(a), common / len(r)
    return 2 * precision * recall / (precision + recall)


# -- free text ------------------------------------------------------------------------------------


class _UnicodeTokenizer:
    """rouge-score's own tokenizer keeps only ASCII letters and digits, so any non-English answer
    would score 0; this one keeps words of every script."""

    def tokenize(self, text: str) -> list[str]:
        return words(text)


def rouge_l(answers: Sequence[str], references: Sequence[str]) -> list[float]:
    """ROUGE-L F-measure per example (longest common word subsequence), via ``rouge-score``."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], tokenizer=_UnicodeTokenizer())
    return [
        float(scorer.score(ref, ans)["rougeL"].fmeasure) for ans, ref in zip(answers, references, strict=True)
    ]


def chrf(answers: Sequence[str], references: Sequence[str]) -> list[float]:
    """chrF per example (character n-gram F-score, 0-100), via ``sacrebleu``: robust to word forms."""
    from sacrebleu.metrics import CHRF

    metric = CHRF()
    return [
        _clamp100(metric.sentence_score(ans, [ref]).score)
        for ans, ref in zip(answers, references, strict=True)
    ]


def bleu(answers: Sequence[str], references: Sequence[str]) -> list[float]:
    """Smoothed sentence BLEU per example (0-100), via ``sacrebleu`` (its defaults for one sentence)."""
    from sacrebleu.metrics import BLEU

    metric = BLEU(effective_order=True)
    return [
        _clamp100(metric.sentence_score(ans, [ref]).score)
        for ans, ref in zip(answers, references, strict=True)
    ]


def _clamp100(value: float) -> float:
    return min(100.0, max(0.0, float(value)))  # sacrebleu reports 100.00000000000004 for a perfect match


# -- which metric ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class MetricChoice:
    """The task metric for an eval set and, in words, why."""

    metric: str | None  # None: no references to compare with (plain-text data)
    reason: str


def reference_profile(references: Sequence[str]) -> dict[str, Any]:
    """The facts the choice rests on: answer count, distinct answers, answer lengths in words."""
    lengths = [len(words(r)) for r in references]
    distinct = Counter(normalize(r) for r in references)
    return {
        "answers": len(references),
        "distinct": len(distinct),
        "max_words": max(lengths, default=0),
        "median_words": statistics.median(lengths) if lengths else 0,
        "labels": [label for label, _ in distinct.most_common()],
    }


def choose_metric(references: Sequence[str]) -> MetricChoice:
    """Labels (a few distinct, repeated, short answers) → accuracy; short answers → exact match;
    anything longer → ROUGE-L / chrF / BLEU."""
    if not references:
        return MetricChoice(None, "the eval set has no reference answers (plain text): loss only")
    p = reference_profile(references)
    if _looks_like_labels(p):
        return MetricChoice(
            "accuracy",
            f"{p['distinct']} distinct answers repeated over {p['answers']} examples, "
            + ("each a single word" if p["max_words"] == 1 else f"each at most {p['max_words']} words")
            + ": a label set",
        )
    if p["median_words"] <= MAX_SHORT_ANSWER_WORDS:
        return MetricChoice("exact", f"short answers (median {p['median_words']:g} words)")
    return MetricChoice("rouge", f"free text (median {p['median_words']:g} words per answer)")


def not_applicable(metric: str, references: Sequence[str]) -> str | None:
    """Why ``metric`` cannot give a meaningful number on these references, or ``None`` if it can."""
    if not references:
        return f"{metric} needs reference answers; this eval set has none (plain text): loss only"
    p = reference_profile(references)
    if metric == "accuracy" and not _looks_like_labels(p):
        return (
            f"accuracy does not apply: the {p['answers']} reference answers have {p['distinct']} distinct "
            f"values up to {p['max_words']} words long, which is not a small label set; use "
            "exact match for short answers or ROUGE-L for free text"
        )
    if metric == "exact" and p["median_words"] > MAX_EXACT_WORDS:
        return (
            f"exact match does not apply: reference answers are {p['median_words']:g} words long (median), "
            "so almost no answer can match word for word; use ROUGE-L"
        )
    return None


def _looks_like_labels(profile: dict[str, Any]) -> bool:
    return (
        2 <= profile["distinct"] <= MAX_LABELS
        and profile["distinct"] < profile["answers"]
        and profile["max_words"] <= MAX_LABEL_WORDS
    )
