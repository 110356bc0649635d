"""Evaluation end to end on a tiny real model: a 2-step run, base vs tuned, files, errors, CLI."""

import json
import threading
from pathlib import Path

import pytest
from conftest import make_tiny_model

from lora_studio.cli import main
from lora_studio.core.chat import ChatError
from lora_studio.core.config import RunConfig
from lora_studio.core.errors import CancelledError, DatasetError
from lora_studio.core.evaluate import (
    EvalOptions,
    EvaluationError,
    ModelSpec,
    evaluate,
    list_evaluations,
    load_eval_set,
    load_examples,
)
from lora_studio.core.runs import RunFolder
from lora_studio.core.train import train

REVIEWS = [
    ("Great blender, love it.", "positive"),
    ("Broke after a day.", "negative"),
    ("It works. Nothing special.", "neutral"),
    ("Fantastic sound and comfy.", "positive"),
    ("Terrible battery life.", "negative"),
    ("Average at best, but fine.", "neutral"),
]
FAST = {"max_new_tokens": 3, "resamples": 50, "batch_size": 4}


def write_reviews(path: Path, count: int, offset: int = 0) -> Path:
    with open(path, "w") as handle:
        for i in range(count):
            text, label = REVIEWS[(i + offset) % len(REVIEWS)]
            record = {
                "messages": [
                    {"role": "user", "content": f"Sentiment of: {text} ({i})"},
                    {"role": "assistant", "content": label},
                ]
            }
            handle.write(json.dumps(record) + "\n")
    return path


@pytest.fixture(scope="module")
def tiny_run(tiny_model_dir, tmp_path_factory):
    """A 2-step run of the tiny model on a classification file, with a separate eval file."""
    root = tmp_path_factory.mktemp("evaluate")
    train_file = write_reviews(root / "train.jsonl", 12)
    eval_file = write_reviews(root / "eval.jsonl", 6, offset=1)
    config = RunConfig.from_dict(
        {
            "model": {"source": str(tiny_model_dir)},
            "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
            "data": {"path": str(train_file), "eval_path": str(eval_file), "max_seq_len": 64},
            "training": {
                "max_steps": 2,
                "batch_size": 4,
                "learning_rate": 5e-2,
                "save_steps": 2,
                "sample_prompts": [],
            },
            "output": {"runs_dir": str(root / "runs"), "run_name": "cls"},
        }
    )
    result = train(config)
    assert result.status == "completed"
    return result.run_dir


def test_base_vs_tuned_on_the_runs_eval_file_writes_results_into_the_run(tiny_run):
    events = []
    tuned = ModelSpec.from_run(tiny_run)
    eval_set = load_eval_set(run=RunFolder.open(tiny_run))
    assert eval_set.name == "eval.jsonl" and len(eval_set.items) == 6
    report = evaluate([tuned.base_of(), tuned], eval_set, EvalOptions(**FAST), progress=events.append)

    assert report.metric == "accuracy" and report.metric_reason.startswith("auto:")
    assert report.labels == ["base", tuned.label]
    rows = {row["metric"]: row for row in report.comparison}
    assert list(rows) == ["eval_loss", "perplexity", "accuracy", "macro_f1", "unparseable"]
    base_loss, tuned_loss = rows["eval_loss"]["values"]
    assert base_loss != tuned_loss  # the adapter changed something, and the base really had it off
    assert rows["perplexity"]["values"][0] == pytest.approx(2.718281828**base_loss, rel=1e-4)
    diff = rows["eval_loss"]["differences"][0]
    assert diff["model"] == tuned.label and diff["vs"] == "base"
    assert diff["low"] <= diff["estimate"] <= diff["high"]
    assert diff["estimate"] == pytest.approx(tuned_loss - base_loss, abs=1e-5)
    confusion = report.results[1].metrics["confusion"]
    assert confusion["labels"] == ["negative", "neutral", "positive"]
    assert sum(map(sum, confusion["matrix"])) + sum(confusion["unparseable"]) == 6

    stages = {(e.stage, e.model) for e in events}
    assert {("loading model", "base"), ("loss", "base"), ("generating", tuned.label)} <= stages
    assert all(e.models == 2 and 0 <= e.done <= e.total for e in events)
    assert json.loads(json.dumps([e.to_dict() for e in events]))  # plain values only

    saved = list_evaluations(tiny_run)
    assert len(saved) == 1 and report.saved == [saved[0]["path"]]
    files = sorted(p.name for p in (Path(tiny_run) / "eval").iterdir())
    stem = Path(saved[0]["path"]).stem
    assert files == [f"{stem}.examples.jsonl", f"{stem}.json"]
    assert saved[0]["comparison"] == json.loads(json.dumps(report.comparison))
    examples = load_examples(saved[0])
    assert [e["index"] for e in examples] == list(range(6))
    assert set(examples[0]["models"]) == {"base", tuned.label}
    assert {"answer", "loss", "tokens", "correct", "prediction", "gold"} <= set(examples[0]["models"]["base"])
    assert examples[0]["reference"] in {"positive", "negative", "neutral"}


def test_cli_json_shape(tiny_run, capsys):
    code = main(
        ["evaluate", "--run", str(tiny_run), "--compare-base", "--json", "--max-new-tokens", "2", "--no-save"]
    )
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    assert set(out) >= {
        "eval_set",
        "metric",
        "metric_reason",
        "models",
        "baseline",
        "comparison",
        "notes",
        "saved",
    }
    assert out["saved"] == [] and out["baseline"] == "base"
    assert [m["model"]["label"] for m in out["models"]] == ["base", Path(tiny_run).name]
    assert out["models"][1]["model"]["adapter"].endswith("adapter")
    assert {"eval_loss", "perplexity", "accuracy", "macro_f1", "unparseable", "confusion"} <= set(
        out["models"][0]["metrics"]
    )
    row = out["comparison"][0]
    assert set(row) == {"metric", "title", "higher_is_better", "digits", "scale", "values", "differences"}
    assert set(row["differences"][0]) >= {"model", "vs", "estimate", "low", "high", "excludes_zero"}


def test_cli_table(tiny_run, capsys):
    code = main(["evaluate", "--run", str(tiny_run), "--compare-base", "--max-new-tokens", "2", "--no-save"])
    out = capsys.readouterr().out
    assert code == 0
    assert "eval loss" in out and "accuracy" in out and "Confusion matrix" in out
    assert "Δ cls − base" in out  # run ids shown without their timestamp


def test_forced_metric_that_does_not_apply_is_a_note(tiny_model_dir, tmp_path):
    path = tmp_path / "qa.jsonl"
    with open(path, "w") as handle:
        for i in range(3):
            answer = f"Answer {i} is a long explanation with many different words in it, number {i}."
            handle.write(json.dumps({"prompt": f"Question {i}?", "completion": answer}) + "\n")
    report = evaluate(
        [ModelSpec("base", source=str(tiny_model_dir))],
        load_eval_set(str(path)),
        EvalOptions(metric="accuracy", **FAST),
        save=False,
    )
    assert report.metric is None
    assert any("accuracy does not apply" in note for note in report.notes)
    assert [row["metric"] for row in report.comparison] == ["eval_loss", "perplexity"]
    assert "accuracy" not in report.results[0].metrics


def test_eval_data_the_loader_rejects_gives_its_located_error(tmp_path):
    bad = tmp_path / "bad.jsonl"
    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yes"}]}
    bad.write_text(json.dumps(good) + '\n{"messages": 3}\n')
    with pytest.raises(DatasetError) as info:
        load_eval_set(str(bad))
    assert info.value.line == 2 and "bad.jsonl" in str(info.value)


def test_a_run_without_held_out_data_needs_an_eval_file(tiny_model_dir, tmp_path):
    data = write_reviews(tmp_path / "d.jsonl", 10)
    config = RunConfig.from_dict(
        {"model": {"source": str(tiny_model_dir)}, "data": {"path": str(data), "eval_fraction": 0}}
    )
    folder = RunFolder.create(config, tmp_path / "runs")
    with pytest.raises(EvaluationError, match="none were held out") as info:
        load_eval_set(run=folder)
    # words for the app as well as the command line, no internal field names (#24)
    assert "Held out for evaluation" in info.value.hint and "eval_fraction = 0" not in str(info.value)
    # the default share of a file too small to spare a record: said so, not an empty eval set (#24)
    small = config.with_overrides({"data.path": str(write_reviews(tmp_path / "s.jsonl", 9))})
    small = RunFolder.create(small.with_overrides({"data.eval_fraction": 0.1}), tmp_path / "runs")
    with pytest.raises(EvaluationError, match="all of its 9 records: 10% of them is less than one"):
        load_eval_set(run=small)
    default = RunFolder.create(
        RunConfig.from_dict({"model": {"source": str(tiny_model_dir)}, "data": {"path": str(data)}}),
        tmp_path / "runs",
    )
    assert len(load_eval_set(run=default).items) == 1  # the default holds out a tenth (#24)
    split = RunFolder.create(config.with_overrides({"data.eval_fraction": 0.3}), tmp_path / "runs")
    eval_set = load_eval_set(run=split)
    assert len(eval_set.items) == 3 and eval_set.name.startswith("eval split of")


def test_adapter_for_a_different_base_is_chats_clear_error(tiny_run, default_model_dir, tmp_path):
    other = make_tiny_model(tmp_path / "narrow", default_model_dir, hidden=32, heads=2, kv_heads=1)
    spec = ModelSpec.from_adapter(Path(tiny_run) / "adapter", model=str(other))
    with pytest.raises(ChatError, match="different base model"):
        evaluate([spec], load_eval_set(run=RunFolder.open(tiny_run)), EvalOptions(**FAST), save=False)


def test_cancel_stops_the_evaluation(tiny_model_dir, tmp_path):
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(CancelledError):
        evaluate(
            [ModelSpec("base", source=str(tiny_model_dir))],
            load_eval_set(str(write_reviews(tmp_path / "e.jsonl", 4))),
            EvalOptions(**FAST),
            cancel=cancel,
            save=False,
        )


def test_batched_generation_matches_one_at_a_time(tiny_run):
    from lora_studio.core.evaluate.model import generate_answers, load_chat_model

    spec = ModelSpec.from_run(tiny_run)
    chat = load_chat_model(
        spec.source,
        adapter=spec.adapter,
        quantization="none",
        compute_dtype="fp32",
        double_quant=False,
        trust_remote_code=False,
    )
    prompts = [item.prompt for item in load_eval_set(run=RunFolder.open(tiny_run)).items]
    kwargs = {"use_adapter": True, "max_new_tokens": 4, "cancel": threading.Event(), "tick": lambda *_: None}
    assert generate_answers(chat, prompts, batch_size=4, **kwargs) == generate_answers(
        chat, prompts, batch_size=1, **kwargs
    )


@pytest.mark.slow
def test_default_model_answers_the_reviews_demo_in_parseable_labels(default_model_dir):
    """The bundled model, untuned, on the bundled held-out reviews: a real accuracy, few unparseable."""
    from lora_studio.core.paths import resource_path

    eval_set = load_eval_set(str(resource_path("datasets", "reviews_eval.jsonl")))
    assert len(eval_set.items) == 45
    report = evaluate(
        [ModelSpec("base", source="default")], eval_set, EvalOptions(max_examples=8, resamples=50), save=False
    )
    metrics = report.results[0].metrics
    assert report.metric == "accuracy" and metrics["accuracy"] is not None
    assert metrics["unparseable"] <= 4  # it answers in sentences, but names one label in most of them
    assert all(row["answer"] for row in report.results[0].rows)
    assert 0.5 < metrics["eval_loss"] < 10
