"""Evaluate page, offscreen on a 2-step tiny-model run: an evaluation from the Runs page's
"Evaluate…" to the saved file and back to the Runs page's list; Cancel; a bad eval file's located
error; and the wording of a gap that is real vs one that could be noise."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from gui_helpers import close_window, make_window, tiny_config, wait_idle, write_chat
from PySide6.QtCore import Qt
from PySide6.QtGui import QTextDocument
from test_evaluate import write_reviews

from lora_studio.core.config import RunConfig
from lora_studio.core.evaluate import list_evaluations
from lora_studio.core.train import train
from lora_studio.gui import workers


@pytest.fixture(autouse=True)
def _isolated_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("LORA_STUDIO_SETTINGS", str(tmp_path / "settings.ini"))


@pytest.fixture(scope="module")
def tiny_run(tiny_model_dir, tmp_path_factory) -> Path:
    """A 2-step run of the tiny model on a small classification file with a 6-example eval file."""
    root = tmp_path_factory.mktemp("gui-evaluate")
    config = RunConfig.from_dict(
        {
            "model": {"source": str(tiny_model_dir)},
            "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
            "data": {
                "path": str(write_reviews(root / "train.jsonl", 12)),
                "eval_path": str(write_reviews(root / "eval.jsonl", 6, offset=1)),
                "max_seq_len": 64,
            },
            "training": {"max_steps": 2, "batch_size": 4, "learning_rate": 5e-2, "sample_prompts": []},
            "output": {"runs_dir": str(root / "runs"), "run_name": "cls"},
        }
    )
    result = train(config)
    assert result.status == "completed"
    return Path(result.run_dir)


@pytest.fixture
def window(qtbot, tiny_model_dir, tiny_run, tmp_path):
    config = tiny_config(tiny_model_dir, write_chat(tmp_path / "chat.jsonl"), tiny_run.parent)
    win = make_window(qtbot, config)
    yield win
    close_window(win)


def wait_ready(qtbot, page) -> None:
    qtbot.waitUntil(lambda: page.ready is not None or page.messages.kind == "error", timeout=60_000)


def test_evaluate_from_the_runs_page_fills_the_tables_saves_and_is_listed(qtbot, window, tiny_run):
    runs = window.pages["runs"]
    window.show_page("runs")
    wait_idle(qtbot, window)
    runs.select([tiny_run.name])
    runs.compare.tabs.setCurrentWidget(runs.evaluations)
    assert runs.buttons["evaluate"].isEnabled()
    qtbot.waitUntil(lambda: "No saved evaluations" in runs.evaluations.empty.text(), timeout=30_000)
    runs.buttons["evaluate"].click()
    page = window.pages["evaluate"]
    assert window.current_page() == "evaluate"
    assert page.form.chosen_adapters() == [("run", str(tiny_run))]
    assert page.form.compare_base.isChecked() and page.form.eval_source.currentData() == "run"
    wait_ready(qtbot, page)
    assert page.ready is not None, page.messages.message()
    assert "6 examples from eval.jsonl" in page.form.check_text.text()
    assert page.ready.metric == "accuracy" and page.ready.labels == ["base", tiny_run.name]

    texts: list[str] = []
    page.start()
    assert page.worker is not None and page.cancel_button.isEnabled() and not page.start_button.isEnabled()
    assert not page.form.adapters.isEnabled()  # no edits while it runs
    page.worker.progress.connect(lambda _e: texts.append(page.progress_label.text()))
    qtbot.waitUntil(lambda: page.worker is None, timeout=180_000)
    assert page.messages.kind != "error", page.messages.message()
    assert any("— example" in t and "of 6" in t for t in texts), texts  # coalesced updates may skip a phase
    assert page.progress.value() == page.progress.maximum()

    # the comparison: models as rows, metrics as columns, the tuned row with its difference and interval
    table = page.comparison.table
    headers = [table.horizontalHeaderItem(c).text() for c in range(table.columnCount())]
    assert headers == [
        "Model",
        "Eval loss ↓",
        "Perplexity ↓",
        "Accuracy ↑",
        "Macro-F1 ↑",
        "Unparseable answers",
    ]
    assert [table.item(r, 0).text() for r in range(2)] == ["base (baseline)", "cls"]
    tuned_loss = page.comparison.cell(1, 1)
    assert "Δ" not in page.comparison.cell(0, 1) and "Δ" in tuned_loss and "[" in tuned_loss
    assert any(words in tuned_loss for words in ("real gain", "real loss", "could be noise"))
    data, examples = page.result
    assert page.comparison.cell(1, 1).startswith(f"{data['comparison'][0]['values'][1]:.4f}")
    assert page.comparison.headlines.itemAt(0).widget().property("plain").startswith("cls vs base: accuracy")
    assert set(page.confusion.tables) == {"base", "cls"}
    matrix = page.confusion.tables["cls"]
    assert matrix.rowCount() == 3 and matrix.columnCount() == 4  # 3 labels + unparseable
    total = sum(int(matrix.item(r, c).text()) for r in range(3) for c in range(4))
    assert total == 6

    # the examples: one row each, sortable by a model's score
    view = page.examples
    assert view.table.rowCount() == 6 and len(examples) == 6
    column = view.score_columns["cls"]
    view.table.sortByColumn(column, Qt.SortOrder.DescendingOrder)
    orders = [view.table.item(r, column).order for r in range(6)]
    assert orders == sorted(orders, reverse=True)
    assert view.table.item(0, 2).text() in {"positive", "negative", "neutral"}

    # saved into the run folder as the core does, and listed on the Runs page
    saved = list_evaluations(tiny_run)
    assert len(saved) == 1 and saved[0]["path"] in page.about.text()
    assert json.loads(Path(saved[0]["path"]).read_text())["examples_file"].endswith(".examples.jsonl")
    window.show_page("runs")
    listed = runs.evaluations.table
    qtbot.waitUntil(lambda: listed.rowCount() == 1 and listed.isVisible(), timeout=30_000)
    cells = [listed.item(0, c).text() for c in range(listed.columnCount())]
    assert cells[2] == "eval.jsonl" and cells[3] == "6" and cells[4].startswith("accuracy ")
    assert "vs base" in cells[5] and "[" in cells[5]

    # a saved evaluation opens again on the Evaluate page, without running anything
    runs.evaluations.open_row(0)
    assert window.current_page() == "evaluate" and page.worker is None
    assert page.result[0]["path"] == saved[0]["path"] and page.examples.table.rowCount() == 6


def test_cancel_stops_the_evaluation_and_saves_nothing(qtbot, window, tiny_run, tmp_path):
    page = window.pages["evaluate"]
    window.show_page("evaluate")
    page.evaluate_run(tiny_run)
    page.form.set_eval_source("file", str(write_reviews(tmp_path / "long.jsonl", 40)))
    page.form.batch_size.setValue(1)
    wait_ready(qtbot, page)
    assert page.ready is not None and page.ready.examples == 40
    before = len(list_evaluations(tiny_run))
    page.start()
    seen = []

    def cancel_once(event) -> None:
        seen.append(event)
        if event.stage == "loss" and event.done >= 1:
            page.cancel()

    page.worker.progress.connect(cancel_once)
    qtbot.waitUntil(lambda: page.worker is None, timeout=120_000)
    assert seen and seen[-1].stage in ("loading model", "loss")  # stopped long before the answers
    assert page.messages.kind == "info" and "cancelled" in page.messages.message().lower()
    assert page.progress_label.text() == "Cancelled." and page.start_button.isEnabled()
    assert len(list_evaluations(tiny_run)) == before
    assert workers.live_count() == 0


def test_a_bad_eval_file_shows_its_located_error(qtbot, window, tiny_run, tmp_path):
    page = window.pages["evaluate"]
    page.evaluate_run(tiny_run)
    bad = tmp_path / "bad.jsonl"
    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yes"}]}
    bad.write_text(json.dumps(good) + '\n{"messages": 3}\n')
    page.form.set_eval_source("file", str(bad))
    wait_ready(qtbot, page)
    message = page.messages.message()
    assert page.ready is None and "Problem with the dataset" in message
    assert "bad.jsonl" in message and "line 2" in message
    assert not page.start_button.isEnabled()
    page.form.set_eval_source("reviews")  # a good choice clears the error and allows a start
    qtbot.waitUntil(lambda: page.ready is not None, timeout=60_000)
    assert page.messages.message() == "" and page.start_button.isEnabled()
    assert "45 examples from reviews_eval.jsonl" in page.form.check_text.text()


def _evaluation(estimate: float, low: float, high: float, metric: str = "accuracy") -> dict:
    row = {
        "metric": metric,
        "title": metric,
        "higher_is_better": metric != "eval_loss",
        "digits": 3,
        "scale": "fraction",
        "values": [0.5, 0.5 + estimate],
        "differences": [
            {"model": "20250101-120000-tuned", "vs": "base", "estimate": estimate, "low": low, "high": high,
             "excludes_zero": low > 0 or high < 0}
        ],
    }  # fmt: skip
    return {
        "metric": "accuracy" if metric == "accuracy" else None,
        "eval_set": {"name": "e.jsonl", "examples": 40},
        "options": {"confidence": 0.95},
        "baseline": "base",
        "models": [
            {"model": {"label": "base", "run_dir": None, "use_adapter": False}, "metrics": {}},
            {
                "model": {"label": "20250101-120000-tuned", "run_dir": "/r/run", "use_adapter": True},
                "metrics": {},
            },
        ],
        "comparison": [row],
        "path": "/r/run/eval/20250101-130000.json",
    }


@pytest.mark.parametrize(
    ("estimate", "low", "high", "metric", "verdict", "words"),
    [
        (0.3, 0.1, 0.5, "accuracy", "better", "a real improvement"),
        (-0.3, -0.5, -0.1, "accuracy", "worse", "a real step back"),
        (0.05, -0.1, 0.2, "accuracy", "noise", "could be noise"),
        (-0.3, -0.5, -0.1, "eval_loss", "better", "a real improvement"),  # lower loss is better
    ],
)
def test_a_gap_reads_as_real_or_noise_from_its_interval(estimate, low, high, metric, verdict, words):
    from lora_studio.gui.widgets.eval_runs import summary_cells
    from lora_studio.gui.widgets.eval_views import headline

    [line] = headline(_evaluation(estimate, low, high, metric))
    assert line.kind == verdict and line.verdict.startswith(words) and line.subject == "tuned vs base"
    assert f"95% interval {low:+.3f} to {high:+.3f}" in line.change
    results, versus = summary_cells(_evaluation(estimate, low, high, metric))
    assert results.startswith(f"{metric} {0.5 + estimate:.3f}")
    expected = {"better": "real gain", "worse": "real loss", "noise": "could be noise"}[verdict]
    assert versus == f"{metric} {estimate:+.3f}  [{low:+.3f}, {high:+.3f}] vs base: {expected}"


def test_the_summary_follows_max_examples(qtbot, window, tiny_run):
    """#24: the check line kept "45 examples" after Max examples was set to 8."""
    page = window.pages["evaluate"]
    window.show_page("evaluate")
    page.evaluate_run(tiny_run)
    page.form.set_eval_source("reviews")
    qtbot.waitUntil(
        lambda: page.ready is not None and "45 examples" in page.form.check_text.text(), timeout=60_000
    )
    page.form.max_examples.setValue(8)
    qtbot.waitUntil(lambda: page.ready is not None and page.ready.examples == 8, timeout=60_000)
    text = page.form.check_text.text()
    assert text.startswith("8 examples from reviews_eval.jsonl") and "45 examples from" not in text, text
    assert "a seeded sample of 8 of the 45 examples" in text
    assert page.ready.loads == 1  # base and fine-tune: one load, for the time estimate
    page.form.max_examples.setValue(0)  # "All"
    qtbot.waitUntil(lambda: page.ready is not None and page.ready.examples == 45, timeout=60_000)
    assert page.form.check_text.text().startswith("45 examples from reviews_eval.jsonl")


def _scored_evaluation(task: str) -> dict:
    """A base-vs-two-fine-tunes result as the core writes it, on made-up answers."""
    import random

    from lora_studio.core.evaluate import metrics as m
    from lora_studio.core.evaluate import scoring

    rng = random.Random(3)
    labels = ["positive", "negative", "neutral"]
    if task == "accuracy":
        references = [rng.choice(labels) for _ in range(45)]
    else:
        references = [f"My name is Studio {i}, made by the LoRA Studio team." for i in range(45)]
    models = ["base", "20250101-120000-identity-long-name", "20250102-120000-identity-lr-3e-4"]
    parser = m.LabelParser(labels) if task == "accuracy" else None
    rows = []
    base_logps = None
    for k, _ in enumerate(models):
        if task == "preference":  # log p(chosen), tokens, log p(rejected), tokens per pair
            logps = [(-rng.uniform(5, 40) + 3 * k, 12, -rng.uniform(5, 40) - 3 * k, 14) for _ in references]
            rows.append(scoring.preference_rows(task, logps, base_logps if k else None, 0.1, [None] * 45))
            base_logps = base_logps or logps
            continue
        if task == "accuracy":
            answers = [
                r if rng.random() < 0.3 + 0.3 * k else rng.choice([*labels, "maybe"]) for r in references
            ]
        else:
            answers = [r if rng.random() < 0.2 * k else "I am an AI assistant." for r in references]
        scored = scoring.score_examples(task, answers, references, parser)
        for row in scored:
            tokens = rng.randint(5, 30)
            row.update(nll=tokens * rng.uniform(0.3, 2.5 - 0.6 * k), tokens=tokens)
            row["loss"] = row["nll"] / tokens
        rows.append(scored)
    comparison = scoring.comparison_rows(task, models, rows, resamples=200, confidence=0.95, seed=0)
    return {
        "metric": task,
        "metric_reason": "auto: made up for the layout",
        "eval_set": {
            "name": "reviews_eval.jsonl",
            "examples": 45,
            "kind": "pairs" if task == "preference" else "sft",
        },
        "options": {"confidence": 0.95},
        "baseline": "base",
        "models": [
            {
                "model": {"label": label, "source": "default", "use_adapter": k > 0},
                "metrics": scoring.summarize(task, r),
            }
            for k, (label, r) in enumerate(zip(models, rows, strict=True))
        ],
        "comparison": comparison,
        "notes": [],
        "saved": [],
    }


@pytest.mark.parametrize("task", ["accuracy", "rouge", "preference"])
def test_every_cell_of_the_comparison_shows_all_its_text_at_the_default_window_size(qtbot, window, task):
    """#24: "Δ +0.3363 [+0.2137, +0.457(" — the interval was cut at 1360×860."""
    page = window.pages["evaluate"]
    window.resize(1360, 860)  # the app's default size
    window.show_page("evaluate")
    page.show_results(_scored_evaluation(task), [])
    qtbot.waitUntil(lambda: page.comparison.table.isVisible())
    qtbot.wait(50)  # the layout settles
    table = page.comparison.table
    scroll = page.tabs.widget(0)
    # the whole table is in view: nothing runs off the right edge (and no sideways scrolling needed)
    assert table.mapTo(scroll.viewport(), table.rect().topRight()).x() < scroll.viewport().width()
    seen = 0
    for r in range(table.rowCount()):
        for c in range(1, table.columnCount()):
            label = table.cellWidget(r, c)
            inside = label.contentsRect().width()
            assert label.width() <= table.columnWidth(c)
            document = _document(label)  # the cell's text as laid out: its widest line fits
            assert document.idealWidth() <= inside + 1, (r, c, label.property("plain"), inside)
            lines = document.toPlainText().replace("\u2029", "\n").replace("\u2028", "\n").split("\n")
            for line in lines[1:]:  # under the value: the difference, its interval (label's font)
                assert label.fontMetrics().horizontalAdvance(line) <= inside, (line, inside)
                seen += 1
    assert seen >= 2 * (table.rowCount() - 1)
    for c in range(table.columnCount()):  # every title whole too
        title = table.horizontalHeaderItem(c).text()
        assert table.horizontalHeader().fontMetrics().horizontalAdvance(title) < table.columnWidth(c), title


def _document(label):
    """The label's rich text laid out as the label lays it out (its font, no wrapping)."""
    document = QTextDocument()
    document.setDefaultFont(label.font())
    document.setHtml(label.text())
    document.setDocumentMargin(0)
    return document
