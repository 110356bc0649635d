"""Chat page: talk to the base model, a run's adapter or checkpoint, or both side by side.

Loading happens in a background worker ("Loading…" meanwhile); answers stream from a worker as
queued ``piece`` signals which the page gathers and draws a few times a second. Stop sets the
generation's cancel event (the core stops within a token). Side by side answers with the adapter
switched off (left) and on (right), one after the other on the same loaded model. The "Prompt set"
tab runs a saved list of prompts through both (greedy by default) into a table that exports as
Markdown. While the Train page's run is paused its model can be used directly ("current paused
run"), through its lock.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import Qt, QTimer, Signal, Slot
from PySide6.QtWidgets import (
    QCheckBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSplitter,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from lora_studio.core.chat import ChatError, PromptSet, PromptSetError, Reply, Sampling, sample_prompt_set
from lora_studio.core.errors import LoraStudioError
from lora_studio.core.train import SharedModel
from lora_studio.gui import workers
from lora_studio.gui.pages import Page
from lora_studio.gui.widgets.chat_view import PromptEdit, SamplingPanel, Transcript, Turn, reply_stats
from lora_studio.gui.widgets.forms import Card
from lora_studio.gui.widgets.prompt_set_editor import PromptSetEditor
from lora_studio.gui.widgets.prompt_set_table import PromptSetTable
from lora_studio.gui.widgets.sources import SourcePicker

FLUSH_MS = 50  # streamed pieces are drawn at most this often


def load_chat(kind: str, path: str, config: Any, shared: SharedModel) -> tuple[Any, str]:
    """(ChatModel, description) for a picker entry; runs in a worker."""
    from lora_studio.core.chat import ChatModel
    from lora_studio.core.config import RunConfig
    from lora_studio.gui.jobs import ensure_libraries

    ensure_libraries()
    if kind == "paused":
        if not shared.loaded:
            raise ChatError("The training run is not paused any more", hint="pause it again, then choose it")
        return ChatModel(shared.model, shared.tokenizer, lock=shared.lock), "the paused run's model"
    model = config.model
    if kind == "base":
        chat = ChatModel.load(
            model.source, quantization=model.quantization, trust_remote_code=model.trust_remote_code
        )
        return chat, f"{model.source} (no adapter)"
    from lora_studio.core.export import resolve_source

    source = resolve_source(path)
    if source.run_dir is not None:
        model = RunConfig.load(source.run_dir / "config.toml").model
    chat = ChatModel.load(
        source.base_model,
        adapter=source.adapter_dir,
        quantization=model.quantization,
        trust_remote_code=source.trust_remote_code,
    )
    return chat, f"{source.base_model} + adapter {source.adapter_dir}"


class ChatWorker(workers.Worker):
    """Answers one message on one or two sides; pieces and replies are queued signals."""

    piece = Signal(str, str)  # (side, text)
    answered = Signal(str, object)  # (side, Reply)

    def __init__(self, chat: Any, jobs: list[tuple[str, list[dict[str, str]], bool]], sampling: Sampling):
        super().__init__(lambda: self._answer_all())
        self.chat, self.jobs, self.sampling = chat, jobs, sampling
        self.cancel = threading.Event()

    def _answer_all(self) -> None:
        for side, messages, use_adapter in self.jobs:
            if self.cancel.is_set():
                return
            reply = self.chat.answer(
                messages,
                self.sampling,
                use_adapter=use_adapter,
                cancel=self.cancel,
                on_piece=lambda text, side=side: self.send(self.piece, side, text),
            )
            self.send(self.answered, side, reply)


class ChatPage(Page):
    key = "chat"
    title = "Chat"
    summary = (
        "Talk to the base model or your fine-tune, put both side by side on one question, "
        "or run a whole prompt set through both."
    )
    icon = "chat"

    def __init__(self, state: Any, runs: Any, parent: QWidget | None = None) -> None:
        super().__init__(state, runs, parent)
        self.chat: Any = None
        self.loaded: tuple[str, str] | None = None
        self.loading = False
        self.worker: ChatWorker | None = None
        self.history: dict[str, list[dict[str, str]]] = {"main": [], "base": [], "tuned": []}
        self.pending: dict[str, Turn] = {}
        self._buffer: dict[str, str] = {}
        self._after_load: Callable[[], None] | None = None  # what Send or Run asked for, once loaded
        self._greedy = {"conversation": False, "prompt set": True}  # the table is reproducible by default
        self._flush_timer = QTimer(self)
        self._flush_timer.setSingleShot(True)
        self._flush_timer.setInterval(FLUSH_MS)
        self._flush_timer.timeout.connect(self._flush)
        self.content.addWidget(self._model_card())
        self.content.addWidget(self._modes(), 1)
        state.run_state_changed.connect(self._run_state)
        self.refresh_sources()
        self._update_buttons()

    # -- layout -----------------------------------------------------------------------------------

    def _model_card(self) -> Card:
        card = Card("Model")
        self.picker = SourcePicker()
        self.picker.chosen.connect(self.load)
        self.picker.chosen.connect(lambda _choice: self.set_editor.samples_changed())
        self.model_status = QLabel("Nothing loaded yet: the model loads when you send the first message.")
        self.model_status.setObjectName("muted")
        self.model_status.setWordWrap(True)
        row = QHBoxLayout()
        row.addWidget(self.picker, 1)
        self.side_by_side = QCheckBox("Side by side: base | fine-tuned")
        self.side_by_side.setToolTip(
            "Answer each message twice on the same loaded model: adapter off, then on."
        )
        self.side_by_side.toggled.connect(self._mode_changed)
        row.addWidget(self.side_by_side)
        card.body.addLayout(row)
        card.add(self.model_status)
        self.system = QLineEdit()
        self.system.setPlaceholderText("System prompt (optional)")
        card.add(self.system)
        self.sampling_panel = card.add(SamplingPanel())
        panel = self.sampling_panel
        self.temperature, self.top_p, self.top_k = panel.temperature, panel.top_p, panel.top_k
        self.repetition, self.max_tokens, self.greedy = panel.repetition, panel.max_tokens, panel.greedy
        return card

    def _conversation(self) -> QSplitter:
        self.views = {
            "main": Transcript(),
            "base": Transcript("Base model"),
            "tuned": Transcript("Fine-tuned"),
        }
        self.splitter = QSplitter(Qt.Orientation.Horizontal)
        self.splitter.setObjectName("chatSplitter")
        for view in self.views.values():
            self.splitter.addWidget(view)
        self._mode_changed(False)
        return self.splitter

    def _modes(self) -> QTabWidget:
        """Conversation (one message at a time) and Prompt set (a list of prompts into a table)."""
        conversation = QWidget()
        column = QVBoxLayout(conversation)
        column.setContentsMargins(0, 8, 0, 0)
        column.addWidget(self._conversation(), 1)
        column.addLayout(self._input_row())
        self.set_editor = PromptSetEditor()
        self.set_editor.samples = self._sample_prompts
        self.set_table = PromptSetTable()
        self.set_editor.changed.connect(lambda: self.set_table.show_prompts(self.set_editor.prompt_set()))
        self.set_editor.failed.connect(self.messages.show_error)
        self.set_table.failed.connect(self.messages.show_error)
        self.set_table.run_requested.connect(self.run_prompt_set)
        self.set_table.busy_changed.connect(
            lambda busy: (self.set_editor.set_busy(busy), self._update_buttons())
        )
        self.set_editor.samples_changed()  # the samples provider is set only now
        prompt_sets = QSplitter(Qt.Orientation.Horizontal)
        prompt_sets.addWidget(self.set_editor)
        prompt_sets.addWidget(self.set_table)
        prompt_sets.setStretchFactor(1, 2)
        prompt_sets.setSizes([380, 760])
        self.tabs = QTabWidget()
        self.tabs.setDocumentMode(True)
        self.tabs.addTab(conversation, "Conversation")
        self.tabs.addTab(prompt_sets, "Prompt set")
        self.tabs.currentChanged.connect(self._tab_changed)
        return self.tabs

    def _input_row(self) -> QHBoxLayout:
        self.prompt = PromptEdit()
        self.prompt.setMaximumHeight(90)
        self.prompt.submitted.connect(self.send)
        self.send_button = QPushButton("Send")
        self.send_button.setObjectName("primary")
        self.send_button.clicked.connect(self.send)
        self.stop_button = QPushButton("Stop")
        self.stop_button.setToolTip("Stop the answer now (what was written so far is kept)")
        self.stop_button.clicked.connect(self.stop)
        self.clear_button = QPushButton("Clear")
        self.clear_button.setToolTip("Start a new conversation")
        self.clear_button.clicked.connect(self.clear)
        buttons = QVBoxLayout()
        for button in (self.send_button, self.stop_button, self.clear_button):
            buttons.addWidget(button)
        row = QHBoxLayout()
        row.addWidget(self.prompt, 1)
        row.addLayout(buttons)
        return row

    # -- model ------------------------------------------------------------------------------------

    def page_shown(self) -> None:
        self.refresh_sources()

    def refresh_sources(self) -> None:
        before = self.picker.choice()
        self.picker.refresh(self.state.config.output.runs_dir, paused=self.state.run_state == "paused")
        after = self.picker.choice()
        if self.chat is not None and after != before and after != self.loaded:
            # a run just finished and the picker chose it: say so, and answer with it from now on
            self.model_status.setText(
                "A run just finished: its adapter is chosen and loads with your next message."
            )

    def load(self, choice: tuple[str, str]) -> None:
        """Load a picker entry in a worker; the previous model is released first."""
        if self.generating or self.loading:
            return
        self.chat, self.loaded, self.loading = None, None, True
        self.state.set_chat_model("")
        kind, path = choice
        self.model_status.setText("Loading…")
        self.messages.clear()
        self._update_buttons()
        config, shared = self.state.config, self.state.shared_model.snapshot()
        workers.start(
            workers.Worker(load_chat, kind, path, config, shared),
            on_returned=lambda result, choice=choice: self._loaded(choice, result),
            on_errored=self._load_failed,
        )

    def _loaded(self, choice: tuple[str, str], result: tuple[Any, str]) -> None:
        self.chat, description = result
        self.loaded, self.loading = choice, False
        adapter = "adapter loaded" if self.chat.has_adapter else "no adapter"
        self.model_status.setText(f"Loaded: {description} · {adapter}")
        self.state.set_chat_model(description)
        self.set_table.set_columns(["Base model", "Fine-tuned"] if self.chat.has_adapter else ["Base model"])
        if not self.chat.has_adapter and self.side_by_side.isChecked():
            self.side_by_side.setChecked(False)
        self._update_buttons()
        then, self._after_load = self._after_load, None
        if then is not None:
            then()

    def _load_failed(self, error: Exception) -> None:
        self.loading, self._after_load = False, None
        self.model_status.setText("Not loaded: choose another model or adapter.")
        self.messages.show_error(error)
        self._update_buttons()

    def _run_state(self, state: str, _detail: str) -> None:
        self.refresh_sources()
        if self.loaded and self.loaded[0] == "paused" and state != "paused":
            self.stop()
            self.chat, self.loaded = None, None
            self.state.set_chat_model("")
            self.model_status.setText("The training run continued: its model is no longer available here.")
            self._update_buttons()

    # -- conversation -----------------------------------------------------------------------------

    @property
    def generating(self) -> bool:
        return self.worker is not None or self.set_table.running

    def sides(self) -> list[tuple[str, bool]]:
        if self.side_by_side.isChecked():
            return [("base", False), ("tuned", True)]
        return [("main", True)]

    def sampling(self) -> Sampling:
        return self.sampling_panel.sampling()

    def send(self) -> None:
        if self.generating or self.loading:
            return
        text = self.prompt.toPlainText().strip()
        try:
            if not text:
                raise ChatError("The message is empty", hint="type a question first")
            sampling = self.sampling()
            sampling.check()
            if self.side_by_side.isChecked() and self.chat is not None and not self.chat.has_adapter:
                raise ChatError(
                    "Nothing to compare: no adapter is loaded", hint="choose a run or adapter folder"
                )
        except ChatError as exc:
            self.messages.show_error(exc)
            return
        if not self._loaded_or_load(self.send):
            return
        self.messages.clear()
        self.prompt.clear()
        system = self.system.text().strip()
        jobs = []
        for side, use_adapter in self.sides():
            view = self.views[side]
            view.add("user", text)
            self.pending[side] = view.add("assistant", "", pending=True)
            view.render()
            self.history[side].append({"role": "user", "content": text})
            prefix = [{"role": "system", "content": system}] if system else []
            jobs.append((side, prefix + list(self.history[side]), use_adapter))
        worker = ChatWorker(self.chat, jobs, sampling)
        worker.piece.connect(self._on_piece)
        worker.answered.connect(self._on_answered)
        self.worker = worker
        self._update_buttons()
        workers.start(worker, on_errored=self._answer_failed, on_finished=self._answers_done)

    def _loaded_or_load(self, then: Callable[[], None]) -> bool:
        """True when the chosen model is loaded; else load it and call ``then`` once it is."""
        if self.chat is not None and self.loaded == self.picker.choice():
            return True
        self._after_load = then
        self.load(self.picker.choice())
        return False

    def stop(self) -> None:
        if self.worker is not None:
            self.worker.cancel.set()
        self.set_table.stop()

    # -- prompt set -------------------------------------------------------------------------------

    def run_prompt_set(self) -> None:
        """Answer the editor's prompts with base and fine-tuned (loading the model first if needed)."""
        if self.generating or self.loading:
            return
        prompt_set = self.set_editor.prompt_set()
        try:
            prompt_set.check()
            sampling = self.sampling()
            sampling.check()
        except LoraStudioError as exc:
            self.messages.show_error(exc)
            return
        if not self._loaded_or_load(self.run_prompt_set):
            return
        self.messages.clear()
        model = (
            self.state.config.model.source if self.loaded and self.loaded[0] in ("base", "paused") else None
        )
        self.set_table.start(self.chat, prompt_set, sampling, model_name=model)

    def _sample_prompts(self) -> PromptSet:
        """The chosen run's sample prompts; the current settings' for the base model or a loose adapter."""
        kind, path = self.picker.choice()
        if kind in ("run", "checkpoint", "folder"):
            try:
                return sample_prompt_set(path)
            except PromptSetError:
                pass  # an adapter trained elsewhere: no run, so no sample prompts of its own
        return sample_prompt_set(self.state.config, "Sample prompts (current settings)")

    def _tab_changed(self, index: int) -> None:
        """The system prompt and side by side belong to conversations; greedy is remembered per tab."""
        prompt_sets = index == 1
        self._greedy[self.tabs.tabText(1 - index).lower()] = self.greedy.isChecked()
        self.greedy.setChecked(self._greedy[self.tabs.tabText(index).lower()])
        self.system.setVisible(not prompt_sets)
        self.side_by_side.setVisible(not prompt_sets)

    def clear(self) -> None:
        if self.generating:
            return
        for side, view in self.views.items():
            view.clear_turns()
            self.history[side].clear()
        self.messages.clear()

    @Slot(str, str)
    def _on_piece(self, side: str, text: str) -> None:
        self._buffer[side] = self._buffer.get(side, "") + text
        if not self._flush_timer.isActive():
            self._flush_timer.start()

    def _flush(self) -> None:
        for side, text in self._buffer.items():
            if side in self.pending:
                self.pending[side].text += text
                self.views[side].render()
        self._buffer.clear()

    @Slot(str, object)
    def _on_answered(self, side: str, reply: Reply) -> None:
        self._flush()
        turn = self.pending.pop(side, None)
        if turn is not None:
            turn.text, turn.pending, turn.stats = reply.text, False, reply_stats(reply)
            self.views[side].render()
        self.history[side].append({"role": "assistant", "content": reply.text})

    def _answer_failed(self, error: Exception) -> None:
        self.messages.show_error(error)

    def _answers_done(self) -> None:
        self._flush()
        stopped = self.worker is not None and self.worker.cancel.is_set()
        for side, turn in list(self.pending.items()):  # not answered: failed, or stopped before its turn
            turn.pending = False
            turn.stats = "stopped before it answered" if stopped else "no answer"
            if self.history[side] and self.history[side][-1]["role"] == "user":
                self.history[side].pop()
            self.views[side].render()
        self.pending.clear()
        self.worker = None
        self._update_buttons()

    def _mode_changed(self, side_by_side: bool) -> None:
        self.views["main"].setVisible(not side_by_side)
        self.views["base"].setVisible(side_by_side)
        self.views["tuned"].setVisible(side_by_side)

    def _update_buttons(self) -> None:
        busy = self.generating or self.loading
        self.send_button.setEnabled(not busy)
        self.stop_button.setEnabled(self.generating)
        self.clear_button.setEnabled(not busy)
        self.picker.setEnabled(not busy)
        self.side_by_side.setEnabled(not busy)
        self.set_table.run_button.setEnabled(not busy)

    def apply_theme(self, theme: Any) -> None:
        for view in self.views.values():
            view.apply_theme(theme)


PAGE = ChatPage
