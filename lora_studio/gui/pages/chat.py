"""Chat page: talk to the base model, a run's adapter or checkpoint, or both side by side.

Loading happens in a background worker ("Loading…" meanwhile); answers stream from a worker as
queued ``piece`` signals which the page gathers and draws a few times a second. Stop sets the
generation's cancel event (the core stops within a token). Side by side answers with the adapter
switched off (left) and on (right), one after the other on the same loaded model. While the Train
page's run is paused its model can be used directly ("current paused run"), through its lock.
"""

from __future__ import annotations

import threading
from typing import Any

from PySide6.QtCore import Qt, QTimer, Signal, Slot
from PySide6.QtWidgets import (
    QCheckBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from lora_studio.core.chat import ChatError, Reply, Sampling
from lora_studio.gui import workers
from lora_studio.gui.pages import Page
from lora_studio.gui.widgets.chat_view import PromptEdit, Transcript, Turn
from lora_studio.gui.widgets.forms import Card, Foldable
from lora_studio.gui.widgets.sources import SourcePicker

FLUSH_MS = 50  # streamed pieces are drawn at most this often


def load_chat(kind: str, path: str, config: Any, shared: dict[str, Any]) -> tuple[Any, str]:
    """(ChatModel, description) for a picker entry; runs in a worker."""
    from lora_studio.core.chat import ChatModel
    from lora_studio.core.config import RunConfig
    from lora_studio.gui.jobs import ensure_libraries

    ensure_libraries()
    if kind == "paused":
        if not shared.get("model"):
            raise ChatError("The training run is not paused any more", hint="pause it again, then choose it")
        return ChatModel(shared["model"], shared["tokenizer"], lock=shared["lock"]), "the paused run's model"
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
                on_piece=lambda text, side=side: self.piece.emit(side, text),
            )
            self.answered.emit(side, reply)


def reply_stats(reply: Reply) -> str:
    first = f"first token {reply.first_token_s:.2f} s" if reply.first_token_s is not None else "no tokens"
    parts = [f"{reply.new_tokens} tokens", f"{reply.tokens_per_s:.1f} tokens/s", first]
    if reply.stopped:
        parts.insert(0, "stopped")
    return " · ".join(parts + reply.notes)


class ChatPage(Page):
    key = "chat"
    title = "Chat"
    summary = "Talk to the base model or your fine-tune, or put both side by side on the same question."
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
        self._send_after_load = False
        self._flush_timer = QTimer(self)
        self._flush_timer.setSingleShot(True)
        self._flush_timer.setInterval(FLUSH_MS)
        self._flush_timer.timeout.connect(self._flush)
        self.content.addWidget(self._model_card())
        self.content.addWidget(self._conversation(), 1)
        self.content.addLayout(self._input_row())
        state.run_state_changed.connect(self._run_state)
        self.refresh_sources()
        self._update_buttons()

    # -- layout -----------------------------------------------------------------------------------

    def _model_card(self) -> Card:
        card = Card("Model")
        self.picker = SourcePicker()
        self.picker.chosen.connect(self.load)
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
        card.add(self._sampling_panel())
        return card

    def _sampling_panel(self) -> Foldable:
        fold = Foldable("Sampling: temperature, top-p, top-k, repetition penalty, length")
        form = QFormLayout(fold.content)
        form.setContentsMargins(0, 0, 0, 0)
        defaults = Sampling()

        def number(value: float, low: float, high: float, step: float) -> QDoubleSpinBox:
            box = QDoubleSpinBox()
            box.setRange(low, high)
            box.setSingleStep(step)
            box.setDecimals(2)
            box.setValue(value)
            return box

        self.temperature = number(defaults.temperature, 0.01, 5.0, 0.05)
        self.top_p = number(defaults.top_p, 0.01, 1.0, 0.05)
        self.repetition = number(defaults.repetition_penalty, 0.5, 3.0, 0.05)
        self.top_k = QSpinBox()
        self.top_k.setRange(0, 10_000)
        self.top_k.setValue(defaults.top_k)
        self.max_tokens = QSpinBox()
        self.max_tokens.setRange(1, 32_768)
        self.max_tokens.setValue(defaults.max_new_tokens)
        self.greedy = QCheckBox("Greedy (always the most likely token: same answer every time)")
        for label, widget in [("Temperature", self.temperature), ("Top-p", self.top_p), ("Top-k", self.top_k),
                              ("Repetition penalty", self.repetition), ("Max new tokens", self.max_tokens),
                              ("", self.greedy)]:  # fmt: skip
            form.addRow(label, widget)
        return fold

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
        self.picker.refresh(self.state.config.output.runs_dir, paused=self.state.run_state == "paused")

    def load(self, choice: tuple[str, str]) -> None:
        """Load a picker entry in a worker; the previous model is released first."""
        if self.generating or self.loading:
            return
        self.chat, self.loaded, self.loading = None, None, True
        kind, path = choice
        self.model_status.setText("Loading…")
        self.messages.clear()
        self._update_buttons()
        config, shared = self.state.config, dict(self.state.shared_model)
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
        if not self.chat.has_adapter and self.side_by_side.isChecked():
            self.side_by_side.setChecked(False)
        self._update_buttons()
        if self._send_after_load:
            self._send_after_load = False
            self.send()

    def _load_failed(self, error: Exception) -> None:
        self.loading, self._send_after_load = False, False
        self.model_status.setText("Not loaded: choose another model or adapter.")
        self.messages.show_error(error)
        self._update_buttons()

    def _run_state(self, state: str, _detail: str) -> None:
        self.refresh_sources()
        if self.loaded and self.loaded[0] == "paused" and state != "paused":
            if self.worker is not None:
                self.worker.cancel.set()
            self.chat, self.loaded = None, None
            self.model_status.setText("The training run continued: its model is no longer available here.")
            self._update_buttons()

    # -- conversation -----------------------------------------------------------------------------

    @property
    def generating(self) -> bool:
        return self.worker is not None

    def sides(self) -> list[tuple[str, bool]]:
        if self.side_by_side.isChecked():
            return [("base", False), ("tuned", True)]
        return [("main", True)]

    def sampling(self) -> Sampling:
        return Sampling(
            temperature=self.temperature.value(),
            top_p=self.top_p.value(),
            top_k=self.top_k.value(),
            repetition_penalty=self.repetition.value(),
            max_new_tokens=self.max_tokens.value(),
            greedy=self.greedy.isChecked(),
        )

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
        if self.chat is None:
            self._send_after_load = True
            self.load(self.picker.choice())
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

    def stop(self) -> None:
        if self.worker is not None:
            self.worker.cancel.set()

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
        for side, turn in list(self.pending.items()):  # not answered: failed, or stopped before its turn
            turn.pending = False
            turn.stats = "no answer"
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

    def apply_theme(self, theme: Any) -> None:
        for view in self.views.values():
            view.apply_theme(theme)


PAGE = ChatPage
