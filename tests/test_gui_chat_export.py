"""Chat and Export pages, offscreen on the tiny model: a streamed chat round-trip, Stop, side by side
with a tiny adapter, errors in the message bar, and an adapter export verified and shown as passed."""

from __future__ import annotations

from pathlib import Path

import pytest
from gui_helpers import tiny_config, wait_answered, write_chat

from lora_studio.core.chat import PromptSet
from lora_studio.core.export import size_text
from lora_studio.gui import workers


@pytest.fixture(autouse=True)
def _isolated_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("LORA_STUDIO_SETTINGS", str(tmp_path / "settings.ini"))


@pytest.fixture(scope="module")
def tiny_adapter(tiny_model_dir, tmp_path_factory) -> Path:
    """A random (non-zero) LoRA adapter for the tiny model, made with peft directly."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    folder = tmp_path_factory.mktemp("adapter") / "my-adapter"
    get_peft_model(model, lora).save_pretrained(folder)
    return folder


def make_page(qtbot, name: str, tiny_model_dir: Path, tmp_path: Path):
    import importlib

    from lora_studio.gui.run_controller import RunController
    from lora_studio.gui.state import AppState

    state = AppState(tiny_config(tiny_model_dir, write_chat(tmp_path / "chat.jsonl"), tmp_path / "runs"))
    page = importlib.import_module(f"lora_studio.gui.pages.{name}").PAGE(state, RunController(state))
    qtbot.addWidget(page)
    page.resize(1200, 800)
    page.show()
    return page


def wait_workers(qtbot) -> None:
    qtbot.waitUntil(lambda: workers.live_count() == 0, timeout=60_000)


def send(qtbot, page, text: str) -> None:
    page.prompt.setPlainText(text)
    page.send()
    wait_answered(qtbot, page)  # loads first if needed


def test_a_side_stopped_before_its_turn_says_stopped_not_no_answer(qtbot, tiny_model_dir, tmp_path):
    """Side by side, Stop during the base model's answer left the fine-tuned pane with "(no text) /
    no answer" (#24)."""
    import threading
    from types import SimpleNamespace

    from lora_studio.gui.widgets.chat_view import Turn

    page = make_page(qtbot, "chat", tiny_model_dir, tmp_path)
    turn = Turn("assistant", "", pending=True)
    page.views["tuned"].turns.append(turn)
    page.pending = {"tuned": turn}
    cancel = threading.Event()
    cancel.set()
    page.worker = SimpleNamespace(cancel=cancel)  # the answering worker, asked to stop
    page._answers_done()
    assert turn.stats == "stopped before it answered" and "(stopped)" in page.views["tuned"].toHtml()


def test_a_run_finished_while_chatting_is_chosen_and_answers_the_next_message(
    qtbot, tiny_model_dir, tmp_path, monkeypatch
):
    """After a run finished, Chat stayed on the old model (#24); now the new run is chosen, the page
    says so, and the next message loads it — what the picker shows is what answers."""
    from lora_studio.core.runs import RunFolder

    page = make_page(qtbot, "chat", tiny_model_dir, tmp_path)
    page.refresh_sources()
    page.chat, page.loaded = object(), page.picker.choice()  # a model loaded a while ago
    assert page._loaded_or_load(lambda: None)
    run = RunFolder.create(page.state.config, Path(page.state.config.output.runs_dir))
    run.adapter_dir.mkdir()
    (run.adapter_dir / "adapter_config.json").write_text("{}")
    page.refresh_sources()  # what a finished run triggers (run state change)
    assert page.picker.choice() == ("run", str(run.path))
    assert "A run just finished" in page.model_status.text()
    loads = []
    monkeypatch.setattr(page, "load", loads.append)
    assert not page._loaded_or_load(lambda: None) and loads == [("run", str(run.path))]


def test_chat_streams_an_answer_then_stops_and_reports_errors(qtbot, tiny_model_dir, tmp_path):
    page = make_page(qtbot, "chat", tiny_model_dir, tmp_path)
    page.max_tokens.setValue(12)
    page.greedy.setChecked(True)
    page.prompt.setPlainText("")
    page.send()
    assert "empty" in page.messages.message() and "type a question" in page.messages.message()

    pieces = []
    page.prompt.setPlainText("What is your name?")
    page.send()
    assert page.model_status.text() == "Loading…" and not page.send_button.isEnabled()
    qtbot.waitUntil(lambda: page.worker is not None, timeout=60_000)
    page.worker.piece.connect(lambda side, text: pieces.append((side, text)))
    qtbot.waitUntil(lambda: page.worker is None, timeout=60_000)
    assert "Loaded:" in page.model_status.text() and pieces and {s for s, _ in pieces} == {"main"}
    turns = page.views["main"].turns
    assert [t.role for t in turns] == ["user", "assistant"] and not turns[1].pending
    assert "tokens/s" in turns[1].stats and "first token" in turns[1].stats
    assert turns[1].text == "".join(t for _, t in pieces).strip()
    assert [m["role"] for m in page.history["main"]] == ["user", "assistant"]

    # Stop: cancel as soon as the first piece arrives; the answer ends early and is marked stopped
    page.max_tokens.setValue(400)
    page.greedy.setChecked(False)
    page.prompt.setPlainText("Tell me a long story.")
    page.send()
    qtbot.waitUntil(lambda: page.worker is not None, timeout=10_000)
    with qtbot.waitSignal(page.worker.piece, timeout=30_000):
        pass
    page.stop()
    qtbot.waitUntil(lambda: page.worker is None, timeout=30_000)
    last = page.views["main"].turns[-1]
    assert last.stats.startswith("stopped") and int(last.stats.split("stopped · ")[1].split()[0]) < 400
    page.clear()
    assert page.views["main"].turns == [] and page.history["main"] == []
    wait_workers(qtbot)


def test_chat_side_by_side_with_an_adapter_and_a_bad_adapter_folder(
    qtbot, tiny_model_dir, tiny_adapter, tmp_path
):
    page = make_page(qtbot, "chat", tiny_model_dir, tmp_path)
    page.max_tokens.setValue(8)
    page.greedy.setChecked(True)
    bad = tmp_path / "not-an-adapter"
    bad.mkdir()
    page.picker.select("folder", str(bad))
    qtbot.waitUntil(lambda: not page.loading, timeout=60_000)
    assert "adapter_config.json" in page.messages.message() and page.chat is None

    page.picker.select("folder", str(tiny_adapter))
    qtbot.waitUntil(lambda: page.chat is not None, timeout=60_000)
    assert page.chat.has_adapter and "adapter loaded" in page.model_status.text()
    page.side_by_side.setChecked(True)
    send(qtbot, page, "Say hello.")
    base, tuned = page.views["base"].turns, page.views["tuned"].turns
    assert len(base) == len(tuned) == 2 and base[1].stats and tuned[1].stats
    assert base[1].text != tuned[1].text  # the adapter changes the answer
    assert not page.views["main"].isVisible() and page.views["tuned"].isVisible()
    assert page.messages.message() == ""
    wait_workers(qtbot)


def test_export_page_exports_an_adapter_and_shows_verification(qtbot, tiny_model_dir, tiny_adapter, tmp_path):
    page = make_page(qtbot, "export", tiny_model_dir, tmp_path)
    out = tmp_path / "exported"
    page.picker.select("folder", str(tiny_adapter))
    page.out_dir.setText(str(out))
    for fmt, box in page.format_boxes.items():
        box.setChecked(fmt == "adapter")
    qtbot.waitUntil(lambda: page.plan is not None and not page.task.busy, timeout=60_000)
    assert "adapter" in page.plan_text.text() and "disk" in page.plan_text.text()
    seen = []
    page.start()
    page.worker.progress.connect(lambda e: seen.append((e.stage, page.progress.value())))
    qtbot.waitUntil(lambda: page.report is not None, timeout=60_000)
    # never full while work remains: it stood at 100% through the last verification (#24)
    assert seen and all(value < page.progress.maximum() for _, value in seen), seen
    assert any(stage == "verify" for stage, _ in seen)
    wait_workers(qtbot)
    assert page.report.status == "completed" and page.report.verified is True
    row = page.results.topLevelItem(0)
    assert row.text(0) == "adapter" and row.text(1) == "adapter/" and row.text(3) == "passed"
    # which reader reloaded it, in its own column (for a GGUF: llama.cpp, or transformers' loader)
    assert row.text(4) == page.report.results[0].verification.method and "peft" in row.text(4)
    assert (out / "adapter" / "adapter_config.json").is_file()
    assert page.open_button.isEnabled() and page.progress.value() == page.progress.maximum()
    assert page.messages.message() == ""
    # coming back to the page after an export keeps its result: no re-plan that "fails" on the files
    page.page_shown()
    qtbot.wait(500)
    wait_workers(qtbot)
    assert "✓ Exported" in page.plan_text.text() and page.messages.message() == ""
    # a plan refused because the files are there is news, not an error, and says what to do
    page.dtype.setCurrentIndex(1)  # any change re-plans
    qtbot.waitUntil(lambda: "already exist" in page.messages.message(), timeout=60_000)
    assert page.messages.kind == "info" and "tick Overwrite" in page.messages.message()


def test_export_page_sizes_every_gguf_type_and_the_modelfile_uses_the_chosen_one(
    qtbot, tiny_model_dir, tiny_adapter, tmp_path
):
    """Each GGUF type shows its size on disk and memory to run once planned; Q4_K_M is ticked by
    default; "Modelfile uses" puts its type first, which is the GGUF the plan's Modelfile names."""
    from lora_studio.core.export import QUANTS

    page = make_page(qtbot, "export", tiny_model_dir, tmp_path)
    out = tmp_path / "exported"
    (out / "adapter").mkdir(parents=True)  # an earlier export: the plan refuses, the sizes still show
    page.picker.select("folder", str(tiny_adapter))
    page.out_dir.setText(str(out))
    qtbot.waitUntil(lambda: "already exist" in page.messages.message(), timeout=60_000)
    types = page.gguf_types
    assert page.plan is None and "on disk" in types.sizes["q4_k_m"].text()
    page.overwrite.setChecked(True)
    qtbot.waitUntil(lambda: page.plan is not None and not page.task.busy, timeout=60_000)
    assert types.checked() == ["q4_k_m"] and page.selected_quants() == ["q4_k_m"]
    assert not types.isEnabled()  # adapter only: the GGUF types do not apply
    for quant in QUANTS:
        text = types.sizes[quant].text()
        assert " on disk · about " in text and "to run (4k context)" in text, (quant, text)
        assert types.boxes[quant].text() == quant.upper() and types.boxes[quant].toolTip()
    choices = {c.quant: c for c in page.plan.gguf_choices}
    assert page.gguf_types.sizes["f16"].text().startswith(size_text(choices["f16"].file_bytes))

    for fmt, box in page.format_boxes.items():
        box.setChecked(fmt in ("gguf", "modelfile"))
    types.boxes["q8_0"].setChecked(True)
    assert types.isEnabled() and types.modelfile_row.isVisibleTo(page)
    assert types.modelfile_quant.currentData() == "q4_k_m"  # the first ticked, in QUANTS order
    types.modelfile_quant.setCurrentIndex(types.modelfile_quant.findData("q8_0"))
    qtbot.waitUntil(lambda: page.plan is not None and not page.task.busy, timeout=60_000)
    assert page.plan.quants == ["q8_0", "q4_k_m"]
    name = page.plan.source.name
    assert f"(runs {name}-q8_0.gguf)" in page.plan_text.text()

    types.boxes["q4_k_m"].setChecked(False)  # one type left: nothing to choose
    qtbot.waitUntil(lambda: page.plan is not None and not page.task.busy, timeout=60_000)
    assert not types.modelfile_row.isVisibleTo(page) and page.plan.quants == ["q8_0"]
    types.boxes["q8_0"].setChecked(False)
    assert page.plan is None and page.plan_text.text() == "Choose at least one GGUF type."


def test_prompt_set_saved_run_on_base_and_tuned_and_exported(qtbot, tiny_model_dir, tiny_adapter, tmp_path):
    from lora_studio.core.chat import Sampling
    from lora_studio.gui.widgets.prompt_set_editor import NEW, entry

    page = make_page(qtbot, "chat", tiny_model_dir, tmp_path)
    editor, table = page.set_editor, page.set_table
    editor.confirm = lambda _title, _text: True
    page.max_tokens.setValue(6)
    assert not page.greedy.isChecked()
    page.tabs.setCurrentIndex(1)
    assert page.greedy.isChecked()  # prompt sets are greedy by default: the table is reproducible
    assert not page.system.isVisible() and not page.side_by_side.isVisible()
    assert editor.prompt_set().prompts == ["What is your name?"]  # the settings' sample prompts
    assert table.table.rowCount() == 1

    editor.choose(entry(NEW))
    editor.name.setText("smoke")
    for prompt in ("What is your name?", "Say hello."):
        editor.new_prompt.setText(prompt)
        editor.add_prompt()
    assert "not saved" in editor.count.text()
    saved = editor.save()
    assert saved is not None and saved.is_file() and editor.chooser.currentText() == "smoke (2 prompts)"
    assert [table.table.item(r, 0).text() for r in range(2)] == ["What is your name?", "Say hello."]

    page.picker.select("folder", str(tiny_adapter))
    qtbot.waitUntil(lambda: page.chat is not None, timeout=60_000)
    assert editor.prompt_set().name == "smoke"  # choosing a model does not replace a saved set
    table.run_button.click()
    assert table.running and not table.run_button.isEnabled() and not editor.list.isEnabled()
    qtbot.waitUntil(lambda: not table.running, timeout=120_000)
    result = table.result
    assert page.messages.message() == "" and result is not None and not result.stopped
    assert [table.table.horizontalHeaderItem(c).text() for c in range(3)] == [
        "Prompt",
        "Base model",
        "Fine-tuned",
    ]
    sampling = Sampling(greedy=True, max_new_tokens=6)
    for row, prompt in enumerate(["What is your name?", "Say hello."]):
        messages = [{"role": "user", "content": prompt}]
        for column, use_adapter in ((1, False), (2, True)):
            expected = page.chat.answer(messages, sampling, use_adapter=use_adapter).text
            assert result.text(row, column - 1) == expected
            assert table.table.item(row, column).text() == (expected or "(empty answer)")
            assert "tokens/s" in table.table.item(row, column).toolTip()
    assert table.progress.value() == table.progress.maximum() == 4 and table.status.text().startswith("Done")
    assert editor.list.isEnabled() and table.export_button.isEnabled()

    written = table.export_markdown(str(tmp_path / "report" / "smoke.md"))
    text = (tmp_path / "report" / "smoke.md").read_text()
    assert written and "## Prompt set: smoke" in text and str(tiny_adapter) in text and "greedy" in text
    assert "| # | Prompt | Base model | Fine-tuned |" in text
    assert "| 2 | Say hello. |" in text and text == result.to_markdown()
    assert any(result.text(r, 0) != result.text(r, 1) for r in range(2))  # the adapter was really on
    assert "Exported to" in table.status.text()
    wait_workers(qtbot)


def test_prompt_set_errors_load_on_run_and_stop(qtbot, tiny_model_dir, tmp_path):
    page = make_page(qtbot, "chat", tiny_model_dir, tmp_path)
    editor, table = page.set_editor, page.set_table
    editor.confirm = lambda _title, _text: True
    page.tabs.setCurrentIndex(1)
    (tmp_path / "bad.jsonl").write_text('"fine"\n{"answer": "no prompt"}\n')
    assert not editor.import_file(str(tmp_path / "bad.jsonl"))
    assert "bad.jsonl, line 2: no prompt found" in page.messages.message()
    editor.remove_selected()
    editor.list.selectAll()
    editor.remove_selected()
    table.run_button.click()
    assert "has no prompts" in page.messages.message() and page.chat is None and not table.running

    (tmp_path / "long.txt").write_text("Tell me a long story.\nAnd another one.\n")
    assert editor.import_file(str(tmp_path / "long.txt")) and editor.prompt_set().name == "long"
    page.max_tokens.setValue(300)
    table.run_button.click()  # nothing loaded yet: the base model loads, then the set runs
    qtbot.waitUntil(lambda: table.running, timeout=60_000)
    assert [table.table.horizontalHeaderItem(c).text() for c in range(2)] == ["Prompt", "Base model"]
    with qtbot.waitSignal(table.worker.piece, timeout=30_000):
        pass
    page.stop()
    qtbot.waitUntil(lambda: not table.running, timeout=60_000)
    result = table.result
    assert result.stopped and result.done == 1 and result.answers[1] == [None]
    assert result.answers[0][0].new_tokens < 300 and table.table.item(0, 1).text().endswith("[stopped]")
    assert table.table.item(1, 1).text() == "" and table.status.text().startswith("Stopped after 1 of 2")
    assert table.export_button.isEnabled() and page.send_button.isEnabled()
    wait_workers(qtbot)


def test_prompt_set_generation_failure_keeps_the_answers_so_far(qtbot, tiny_model_dir, tmp_path, monkeypatch):
    page = make_page(qtbot, "chat", tiny_model_dir, tmp_path)
    table = page.set_table
    page.max_tokens.setValue(4)
    page.tabs.setCurrentIndex(1)
    page.set_editor.show_set(PromptSet("three", ["One?", "Two?", "Three?"]))
    monkeypatch.setenv("LORA_STUDIO_FAULTS", "generate_error@2")  # the second answer fails in generate
    table.run_button.click()
    qtbot.waitUntil(lambda: table.running, timeout=60_000)
    qtbot.waitUntil(lambda: not table.running, timeout=60_000)
    assert "Generation failed" in page.messages.message()
    assert table.result is None and not table.export_button.isEnabled()
    assert table.table.item(0, 1).text() != "" and table.table.item(1, 1).text() == ""
    assert table.status.text().startswith("Not finished") and table.run_button.isEnabled()
    monkeypatch.delenv("LORA_STUDIO_FAULTS")
    table.run_button.click()  # the same loaded model answers the whole set next time
    qtbot.waitUntil(lambda: not table.running, timeout=60_000)
    assert table.result is not None and table.result.done == 3
    wait_workers(qtbot)
