"""The Runs page, offscreen, on run folders written directly (no training): listing, following a run
another process writes, comparing with the settings that differ, deleting, old config files, the
Train page's "Export as command…" — and resuming a real stopped tiny run from the page."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import json
from pathlib import Path

import pytest
from PySide6.QtCore import Qt

from lora_studio.core.config import RunConfig
from lora_studio.core.runs import RunFolder
from lora_studio.gui.pages import runs as runs_page
from lora_studio.gui.pages.runs import COLUMNS, RunsPage
from lora_studio.gui.run_controller import RunController
from lora_studio.gui.state import AppState


def make_run(root: Path, name: str, lr: float, steps: int = 10, state: str = "completed") -> RunFolder:
    config = RunConfig().with_overrides(
        {"output.run_name": name, "output.runs_dir": str(root), "training.learning_rate": lr}
    )
    run = RunFolder.create(config, root)
    for step in range(1, steps + 1):
        run.append_metrics(
            {"step": step, "loss": 3.0 / step, "tokens_seen": step * 100, "mem": {"rss": 2**30}}
        )
    run.append_metrics({"step": steps, "eval_loss": 2.5})
    run.append_sample({"step": steps, "stage": "after", "prompt": "Hi?", "answer": f"answer {name}"})
    if state != "running":
        run.write_status(state, step=steps, total_steps=steps, finished_at=None)
    return run


@pytest.fixture
def page(qtbot, tmp_path, monkeypatch):
    monkeypatch.setenv("LORA_STUDIO_SETTINGS", str(tmp_path / "settings.ini"))
    root = tmp_path / "runs"
    root.mkdir()
    state = AppState(RunConfig().with_overrides({"output.runs_dir": str(root)}))
    widget = RunsPage(state, RunController(state))
    qtbot.addWidget(widget)
    widget.resize(1200, 800)
    widget.show()
    widget.root_path = root
    yield widget
    widget.follow_timer.stop()
    for task in (widget.listing, widget.reader):
        task.cancel_pending()
    from lora_studio.gui import workers

    assert workers.wait_all(30_000)  # no reader thread outlives the test


def rows(page) -> dict[str, list[str]]:
    t = page.table
    return {
        t.item(r, 0).data(256): [t.item(r, c).text() for c in range(len(COLUMNS))]
        for r in range(t.rowCount())
    }


def test_lists_new_runs_as_the_folder_changes_and_filters(qtbot, page):
    qtbot.waitUntil(lambda: not page.listing.busy)
    assert page.table.rowCount() == 0
    a = make_run(page.root_path, "alpha", 1e-4)
    b = make_run(page.root_path, "beta", 2e-4, state="cancelled")
    qtbot.waitUntil(lambda: len(rows(page)) == 2, timeout=10_000)  # the watcher saw the new folders
    row = rows(page)[a.run_id]
    cell = {name: row[i] for i, name in enumerate(COLUMNS)}
    assert cell["Name"] == "alpha" and cell["Status"] == "completed" and cell["Method"] == "SFT"
    assert cell["Steps"] == "10 / 10" and cell["Loss"] == "0.3000"
    assert cell["Eval loss"] == "2.5000" and cell["Peak memory"] == "1.00 GB"
    page.filter.setText("beta")
    hidden = {page.table.item(r, 0).data(256): page.table.isRowHidden(r) for r in range(2)}
    assert hidden == {a.run_id: True, b.run_id: False}
    page.filter.clear()
    page.table.sortByColumn(COLUMNS.index("Loss"), page.table.horizontalHeader().sortIndicatorOrder())
    page.select([b.run_id])
    assert page.buttons["resume"].isEnabled() and page.buttons["delete"].isEnabled()
    page.select([a.run_id])
    assert not page.buttons["resume"].isEnabled()


def test_follows_a_run_written_by_another_process(qtbot, page):
    run = make_run(page.root_path, "live", 1e-4, steps=3, state="running")  # status names this process
    qtbot.waitUntil(lambda: run.run_id in rows(page), timeout=10_000)
    assert rows(page)[run.run_id][1] == "running"
    page.select([run.run_id])
    qtbot.waitUntil(lambda: page.compare.points(run.run_id) == 3, timeout=10_000)
    for step in (4, 5, 6):
        run.append_metrics({"step": step, "loss": 0.5, "tokens_seen": step * 100})
    with open(run.metrics_path, "a") as handle:
        handle.write('{"step": 7, "lo')  # torn: still being written
    qtbot.waitUntil(lambda: page.compare.points(run.run_id) == 6, timeout=10_000)
    x, y = page.compare.loss.values(f"{run.run_id}:loss")
    assert list(x) == [1, 2, 3, 4, 5, 6] and y[-1] == 0.5


def test_compares_runs_with_the_settings_that_differ_and_their_samples(qtbot, page):
    runs = [make_run(page.root_path, f"lr{i}", lr) for i, lr in enumerate((1e-4, 2e-4, 5e-4))]
    qtbot.waitUntil(lambda: len(rows(page)) == 3, timeout=10_000)
    ids = [r.run_id for r in runs]
    page.select(ids)
    qtbot.waitUntil(lambda: all(page.compare.points(i) == 10 for i in ids), timeout=10_000)
    diff = page.compare.diff
    settings = [diff.verticalHeaderItem(r).text() for r in range(diff.rowCount())]
    assert "training.learning_rate" in settings and "output.run_name" in settings
    assert "model.source" not in settings  # the same in all three
    assert page.compare.samples.rowCount() == 1
    assert [page.compare.samples.item(0, c).text() for c in range(3)] == [
        "answer lr0",
        "answer lr1",
        "answer lr2",
    ]
    extra = make_run(page.root_path, "later", 1e-3)  # the list changes: the selection stays
    qtbot.waitUntil(lambda: extra.run_id in rows(page), timeout=10_000)
    assert page.selected_ids() == sorted(ids)
    page.compare.tokens_axis.setChecked(True)
    x, _ = page.compare.loss.values(f"{ids[0]}:loss")
    assert x[-1] == 1000
    page.select([ids[0]])  # one run: every setting, not an empty "differ" table
    tab = page.compare.tabs.indexOf(diff)
    qtbot.waitUntil(lambda: page.compare.tabs.tabText(tab) == "Settings", timeout=10_000)
    qtbot.waitUntil(lambda: diff.rowCount() > 20, timeout=10_000)
    settings = {diff.verticalHeaderItem(r).text(): diff.item(r, 0).text() for r in range(diff.rowCount())}
    assert settings["training.learning_rate"] == "0.0001" and "model.source" in settings


def test_delete_asks_first_and_removes_the_folder(qtbot, page, monkeypatch):
    monkeypatch.setattr(runs_page, "move_to_trash", lambda path: runs_page.shutil.rmtree(path))
    run = make_run(page.root_path, "gone", 1e-4)
    qtbot.waitUntil(lambda: run.run_id in rows(page), timeout=10_000)
    page.select([run.run_id])
    asked = []
    page.confirm = lambda title, text: asked.append(text) or False
    assert page.delete() == 0 and run.path.is_dir() and run.run_id in asked[0]
    page.confirm = lambda title, text: True
    assert page.delete() == 1 and not run.path.exists()
    qtbot.waitUntil(lambda: rows(page) == {}, timeout=10_000)


def test_rename_keeps_the_timestamp(qtbot, page):
    run = make_run(page.root_path, "old", 1e-4)
    qtbot.waitUntil(lambda: run.run_id in rows(page), timeout=10_000)
    page.select([run.run_id])
    target = page.rename("new-name")
    assert target is not None and target.name == run.run_id.replace("-old", "-new-name") and target.is_dir()


def test_an_older_config_opens_with_notes_and_duplicates_into_the_state(qtbot, page):
    folder = page.root_path / "20240101-000000-legacy"
    folder.mkdir()
    (folder / "config.toml").write_text(
        'schema_version = 0\n[model]\nsource = "old-model"\nremoved_setting = 1\n'
        "[training]\nlearning_rate = 0.001\n"
    )
    (folder / "status.json").write_text(json.dumps({"state": "completed", "step": 5, "started_at": 1.7e9}))
    qtbot.waitUntil(lambda: folder.name in rows(page), timeout=10_000)
    assert rows(page)[folder.name][2] == "old-model"
    page.select([folder.name])
    qtbot.waitUntil(lambda: "older version" in page.messages.message(), timeout=10_000)
    assert "removed_setting" in page.messages.message()
    shown = []
    page.navigate.connect(shown.append)
    page.duplicate()
    assert page.state.config.training.learning_rate == 0.001 and shown == ["train"]


def test_train_page_exports_a_launch_bundle(qtbot, tmp_path, monkeypatch):
    monkeypatch.setenv("LORA_STUDIO_SETTINGS", str(tmp_path / "settings.ini"))
    from lora_studio.gui.pages.train import TrainPage

    state = AppState(RunConfig())
    train = TrainPage(state, RunController(state))
    qtbot.addWidget(train)
    bundle = train.export_command(str(tmp_path / "bundle"), gpus_per_machine=4, machines=1)
    assert bundle is not None
    assert {p.name for p in (tmp_path / "bundle").iterdir()} == {"run.toml", "launch.sh", "slurm.sbatch"}
    assert "--num_processes 4" in train.messages.message() and "accelerate launch" in train.messages.message()
    assert train.export_button.text().startswith("Export as command")


def test_use_in_chat_chooses_the_runs_adapter_on_the_chat_page(qtbot, page):
    run = make_run(page.root_path, "talk", 1e-4)
    run.adapter_dir.mkdir()
    (run.adapter_dir / "adapter_config.json").write_text("{}")
    qtbot.waitUntil(lambda: run.run_id in rows(page), timeout=10_000)
    page.select([run.run_id])
    assert page.buttons["chat"].isEnabled()

    class Picker:
        chosen: tuple[str, str] = ("base", "")

        def select(self, kind, path):
            self.chosen = (kind, path)

        def choice(self):
            return self.chosen

    class Chat:
        picker = Picker()

        def refresh_sources(self):
            pass

    page.pages = {"chat": Chat()}  # the page is its own window here
    shown = []
    page.navigate.connect(shown.append)
    assert page.use_in_chat() and shown == ["chat"]
    assert Chat.picker.chosen == ("run", str(run.path))


def test_resume_from_the_page_finishes_a_stopped_run_with_every_step_once(
    qtbot, tmp_path, tiny_model_dir, monkeypatch
):
    """A real tiny run stopped early, resumed with the Runs page's button: it continues from its
    checkpoint in the Train page and completes, with each step logged exactly once."""
    from gui_helpers import close_window, make_window, tiny_config, write_chat

    from lora_studio.core.runs import read_jsonl
    from lora_studio.core.train import events as ev

    config = tiny_config(
        tiny_model_dir, write_chat(tmp_path / "chat.jsonl"), tmp_path / "runs", max_steps=30, save_steps=2
    )
    # the run holds after step 3 until the stop asked on its event arrives, however late the GUI
    # sees that event: it stops at step 3 on any machine (the resumed run never logs step 3 again)
    monkeypatch.setenv("LORA_STUDIO_FAULTS", "step_pause@3:600")
    window = make_window(qtbot, config)
    stop_at_3 = lambda e: window.runs.stop() if isinstance(e, ev.Step) and e.step == 3 else None  # noqa: E731
    window.runs.event.connect(stop_at_3)
    try:
        with qtbot.waitSignal(window.runs.ended, timeout=180_000) as ended:
            assert window.pages["train"].start()
        assert ended.args == ["cancelled"]
        window.runs.event.disconnect(stop_at_3)
        page = window.pages["runs"]
        window.show_page("runs")
        page.refresh()
        # a listing read while the run was still going may answer first: wait for the final state
        qtbot.waitUntil(lambda: [r[1] for r in rows(page).values()] == ["cancelled"], timeout=30_000)
        (run_id,) = rows(page)
        stopped_at = RunFolder(Path(page.summaries[run_id]["path"])).status()["step"]
        assert stopped_at == 3
        page.select([run_id])
        assert page.buttons["resume"].isEnabled()
        started = []
        window.runs.event.connect(lambda e: isinstance(e, ev.RunStarted) and started.append(e))
        with qtbot.waitSignal(window.runs.ended, timeout=180_000) as ended:
            qtbot.mouseClick(page.buttons["resume"], Qt.MouseButton.LeftButton)
            assert window.current_page() == "train"
        assert ended.args == ["completed"]
        folder = RunFolder(Path(page.summaries[run_id]["path"]))
        assert folder.status()["state"] == "completed"
        assert started[0].resumed_from_step == stopped_at  # from the checkpoint written at the stop
        steps = [m["step"] for m in read_jsonl(folder.metrics_path) if "loss" in m]
        assert steps == list(range(1, 31))
        qtbot.waitUntil(lambda: rows(page).get(run_id, ["", ""])[1] == "completed", timeout=30_000)
    finally:
        close_window(window)


def test_a_run_that_finished_since_the_last_look_is_preselected_for_export_and_chat(qtbot, tmp_path):
    """The run just finished was not preselected on the Export (or Chat) page (#24)."""
    from lora_studio.gui.widgets.sources import SourcePicker

    def with_adapter(name: str) -> RunFolder:
        run = make_run(tmp_path, name, 1e-4)
        run.adapter_dir.mkdir()
        (run.adapter_dir / "adapter_config.json").write_text("{}")
        return run

    picker = SourcePicker(base=False)
    qtbot.addWidget(picker)
    first = with_adapter("first")
    picker.refresh(tmp_path)
    assert picker.choice() == ("run", str(first.path))
    picker.select("folder", str(tmp_path / "elsewhere"))  # the person chose something else
    picker.refresh(tmp_path)
    assert picker.choice() == ("folder", str(tmp_path / "elsewhere"))  # kept: nothing new
    second = with_adapter("second")
    picker.refresh(tmp_path)
    assert picker.choice() == ("run", str(second.path))  # the new run, ready to export or chat
