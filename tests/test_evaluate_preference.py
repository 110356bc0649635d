"""Preference evaluation (#22) on tiny real runs: a few DPO and KTO steps, then base vs tuned on the
held-out pairs (or labelled answers) — the log-probabilities, the metrics' definitions, the paired
and the fine-tune's own intervals, the files and the command line."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from lora_studio.cli import main
from lora_studio.core.config import RunConfig
from lora_studio.core.evaluate import EvalOptions, EvaluationError, ModelSpec, evaluate, load_eval_set
from lora_studio.core.runs import RunFolder
from lora_studio.core.train import train

FAST = {"resamples": 200, "batch_size": 8}


def write_pairs(path: Path, count: int, method: str = "dpo") -> Path:
    """The same preference on every prompt, so a few steps learn it and held-out pairs show it."""
    with open(path, "w") as handle:
        for i in range(count):
            if method == "kto":
                row = {
                    "prompt": f"Question {i}?",
                    "completion": "Yes, happily." if i % 2 else "No.",
                    "label": bool(i % 2),
                }
            else:
                row = {"prompt": f"Question {i}?", "chosen": "Yes, happily.", "rejected": "No."}
            handle.write(json.dumps(row) + "\n")
    return path


def train_preference_run(root: Path, model_dir: Path, method: str = "dpo", steps: int = 4) -> Path:
    """A few steps of ``method`` on the tiny model, a quarter of the data held out."""
    config = RunConfig.from_dict(
        {
            "model": {"source": str(model_dir)},
            "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
            "data": {
                "path": str(write_pairs(root / f"{method}.jsonl", 24, method)),
                "max_seq_len": 64,
                "eval_fraction": 0.25,
            },
            "training": {
                "method": method,
                "max_steps": steps,
                "batch_size": 4,
                "learning_rate": 5e-3,
                "save_steps": 100,
                "sample_prompts": [],
            },
            "preference": {"beta": 0.2},
            "output": {"runs_dir": str(root / "runs"), "run_name": method},
        }
    )
    result = train(config)
    assert result.status == "completed", result
    return Path(result.run_dir)


@pytest.fixture(scope="module")
def dpo_run(tiny_model_dir, tmp_path_factory) -> Path:
    return train_preference_run(tmp_path_factory.mktemp("dpo-eval"), tiny_model_dir)


@pytest.fixture(scope="module")
def dpo_report(dpo_run):
    tuned = ModelSpec.from_run(dpo_run)
    eval_set = load_eval_set(run=RunFolder.open(dpo_run))
    return evaluate([tuned.base_of(), tuned], eval_set, EvalOptions(**FAST), save=False)


def test_a_dpo_run_is_evaluated_on_the_pairs_its_training_held_out(dpo_run):
    from lora_studio.core.data import prepare_preferences
    from lora_studio.core.models import load_tokenizer

    eval_set = load_eval_set(run=RunFolder.open(dpo_run))
    config = RunFolder.open(dpo_run).config()
    prepared = prepare_preferences(
        config.data, load_tokenizer(config.model.source), "dpo", seed=config.training.seed
    )
    assert eval_set.kind == "pairs" and eval_set.name.startswith("eval split of")
    assert len(eval_set.items) == prepared.stats.eval_examples == 6
    held = [item.pair.prompt[0]["content"] for item in eval_set.items]
    assert sorted(held) == sorted(set(held))  # six different held-out prompts
    spec = ModelSpec.from_run(dpo_run)
    assert (spec.method, spec.beta) == ("dpo", 0.2)


def test_preference_metrics_follow_their_definitions(dpo_report):
    report = dpo_report
    assert report.metric == "preference" and report.labels[0] == "base"
    base, tuned = (r.rows for r in report.results)
    beta = 0.2
    for b, t in zip(base, tuned, strict=True):
        for row in (b, t):
            assert row["margin"] == pytest.approx(row["logp_chosen"] - row["logp_rejected"])
            assert row["prefers"] == float(row["logp_chosen"] > row["logp_rejected"])
            assert (
                row["tokens_chosen"] > row["tokens_rejected"] > 0
            )  # "Yes, happily.<|im_end|>" vs "No.<|im_end|>"
        assert "reward_margin" not in b  # a base has no reward
        assert t["reward_chosen"] == pytest.approx(beta * (t["logp_chosen"] - b["logp_chosen"]), abs=1e-5)
        assert t["reward_margin"] == pytest.approx(beta * (t["margin"] - b["margin"]), abs=1e-5)
        assert t["reward_correct"] == float(t["margin"] > b["margin"])
    rows = {row["metric"]: row for row in report.comparison}
    assert list(rows) == ["pref_accuracy", "mean_margin", "reward_accuracy", "reward_margin", "chosen_loss"]
    margins = rows["mean_margin"]
    assert margins["values"] == pytest.approx(
        [sum(r["margin"] for r in rs) / 6 for rs in (base, tuned)], abs=1e-5
    )
    diff = margins["differences"][0]
    assert diff["estimate"] == pytest.approx(margins["values"][1] - margins["values"][0], abs=1e-5)
    assert diff["low"] <= diff["estimate"] <= diff["high"]
    reward = rows["reward_margin"]
    assert reward["values"][0] is None and reward["differences"] == []
    assert reward["values"][1] == pytest.approx(beta * diff["estimate"], abs=1e-5)
    own = rows["reward_accuracy"]["intervals"]
    assert own[0] is None and own[1]["low"] <= rows["reward_accuracy"]["values"][1] <= own[1]["high"]
    chosen_loss = rows["chosen_loss"]["values"][0]
    assert chosen_loss == pytest.approx(
        sum(-r["logp_chosen"] for r in base) / sum(r["tokens_chosen"] for r in base)
    )


def test_a_few_dpo_steps_move_the_held_out_pairs_towards_the_chosen_answer(dpo_report):
    """Every held-out pair repeats the trained preference, so the reward must side with the chosen answer."""
    rows = {row["metric"]: row for row in dpo_report.comparison}
    assert (
        rows["reward_accuracy"]["values"][1] == 1.0
        and rows["reward_accuracy"]["intervals"][1]["excludes_null"]
    )
    assert rows["reward_margin"]["values"][1] > 0
    base, tuned = rows["pref_accuracy"]["values"]
    assert tuned >= base
    assert rows["mean_margin"]["differences"][0]["low"] > 0  # the margin grew, beyond noise


def test_the_log_probabilities_are_the_answer_tokens_under_each_model(dpo_run, dpo_report):
    """Checked against a plain forward pass of the base model: the summed log-probability of the
    chosen answer's trained tokens (the answer and its end-of-turn token), nothing of the prompt."""
    import torch
    from transformers import AutoModelForCausalLM

    from lora_studio.core.data import Encoder
    from lora_studio.core.data.prepare_preference import encode_items
    from lora_studio.core.models import load_tokenizer

    config = RunFolder.open(dpo_run).config()
    tokenizer = load_tokenizer(config.model.source)
    item = dpo_report.eval_set.items[0]
    (pair,) = encode_items(
        Encoder(tokenizer, train_on="assistant", max_seq_len=64), [item.pair], config.data, "dpo", []
    )
    model = AutoModelForCausalLM.from_pretrained(config.model.source, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(torch.tensor([pair.chosen.ids])).logits[0].float()
    logp = torch.log_softmax(logits[:-1], dim=-1)
    targets = pair.chosen.labels[1:]
    expected = sum(float(logp[i, t]) for i, t in enumerate(targets) if t != -100)
    trained = tokenizer.decode([t for t in targets if t != -100])
    assert trained == "Yes, happily.<|im_end|>"
    assert dpo_report.results[0].rows[0]["logp_chosen"] == pytest.approx(expected, rel=1e-4)


def test_without_the_base_the_reward_still_has_its_reference(dpo_run):
    """Only the fine-tune asked for: the base is measured once, adapter off, as the reward's reference."""
    tuned = ModelSpec.from_run(dpo_run)
    events = []
    report = evaluate(
        [tuned],
        load_eval_set(run=RunFolder.open(dpo_run)),
        EvalOptions(**FAST),
        save=False,
        progress=events.append,
    )
    assert any(e.stage == "reference" for e in events)
    rows = {row["metric"]: row for row in report.comparison}
    assert rows["reward_accuracy"]["values"] == [1.0]


def test_kto_answers_are_scored_by_the_direction_their_label_asks(tiny_model_dir, tmp_path):
    run = train_preference_run(tmp_path, tiny_model_dir, "kto")
    tuned = ModelSpec.from_run(run)
    eval_set = load_eval_set(run=RunFolder.open(run))
    assert eval_set.kind == "labels" and len(eval_set.items) == 6
    report = evaluate([tuned.base_of(), tuned], eval_set, EvalOptions(**FAST), save=False)
    assert report.metric == "kto"
    rows = {row["metric"]: row for row in report.comparison}
    assert list(rows) == ["kto_accuracy", "good_up", "bad_down", "good_loss", "bad_loss"]
    base, fine = (r.rows for r in report.results)
    for b, t in zip(base, fine, strict=True):
        assert t["reward"] == pytest.approx(0.2 * (t["logp"] - b["logp"]), abs=1e-5)
        assert t["reward_correct"] == float(t["reward"] > 0 if t["desirable"] else t["reward"] < 0)
        assert ("good_up" in t) == t["desirable"] and ("bad_down" in t) != t["desirable"]
    good = [t for t in fine if t["desirable"]]
    assert rows["good_up"]["values"][1] == pytest.approx(sum(t["good_up"] for t in good) / len(good))
    assert rows["kto_accuracy"]["values"][0] is None
    # a few steps: good answers more likely, bad ones less, each beyond noise (paired intervals)
    assert rows["good_loss"]["differences"][0]["high"] < 0 < rows["bad_loss"]["differences"][0]["low"]
    saved = report.to_dict(examples=True)
    assert {e["label"] for e in saved["examples"]} == {"good", "bad"}
    assert math.isfinite(saved["models"][1]["metrics"]["good_loss"])


def test_cli_shows_the_preference_table_with_definitions(dpo_run, capsys):
    code = main(["evaluate", "--run", str(dpo_run), "--compare-base", "--no-save", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["metric"] == "preference" and out["eval_set"]["kind"] == "pairs"
    own = next(row for row in out["comparison"] if row["metric"] == "reward_accuracy")
    assert set(own["intervals"][1]) >= {"estimate", "low", "high", "excludes_null"} and own["null"] == 0.5
    code = main(["evaluate", "--run", str(dpo_run), "--compare-base", "--no-save", "--show", "1"])
    text = capsys.readouterr().out
    assert code == 0 and "(6 pairs)" in text
    assert "prefers chosen" in text and "reward accuracy" in text and "† the 95% interval excludes" in text
    assert "Prefers chosen: share of pairs with log p(chosen) > log p(rejected)" in text.replace("\n", " ")
    assert "rejected:  No." in text


def test_which_eval_data_is_read_as_preference_data(dpo_run, tmp_path):
    kto = tmp_path / "kto.jsonl"
    kto.write_text(
        "".join(
            json.dumps(
                {
                    "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": a}],
                    "label": g,
                }
            )
            + "\n"
            for a, g in (("Hello!", True), ("Go away.", False))
        )
    )
    assert load_eval_set(str(kto)).kind == "sft"  # no preference run: KTO's messages are supervised data
    assert load_eval_set(str(kto), run=RunFolder.open(dpo_run)).kind == "labels"
    pairs = write_pairs(tmp_path / "pairs.jsonl", 3)
    assert load_eval_set(str(pairs)).kind == "pairs"  # pairs are never supervised data


def test_a_preference_run_that_held_nothing_out_needs_an_eval_file(tiny_model_dir, tmp_path):
    config = RunConfig.from_dict(
        {
            "model": {"source": str(tiny_model_dir)},
            "data": {"path": str(write_pairs(tmp_path / "p.jsonl", 4)), "eval_fraction": 0},
            "training": {"method": "dpo"},
        }
    )
    folder = RunFolder.create(config, tmp_path / "runs")
    with pytest.raises(EvaluationError, match="trained on all of its pairs") as info:
        load_eval_set(run=folder)
    assert "preference file" in info.value.hint
    # the default share (a tenth) of 4 pairs is less than one: nothing was held out either (#24)
    small = RunFolder.create(config.with_overrides({"data.eval_fraction": 0.1}), tmp_path / "runs")
    with pytest.raises(EvaluationError, match="all of its 4 pairs: 10% of them is less than one") as info:
        load_eval_set(run=small)
    assert "preference file" in info.value.hint
