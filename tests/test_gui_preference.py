"""Preference tuning in the window (#22): the Train page's Method card (the method's own settings,
"Start from" an earlier run, the data-fits-the-method note), a tiny DPO run's reward plots live and
reopened, pause → chat → resume and stop → resume of a DPO run, and the Runs page comparing the
rewards of preference runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from gui_helpers import close_window, make_window, tiny_config, write_chat
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QLabel

from lora_studio.core.config import RunConfig, field_docs
from lora_studio.core.runs import RunFolder, read_jsonl
from lora_studio.core.train import events as ev
from lora_studio.gui.pages.train import MISMATCH_TITLE, TrainPage
from lora_studio.gui.pages.train_method import NEW_ADAPTER
from lora_studio.gui.run_controller import RunController
from lora_studio.gui.state import AppState

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def write_pairs(path: Path, records: int = 16) -> Path:
    with open(path, "w") as handle:
        for i in range(records):
            pair = {"prompt": f"Question {i}?", "chosen": "Yes, happily.", "rejected": "No."}
            handle.write(json.dumps(pair) + "\n")
    return path


def write_labels(path: Path, records: int = 16) -> Path:
    with open(path, "w") as handle:
        for i in range(records):
            good = bool(i % 2)
            answer = {
                "prompt": f"Question {i}?",
                "completion": "Yes indeed." if good else "No way.",
                "label": good,
            }
            handle.write(json.dumps(answer) + "\n")
    return path


@pytest.fixture
def train_page(qtbot, tmp_path):
    """A Train page alone (no window): the form and its background reads, nothing trained."""
    pages: list[TrainPage] = []

    def build(config: RunConfig) -> TrainPage:
        state = AppState(config.with_overrides({"output.runs_dir": str(tmp_path / "runs")}))
        page = TrainPage(state, RunController(state))
        qtbot.addWidget(page)
        page.resize(1360, 800)
        page.show()
        pages.append(page)
        return page

    yield build
    from lora_studio.gui import workers

    for page in pages:
        for task in (page.method_card.sniffer, page.method_card.runs_reader):
            task.cancel_pending()
        page.plots.timer.stop()
    assert workers.wait_all(30_000)


def choose(editor, value) -> None:
    """Pick ``value`` in a choice field as a person does (the combo's ``activated``)."""
    combo = editor.widget
    index = combo.findData(value)
    assert index >= 0, value
    combo.setCurrentIndex(index)
    combo.activated.emit(index)


def shown(card) -> set[str]:
    """The dotted names of the fields a person can see on the card (the method itself aside)."""
    forms = (card.preference, card.dpo, card.simpo, card.kto)
    return {d for form in forms if form.isVisible() for d in form.editors}


def test_the_method_choice_writes_the_config_and_shows_only_that_methods_settings(
    qtbot, train_page, tmp_path
):
    page = train_page(RunConfig().with_overrides({"data.packing": True}))
    card, state = page.method_card, page.state
    assert state.config.training.method == "sft" and shown(card) == set()
    assert "example answers" in card.explanation.text()
    assert not page.plots.rewards.isVisible()  # an SFT page looks as it always did

    choose(card.method, "dpo")
    assert state.config.training.method == "dpo"
    # packing does not apply to pairs: turned off with the choice, never an invalid method
    assert state.config.data.packing is False and not state.problems
    assert shown(card) == {
        "preference.init_adapter",
        "preference.beta",
        "preference.loss_type",
        "preference.label_smoothing",
        "preference.sft_weight",
    }
    assert "rejected" in card.explanation.text()
    units = {label.text() for label in page.findChildren(QLabel) if label.objectName() == "unit"}
    assert "pairs" in units and "examples" not in units  # a batch holds pairs now
    assert page.plots.rewards.isVisible() and page.plots.accuracy.isVisible()
    assert not page.plots.kl.isVisible()
    docs = field_docs()
    for form in (card.preference, card.dpo):
        for dotted, editor in form.editors.items():
            assert editor.widget.toolTip() == docs[dotted] != ""  # the field's own description

    choose(card.dpo.editors["preference.loss_type"], "ipo")
    smoothing = card.dpo.editors["preference.label_smoothing"].widget
    smoothing.setText("0.2")
    smoothing.editingFinished.emit()
    beta = card.preference.editors["preference.beta"].widget
    beta.setText("0.25")
    beta.editingFinished.emit()
    assert state.config.preference.loss_type == "ipo"
    assert state.config.preference.label_smoothing == 0.2 and state.config.preference.beta == 0.25

    choose(card.method, "simpo")
    assert shown(card) == {"preference.init_adapter", "preference.beta", "preference.simpo_gamma"}
    gamma = card.simpo.editors["preference.simpo_gamma"].widget
    gamma.setText("1.5")
    gamma.editingFinished.emit()
    assert state.config.preference.simpo_gamma == 1.5

    choose(card.method, "kto")
    assert shown(card) == {
        "preference.init_adapter",
        "preference.beta",
        "preference.desirable_weight",
        "preference.undesirable_weight",
    }
    assert page.plots.kl.isVisible() and not page.plots.accuracy.isVisible()
    weight = card.kto.editors["preference.undesirable_weight"].widget
    weight.setText("-1")  # invalid: shown under the field, and Start refuses
    weight.editingFinished.emit()
    assert "preference.undesirable_weight" in state.problems
    choose(card.method, "orpo")  # the hidden field's unfinished edit must not hold Start back
    assert shown(card) == {"preference.init_adapter", "preference.beta"}
    assert state.pending == {} and state.config.preference.undesirable_weight == 1.0

    saved = tmp_path / "run.toml"
    state.config.save(saved)
    loaded = RunConfig.load(saved)
    assert loaded.training.method == "orpo" and loaded.preference.simpo_gamma == 1.5
    assert loaded.preference.beta == 0.25 and loaded.preference.loss_type == "ipo"

    choose(card.method, "sft")
    assert shown(card) == set() and state.config.training.method == "sft"
    assert not page.plots.rewards.isVisible()


def test_start_from_lists_the_completed_runs_of_the_same_model(qtbot, train_page, tmp_path):
    root = tmp_path / "runs"

    def finished_run(name: str, source: str, state: str = "completed", adapter: bool = True) -> RunFolder:
        config = RunConfig().with_overrides({"model.source": source, "output.run_name": name})
        run = RunFolder.create(config, root)
        if adapter:
            run.adapter_dir.mkdir()
            (run.adapter_dir / "adapter_config.json").write_text("{}")
        run.write_status(state, step=30, total_steps=30)
        return run

    sft = finished_run("identity", "default")
    finished_run("other-model", str(tmp_path / "elsewhere"))
    finished_run("stopped", "default", state="cancelled")
    finished_run("no-adapter", "default", adapter=False)
    page = train_page(RunConfig())
    card, state = page.method_card, page.state
    assert not card.preference.isVisible()  # SFT has nothing to start from
    choose(card.method, "dpo")
    combo = card.start_from.widget
    qtbot.waitUntil(lambda: combo.count() == 2, timeout=10_000)
    assert combo.itemText(0) == NEW_ADAPTER and combo.itemData(1) == str(sft.path)
    assert combo.itemText(1) == "identity (SFT, 30 steps)"
    assert state.config.preference.init_adapter is None
    choose(card.start_from, str(sft.path))
    assert state.config.preference.init_adapter == str(sft.path)
    choose(card.method, "sft")  # only preference runs start from an adapter
    assert state.config.preference.init_adapter is None


def test_data_that_does_not_fit_the_method_is_said_before_start_with_the_fix(qtbot, train_page, tmp_path):
    pairs, labels = write_pairs(tmp_path / "pairs.jsonl"), write_labels(tmp_path / "labels.jsonl")
    chat = write_chat(tmp_path / "chat.jsonl")
    page = train_page(RunConfig().with_overrides({"data.path": str(pairs)}))
    card = page.method_card
    note = card.data_note
    qtbot.waitUntil(lambda: note.isVisible(), timeout=10_000)
    assert "chosen/rejected pairs" in note.text() and "DPO" in note.text()
    assert not page.start() and not page.runs.active  # nothing is loaded for a run that must fail
    assert page.messages.title.text() == MISMATCH_TITLE
    assert "choose DPO, ORPO or SimPO" in page.messages.message()
    choose(card.method, "dpo")
    assert not note.isVisible() and page.messages.message() == ""  # fixed: the message goes

    page.state.set_value("data.path", str(labels))
    qtbot.waitUntil(lambda: note.isVisible(), timeout=10_000)
    assert "labelled good or bad" in note.text() and "choose KTO" in note.text()
    choose(card.method, "kto")
    assert not note.isVisible()

    page.state.set_value("data.path", str(chat))
    qtbot.waitUntil(lambda: note.isVisible(), timeout=10_000)
    assert "example conversations" in note.text() and "choose SFT" in note.text()
    choose(card.method, "sft")
    assert not note.isVisible()

    page.state.set_value("data.path", str(labels))
    qtbot.waitUntil(lambda: note.isVisible(), timeout=10_000)
    assert "choose KTO as the method" in note.text()

    page.state.set_value("data.path", "demo-dpo")  # the bundled preference demo: pairs
    qtbot.waitUntil(lambda: "chosen/rejected pairs" in note.text(), timeout=10_000)
    choose(card.method, "dpo")
    assert not note.isVisible() and page.state.validate() == {}


def test_a_mismatched_run_started_anyway_fails_with_the_located_message_not_a_traceback(
    qtbot, tiny_model_dir, tmp_path
):
    """Past the page's note (a run resumed or started elsewhere): the engine's own DatasetError."""
    labels = write_labels(tmp_path / "labels.jsonl")
    config = tiny_config(tiny_model_dir, labels, tmp_path / "runs", method="dpo")
    window = make_window(qtbot, config)
    page = window.pages["train"]
    try:
        with qtbot.waitSignal(window.runs.ended, timeout=120_000) as ended:
            assert window.runs.start(config)
        assert ended.args == ["failed"]
        text = page.messages.message()
        assert page.messages.title.text() == "Problem with the dataset"
        assert "labels.jsonl" in text and "DPO learns from pairs" in text and "choose KTO" in text, text
        assert "Traceback" not in text
        assert page.start_button.isEnabled()
    finally:
        close_window(window)


def test_a_tiny_dpo_run_draws_its_rewards_live_and_again_when_reopened(
    qtbot, tiny_model_dir, tmp_path, monkeypatch
):
    pairs = write_pairs(tmp_path / "pairs.jsonl")
    config = tiny_config(
        tiny_model_dir, pairs, tmp_path / "runs", method="dpo", max_steps=4, save_steps=2, eval_steps=2
    ).with_overrides({"data.eval_fraction": 0.25})
    window = make_window(qtbot, config)
    page = window.pages["train"]
    events: list[ev.Event] = []
    window.runs.event.connect(events.append)
    try:
        with qtbot.waitSignal(window.runs.ended, timeout=180_000) as ended:
            qtbot.mouseClick(page.start_button, Qt.MouseButton.LeftButton)
        assert ended.args == ["completed"], page.messages.message()
        plots = page.plots
        plots.refresh()
        steps = [e for e in events if isinstance(e, ev.Step)]
        assert len(steps) == 4 and all(e.preference for e in steps)
        assert (
            plots.rewards.isVisibleTo(plots)
            and plots.margin.isVisibleTo(plots)
            and plots.accuracy.isVisibleTo(plots)
        )
        assert plots.rewards.count("reward_chosen") == plots.rewards.count("reward_rejected") == 4
        assert plots.margin.count("reward_margin") == 4
        assert plots.rewards.count("eval_reward_chosen") >= 1  # held-out points, apart from the curve
        _x, accuracy = plots.accuracy.values("reward_accuracy")
        assert list(accuracy) == [100 * e.preference["reward_accuracy"] for e in steps]  # in %
        _x, chosen = plots.rewards.values("reward_chosen")
        assert list(chosen) == [e.preference["reward_chosen"] for e in steps]
        assert "Reward margin" in page.messages.message()  # what the run learned, in the end message
        log = page.log.toPlainText()
        assert "margin" in log and "accuracy" in log and "eval margin" in log
        assert plots.loss.count("loss") == 4  # the usual plots are all still there
        run_dir = next(e for e in events if isinstance(e, ev.Finished)).run_dir

        plots.reset(None, "sft")  # another run was shown meanwhile
        page.show_run(run_dir)
        assert plots.method == "dpo" and plots.rewards.isVisibleTo(plots)
        assert plots.rewards.count("reward_chosen") == 4 and plots.rewards.count("eval_reward_chosen") >= 1
        assert list(plots.accuracy.values("reward_accuracy")[1]) == list(accuracy)

        runs = window.pages["runs"]
        window.show_page("runs")
        runs.refresh()
        qtbot.waitUntil(lambda: len(runs.summaries) == 1, timeout=30_000)
        runs.select([Path(run_dir).name])
        qtbot.waitUntil(lambda: runs.compare.points(Path(run_dir).name) == 4, timeout=30_000)
        assert runs.compare.metric_choice.isVisibleTo(runs.compare)
        assert runs.compare.set_metric("reward_margin")
        assert runs.compare.loss.count(f"{Path(run_dir).name}:loss") == 4
    finally:
        close_window(window)


def test_pause_chat_resume_then_stop_and_resume_from_the_checkpoint_of_a_dpo_run(
    qtbot, tiny_model_dir, tmp_path, monkeypatch
):
    """The GUI paths of a run (pause, chat with the paused model, resume; stop, then resume from the
    checkpoint on the Runs page) make no SFT-only assumption: a DPO run goes through all of them."""
    from lora_studio.core.chat import Sampling
    from lora_studio.gui.pages.chat import load_chat

    pairs = write_pairs(tmp_path / "pairs.jsonl")
    config = tiny_config(tiny_model_dir, pairs, tmp_path / "runs", method="dpo", max_steps=6, save_steps=2)
    # held after step 2 until the pause asked on its event arrives: the pause takes hold after step 3
    monkeypatch.setenv("LORA_STUDIO_FAULTS", "step_pause@2:600")
    window = make_window(qtbot, config)
    page = window.pages["train"]
    events: list[ev.Event] = []
    window.runs.event.connect(events.append)
    pause_at_2 = lambda e: window.runs.pause() if isinstance(e, ev.Step) and e.step == 2 else None  # noqa: E731
    window.runs.event.connect(pause_at_2)
    try:
        with qtbot.waitSignal(
            window.runs.event,
            timeout=180_000,
            check_params_cb=lambda e: isinstance(e, ev.Paused) and e.paused,
        ):
            assert page.start()
        assert window.state.run_state == "paused"
        chat, _ = load_chat("paused", "", window.state.config, window.state.shared_model)
        reply = chat.answer(
            [{"role": "user", "content": "Question 1?"}], Sampling(greedy=True, max_new_tokens=4)
        )
        assert reply.new_tokens >= 1 and chat.model.training  # handed back in training mode
        with qtbot.waitSignal(window.runs.ended, timeout=180_000) as ended:
            qtbot.mouseClick(page.pause_button, Qt.MouseButton.LeftButton)
        assert ended.args == ["completed"], page.messages.message()
        assert [e.step for e in events if isinstance(e, ev.Step)] == [1, 2, 3, 4, 5, 6]
        page.plots.refresh()
        assert page.plots.rewards.count("reward_chosen") == 6
        window.runs.event.disconnect(pause_at_2)

        # a second run, stopped at step 2 (held there until the stop arrives), resumed from the Runs page
        stop_at_2 = lambda e: window.runs.stop() if isinstance(e, ev.Step) and e.step == 2 else None  # noqa: E731
        window.runs.event.connect(stop_at_2)
        events.clear()
        with qtbot.waitSignal(window.runs.ended, timeout=180_000) as ended:
            assert page.start()
        assert ended.args == ["cancelled"]
        window.runs.event.disconnect(stop_at_2)
        monkeypatch.delenv("LORA_STUDIO_FAULTS")
        run_id = Path(next(e for e in events if isinstance(e, ev.Finished)).run_dir).name
        runs = window.pages["runs"]
        window.show_page("runs")
        runs.refresh()
        qtbot.waitUntil(lambda: runs.summaries.get(run_id, {}).get("state") == "cancelled", timeout=30_000)
        runs.select([run_id])
        events.clear()
        with qtbot.waitSignal(window.runs.ended, timeout=180_000) as ended:
            qtbot.mouseClick(runs.buttons["resume"], Qt.MouseButton.LeftButton)
        assert ended.args == ["completed"], page.messages.message()
        started = next(e for e in events if isinstance(e, ev.RunStarted))
        assert started.resumed_from_step == 2 and page.plots.method == "dpo"
        page.plots.refresh()
        # the run so far from its folder, then steps 3 to 6 as they come
        assert list(page.plots.rewards.values("reward_chosen")[0]) == [1, 2, 3, 4, 5, 6]
        metrics = read_jsonl(Path(started.run_dir) / "metrics.jsonl")
        assert [m["step"] for m in metrics if "loss" in m] == list(range(1, 7))
        assert all("reward_margin" in m for m in metrics if "loss" in m)
    finally:
        close_window(window)


def test_the_runs_page_compares_the_rewards_of_preference_runs(qtbot, tmp_path):
    from lora_studio.gui.pages.runs import COLUMNS, RunsPage

    root = tmp_path / "runs"

    def run(name: str, method: str, margin: float) -> RunFolder:
        config = RunConfig().with_overrides(
            {"output.run_name": name, "output.runs_dir": str(root), "training.method": method}
        )
        folder = RunFolder.create(config, root)
        for step in range(1, 6):
            record = {"step": step, "loss": 0.7 - 0.05 * step, "tokens_seen": step * 100}
            if method != "sft":
                record |= {
                    "reward_chosen": 0.1 * step,
                    "reward_rejected": -0.1 * step,
                    "reward_margin": margin * step,
                    "reward_accuracy": min(1.0, 0.2 * step),
                }
            folder.append_metrics(record)
        folder.append_metrics(
            {"step": 5, "eval_loss": 0.5}
            | ({"eval_reward_margin": margin * 4, "eval_reward_accuracy": 0.75} if method != "sft" else {})
        )
        folder.write_status("completed", step=5, total_steps=5)
        return folder

    dpo, simpo, sft = run("dpo", "dpo", 0.2), run("simpo", "simpo", 0.5), run("sft", "sft", 0)
    state = AppState(RunConfig().with_overrides({"output.runs_dir": str(root)}))
    page = RunsPage(state, RunController(state))
    qtbot.addWidget(page)
    page.resize(1360, 800)
    page.show()
    try:
        qtbot.waitUntil(lambda: page.table.rowCount() == 3, timeout=10_000)
        methods = {
            page.table.item(r, 0).data(256): page.table.item(r, COLUMNS.index("Method")).text()
            for r in range(3)
        }
        assert methods == {dpo.run_id: "DPO", simpo.run_id: "SimPO", sft.run_id: "SFT"}
        compare = page.compare
        page.select([sft.run_id])
        qtbot.waitUntil(lambda: compare.points(sft.run_id) == 5, timeout=10_000)
        assert not compare.metric_choice.isVisibleTo(compare)  # SFT alone: the comparison as it always was
        page.select([dpo.run_id, simpo.run_id])
        qtbot.waitUntil(
            lambda: compare.points(dpo.run_id) == compare.points(simpo.run_id) == 5, timeout=10_000
        )
        assert compare.metric_choice.isVisibleTo(compare)
        offered = [compare.metric_choice.itemData(i) for i in range(compare.metric_choice.count())]
        assert offered == ["loss", "reward_margin", "reward_accuracy", "reward_chosen", "reward_rejected"]
        assert compare.set_metric("reward_margin")
        assert compare.loss.title_text == "Reward margin"
        for folder, margin in ((dpo, 0.2), (simpo, 0.5)):
            x, y = compare.loss.values(f"{folder.run_id}:loss")
            assert list(x) == [1, 2, 3, 4, 5] and list(y) == pytest.approx([margin * s for s in range(1, 6)])
            assert list(compare.loss.values(f"{folder.run_id}:eval")[1]) == pytest.approx([margin * 4])
        names = [label.text for _sample, label in compare.loss.legend.items]
        assert "dpo margin" in names and "simpo eval margin" in names
        assert compare.set_metric("reward_accuracy")
        assert list(compare.loss.values(f"{dpo.run_id}:loss")[1]) == pytest.approx([20, 40, 60, 80, 100])
        assert compare.loss.fixed_y == (0.0, 100.0)
        assert not compare.set_metric("kl")  # no selected run is a KTO run
        page.select([sft.run_id, dpo.run_id])  # a mixed selection: the SFT run has no margin to draw
        qtbot.waitUntil(
            lambda: compare.points(sft.run_id) == 0 and compare.points(dpo.run_id) == 5, timeout=10_000
        )
        assert compare.metric_choice.currentData() == "reward_accuracy"
        assert compare.set_metric("loss") and compare.points(sft.run_id) == 5
    finally:
        page.follow_timer.stop()
        for task in (page.listing, page.reader):
            task.cancel_pending()
        from lora_studio.gui import workers

        assert workers.wait_all(30_000)


def test_a_kto_run_folder_shows_its_kl_and_no_accuracy(qtbot):
    from lora_studio.gui.widgets.training_plots import TrainingPlots

    plots = TrainingPlots()
    qtbot.addWidget(plots)
    plots.show()
    records = [
        {
            "step": s,
            "loss": 0.5,
            "reward_chosen": 0.1,
            "reward_rejected": -0.1,
            "reward_margin": 0.2,
            "kl": 0.01 * s,
        }
        for s in (1, 2, 3)
    ] + [{"step": 3, "eval_loss": 0.4, "eval_kl": 0.05, "eval_reward_margin": 0.3}]
    plots.load_metrics(records, 3, "kto")
    assert plots.kl.isVisible() and not plots.accuracy.isVisible()
    assert plots.kl in plots.plots and plots.accuracy not in plots.plots  # what the timer redraws
    assert list(plots.kl.values("kl")[1]) == pytest.approx([0.01, 0.02, 0.03])
    assert plots.kl.count("eval_kl") == 1 and plots.margin.count("eval_reward_margin") == 1
    plots.load_metrics(records, 3, "sft")  # a KTO run whose method was not known: its data decides
    assert plots.method == "kto" and plots.kl.isVisible()
    plots.load_metrics([{"step": 1, "loss": 1.0}], 1, "sft")
    assert plots.method == "sft" and not plots.rewards.isVisible()
    plots.timer.stop()


def test_changing_the_method_updates_the_memory_estimate(qtbot, tiny_model_dir, tmp_path):
    """DPO runs each pair's two answers (and the reference) per step: the estimate must follow."""
    from gui_helpers import wait_idle

    config = tiny_config(tiny_model_dir, write_pairs(tmp_path / "pairs.jsonl"), tmp_path / "runs")
    window = make_window(qtbot, config)
    try:
        qtbot.waitUntil(lambda: window.state.estimate is not None, timeout=60_000)
        wait_idle(qtbot, window)
        sft = window.state.estimate
        choose(window.pages["train"].method_card.method, "dpo")
        qtbot.waitUntil(lambda: window.state.estimate not in (None, sft), timeout=60_000)
        dpo = window.state.estimate
        assert dpo["bytes"]["activations"] > sft["bytes"]["activations"], (sft["bytes"], dpo["bytes"])
    finally:
        close_window(window)
