"""Metric functions against hand-computed values, metric choice, and the bootstrap interval."""

import math
import random

import pytest

from lora_studio.core.evaluate import interval, mean_of, paired_difference, ratio_of
from lora_studio.core.evaluate import metrics as m

LABELS = ["positive", "negative", "neutral"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("  Positive! ", "positive"),
        ("POSITIVE.", "positive"),
        ("Ｐｏｓｉｔｉｖｅ", "positive"),  # full-width letters (NFKC)
        ("Straße", "strasse"),  # case folding, not just lower()
        ("«Très bien»", "très bien"),
        ("a\tb\n\nc", "a b c"),
        ("", ""),
    ],
)
def test_normalize_ignores_case_width_punctuation_and_whitespace(text, expected):
    assert m.normalize(text) == expected


@pytest.mark.parametrize(
    ("answer", "label"),
    [
        ("positive", "positive"),
        ("Negative.", "negative"),
        ("pos", "positive"),  # built-in synonym
        ("Mixed", "neutral"),
        ("Positive. The reviewer mentions a negative point too.", "positive"),  # starts with a label
        ("**Negative** - the zipper broke.", "negative"),
        ("The sentiment of this review is neutral.", "neutral"),  # one label mentioned
        ("The review is positive, with a neutral tone.", None),  # two labels mentioned
        ("positive or negative", None),  # two labels, no leading answer: not guessed
        ("It is hard to say", None),
        ("", None),
        ("   ", None),
        ("Y", None),  # 'y' means yes, and yes is not a label here
    ],
)
def test_label_parser(answer, label):
    assert m.LabelParser(LABELS).parse(answer) == label


def test_label_parser_user_synonyms_and_unicode_labels():
    parser = m.LabelParser(["positif", "négatif"], {"bien": "positif", "mauvais": "négatif", "x": "absent"})
    assert parser.parse("Très bien !") == "positif"
    assert parser.parse("NÉGATIF") == "négatif"
    assert parser.parse("mauvais") == "négatif"
    assert parser.parse("x") is None  # a synonym of a label outside the set is ignored
    yes_no = m.LabelParser(["yes", "no"])
    assert yes_no.parse("True") == "yes"
    assert yes_no.parse("n") == "no"


def test_classification_scores_by_hand():
    golds = ["p", "p", "n", "n", "u"]
    preds = ["p", "n", "n", None, "u"]
    scores = m.classification_scores(preds, golds, ["p", "n", "u"])
    assert scores["accuracy"] == pytest.approx(3 / 5)
    assert scores["accuracy_parsed"] == pytest.approx(3 / 4)
    assert scores["unparseable"] == 1
    assert scores["unparseable_rate"] == pytest.approx(0.2)
    # p: tp 1, fp 0, fn 1 -> 2/3;  n: tp 1, fp 1, fn 1 (unparseable) -> 1/2;  u: 1
    assert scores["per_label"]["p"]["f1"] == pytest.approx(2 / 3)
    assert scores["per_label"]["n"]["f1"] == pytest.approx(1 / 2)
    assert scores["per_label"]["n"]["precision"] == pytest.approx(1 / 2)
    assert scores["macro_f1"] == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
    assert scores["confusion"] == {
        "labels": ["p", "n", "u"],
        "matrix": [[1, 1, 0], [0, 1, 0], [0, 0, 1]],
        "unparseable": [0, 1, 0],
    }


def test_classification_scores_edge_cases():
    empty = m.classification_scores([], [])
    assert empty["accuracy"] is None and empty["macro_f1"] is None
    all_unparseable = m.classification_scores([None, None], ["a", "b"])
    assert all_unparseable["accuracy"] == 0 and all_unparseable["accuracy_parsed"] is None
    assert all_unparseable["macro_f1"] == 0
    # a predicted label that never occurs as gold is a column, but not part of the macro average
    extra = m.classification_scores(["c", "a"], ["a", "a"])
    assert extra["confusion"]["labels"] == ["a", "c"]
    assert extra["macro_f1"] == pytest.approx(2 / 3)  # only 'a': tp 1, fn 1


@pytest.mark.parametrize(
    ("answer", "reference", "exact", "f1"),
    [
        ("The Eiffel Tower.", "eiffel tower", 1.0, 1.0),
        ("Paris, France", "Paris", 0.0, 2 / 3),
        ("", "Paris", 0.0, 0.0),
        ("", "", 1.0, 1.0),
        ("Москва", "москва!", 1.0, 1.0),
        ("1889", "In 1889", 0.0, 2 / 3),
    ],
)
def test_exact_match_and_token_f1(answer, reference, exact, f1):
    assert m.exact_match(answer, reference) == exact
    assert m.token_f1(answer, reference) == pytest.approx(f1)


def test_rouge_l_by_hand_including_unicode_and_empty():
    # LCS of 5 words; precision 5/6, recall 5/5 -> F = 10/11
    scores = m.rouge_l(
        ["the cat sat on the mat", "Café über alles", "", "привет мир"],
        ["the cat on the mat", "café über", "anything", "Привет, мир!"],
    )
    assert scores[0] == pytest.approx(10 / 11)
    assert scores[1] == pytest.approx(0.8)  # P 2/3, R 1
    assert scores[2] == 0.0
    assert scores[3] == pytest.approx(1.0)  # rouge-score's own tokenizer would give 0 here


def test_chrf_and_bleu_bounds():
    chrf = m.chrf(["the cat sat", "", "the cat"], ["the cat sat", "the cat", "a dog ran far away"])
    bleu = m.bleu(["the cat sat on the mat", "", "zzz"], ["the cat sat on the mat", "the cat", "the cat sat"])
    assert chrf[0] == 100.0 and chrf[1] == 0.0 and 0 <= chrf[2] < 50
    assert bleu[0] == 100.0 and bleu[1] == 0.0 and bleu[2] == 0.0


def test_choose_metric():
    labels = ["positive", "negative", "neutral"] * 4
    assert m.choose_metric(labels).metric == "accuracy"
    assert m.choose_metric(["Paris", "Berlin", "the Nile river", "1889"]).metric == "exact"
    long = [
        f"A long answer number {i} that explains the topic in many more words than a label" for i in range(5)
    ]
    assert m.choose_metric(long).metric == "rouge"
    assert m.choose_metric([]).metric is None
    assert m.choose_metric(["yes"] * 5).metric == "exact"  # one answer is not a label set


def test_not_applicable_is_a_note_not_a_number():
    long = [
        f"A long answer number {i} that explains the topic in many more words than a label" for i in range(5)
    ]
    assert "accuracy does not apply" in m.not_applicable("accuracy", long)
    assert m.not_applicable("rouge", long) is None
    essay = [" ".join(["word"] * 60)] * 3
    assert "exact match does not apply" in m.not_applicable("exact", essay)
    assert m.not_applicable("accuracy", ["positive", "negative", "positive"]) is None
    assert "none" in m.not_applicable("rouge", [])


def test_bootstrap_difference_is_seeded_and_centred_on_the_estimate():
    rng = random.Random(1)
    a = [float(rng.random() < 0.5) for _ in range(60)]
    b = [float(rng.random() < 0.8) for _ in range(60)]
    first = paired_difference(60, mean_of(a), mean_of(b), seed=3)
    again = paired_difference(60, mean_of(a), mean_of(b), seed=3)
    assert first == again
    assert first.estimate == pytest.approx(sum(b) / 60 - sum(a) / 60)
    assert first.low <= first.estimate <= first.high
    same = paired_difference(60, mean_of(a), mean_of(a))
    assert (same.low, same.high) == (0.0, 0.0) and not same.excludes_zero
    assert paired_difference(0, mean_of([]), mean_of([])) is None


def test_bootstrap_interval_shrinks_with_more_examples():
    def width(n):
        rng = random.Random(n)
        a = [float(rng.random() < 0.6) for _ in range(n)]
        b = [float(rng.random() < 0.7) for _ in range(n)]
        ci = paired_difference(n, mean_of(a), mean_of(b), resamples=400)
        return ci.high - ci.low

    small, large = width(25), width(1600)
    assert large < small / 4  # ~1/sqrt(n): 8x fewer in theory


def test_ratio_statistic_weights_by_tokens():
    nll, tokens = [6.0, 1.0], [3, 1]
    assert ratio_of(nll, tokens)(range(2)) == pytest.approx(7 / 4)
    assert math.isnan(ratio_of([0.0], [0])([0]))
    single = interval(2, ratio_of(nll, tokens), resamples=50)
    assert 1.0 <= single.low <= single.high <= 2.0
