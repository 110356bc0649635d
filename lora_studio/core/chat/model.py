"""Chat with a model, its fine-tuned adapter, or both side by side on one copy of the weights.

The base answer of a comparison comes from the same loaded model with the adapter switched off
(``disable_adapter()``), so comparing costs no second model in memory. Generation streams token
by token and stops within one token of a cancel request; it takes the model's lock so it can
share a model with a paused training run without touching its gradient state.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lora_studio.core.errors import LoraStudioError, OutOfMemoryError

END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "</s>", "<|endoftext|>")
FALLBACK_HINT = "the tokenizer has no chat template; the simple fallback template used in training is used"


class ChatError(LoraStudioError):
    """A chat request or adapter cannot be used."""


@dataclass(frozen=True)
class Sampling:
    """Generation settings. ``greedy`` ignores temperature/top-p/top-k (deterministic answers)."""

    temperature: float = 0.7
    top_p: float = 0.9
    top_k: int = 50
    repetition_penalty: float = 1.1
    max_new_tokens: int = 256
    greedy: bool = False

    def check(self) -> None:
        problems = []
        if not self.greedy and self.temperature <= 0:
            problems.append("temperature must be above 0 (or use greedy)")
        if not 0 < self.top_p <= 1:
            problems.append("top_p must be in (0, 1]")
        if self.top_k < 0:
            problems.append("top_k must not be negative")
        if self.repetition_penalty <= 0:
            problems.append("repetition_penalty must be above 0")
        if self.max_new_tokens < 1:
            problems.append("max_new_tokens must be at least 1")
        if problems:
            raise ChatError("Invalid sampling settings: " + "; ".join(problems))


@dataclass
class Reply:
    text: str
    new_tokens: int
    seconds: float
    first_token_s: float | None
    stopped: bool  # by the user
    dropped_turns: int = 0  # oldest turns left out to fit the context
    notes: list[str] = field(default_factory=list)

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "tokens_per_s": self.tokens_per_s}


def resolve_adapter(path: str | Path) -> Path:
    """A run folder (its final adapter, else its latest checkpoint), a checkpoint, or a PEFT folder."""
    folder = Path(path).expanduser()
    if not folder.exists():
        raise ChatError(f"{folder}: no such adapter or run folder")
    if (folder / "adapter_config.json").is_file():
        return folder
    if (folder / "adapter" / "adapter_config.json").is_file():
        return folder / "adapter"
    checkpoints = (
        sorted(
            (
                p
                for p in (folder / "checkpoints").glob("checkpoint-*")
                if (p / "adapter_config.json").is_file()
            ),
            key=lambda p: int(p.name.rsplit("-", 1)[-1]),
        )
        if (folder / "checkpoints").is_dir()
        else []
    )
    if checkpoints:
        return checkpoints[-1]
    raise ChatError(
        f"{folder}: no adapter_config.json here",
        hint="choose a run folder, one of its checkpoints, or a PEFT adapter folder",
    )


def check_adapter_fits(model: Any, adapter_dir: Path) -> None:
    """Every LoRA matrix must land on a layer of the right shape: a clear error, not a size-mismatch dump."""
    from safetensors import safe_open

    weights = adapter_dir / "adapter_model.safetensors"
    if not weights.is_file():
        raise ChatError(
            f"{adapter_dir}: adapter_model.safetensors is missing",
            hint="the adapter folder is incomplete; export or copy it again",
        )
    try:
        json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
        with safe_open(str(weights), framework="pt") as handle:
            shapes = {key: handle.get_slice(key).get_shape() for key in handle.keys()}  # noqa: SIM118
    except Exception as exc:
        raise ChatError(f"{adapter_dir}: corrupt adapter files ({exc})") from None
    modules = dict(model.named_modules())
    for key, shape in shapes.items():
        if ".lora_A" not in key and ".lora_B" not in key:
            continue
        module_name = key.split(".lora_")[0].removeprefix("base_model.model.")
        # a plain model names it "model.layers.0...", an already wrapped one "base_model.model.model..."
        target = modules.get(module_name) or modules.get(f"base_model.model.{module_name}")
        target = getattr(target, "base_layer", target)
        if target is None:
            raise ChatError(
                f"{adapter_dir}: adapter layer '{module_name}' does not exist in this model",
                hint="the adapter was trained on a different base model",
            )
        in_f = getattr(target, "in_features", None)
        out_f = getattr(target, "out_features", None)
        if ".lora_A" in key and in_f is not None and shape[-1] != in_f:
            raise ChatError(
                f"{adapter_dir}: adapter expects {shape[-1]} inputs at '{module_name}', the model has {in_f}",
                hint="the adapter was trained on a different base model",
            )
        if ".lora_B" in key and out_f is not None and shape[0] != out_f:
            raise ChatError(
                f"{adapter_dir}: adapter expects {shape[0]} outputs at '{module_name}', the model "
                f"has {out_f}",
                hint="the adapter was trained on a different base model",
            )


class ChatModel:
    """A loaded model (optionally with an adapter) that answers conversations."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        lock: threading.Lock | None = None,
        context_length: int | None = None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.lock = lock or threading.Lock()
        self.context_length = context_length or getattr(model.config, "max_position_embeddings", None) or 2048
        self.stop_ids = _stop_token_ids(tokenizer)
        self._generations = 0  # counted for the generate_error fault (tests only)
        #: what was loaded, in the user's words (``load``/``attach_adapter`` fill them): reports name them
        self.source: str | None = getattr(getattr(model, "config", None), "name_or_path", None) or None
        self.adapter_path: Path | None = None

    @classmethod
    def load(
        cls,
        source: str,
        *,
        adapter: str | Path | None = None,
        quantization: str = "none",
        dtype: str = "auto",
        double_quant: bool = False,
        trust_remote_code: bool = False,
    ) -> ChatModel:
        from lora_studio.core.models import load_model, quiet_library_defaults

        quiet_library_defaults()
        model, tokenizer = load_model(
            source, quantization, dtype, double_quant=double_quant, trust_remote_code=trust_remote_code
        )
        chat = cls(model, tokenizer)
        chat.source = source
        if adapter is not None:
            chat.attach_adapter(adapter)
        return chat

    @property
    def has_adapter(self) -> bool:
        return hasattr(self.model, "disable_adapter") and hasattr(self.model, "peft_config")

    def attach_adapter(self, adapter: str | Path) -> Path:
        from peft import PeftModel

        from lora_studio.core.models import model_construction

        folder = resolve_adapter(adapter)
        check_adapter_fits(self.model, folder)
        with self.lock, model_construction():
            if self.has_adapter:
                self.model.load_adapter(str(folder), adapter_name="loaded", is_trainable=False)
                self.model.set_adapter("loaded")
            else:
                self.model = PeftModel.from_pretrained(self.model, str(folder), is_trainable=False)
        self.adapter_path = folder
        return folder

    # -- prompts ----------------------------------------------------------------------------

    def render(self, messages: list[dict[str, str]]) -> tuple[list[int], int]:
        """Token ids of the prompt; drops the oldest turns (never the system prompt) to fit the context."""
        if not messages or not str(messages[-1].get("content", "")).strip():
            raise ChatError("The message is empty", hint="type a question first")
        budget = self.context_length
        system = [m for m in messages[:1] if m.get("role") == "system"]
        turns = messages[len(system) :]
        dropped = 0
        while True:
            ids = self._ids(system + turns)
            if len(ids) < budget or len(turns) <= 1:
                break
            turns = turns[2:] if len(turns) > 2 else turns[1:]
            dropped += 1
        if len(ids) >= budget:
            ids = ids[-(budget - 1) :]
        return ids, dropped

    def _ids(self, messages: list[dict[str, str]]) -> list[int]:
        from lora_studio.core.data import chat_template_for

        template, _ = chat_template_for(self.tokenizer)  # the fallback matches what training used
        out = self.tokenizer.apply_chat_template(
            messages, chat_template=template, add_generation_prompt=True, tokenize=True, return_dict=False
        )
        return list(out)

    # -- generation -------------------------------------------------------------------------

    def stream(
        self,
        messages: list[dict[str, str]],
        sampling: Sampling | None = None,
        *,
        use_adapter: bool = True,
        cancel: threading.Event | None = None,
        reply: Reply | None = None,
    ) -> Iterator[str]:
        """Yield text pieces as they are generated; fills ``reply`` with timings when done."""
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        sampling = sampling or Sampling()
        sampling.check()
        cancel = cancel or threading.Event()
        ids, dropped = self.render(messages)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        counter = {"n": 0, "first": None}
        started = time.monotonic()

        class _Stop(StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                counter["n"] += 1
                if counter["first"] is None:
                    counter["first"] = time.monotonic() - started
                return torch.full(
                    (input_ids.shape[0],), cancel.is_set(), dtype=torch.bool, device=input_ids.device
                )

        kwargs = dict(
            input_ids=torch.tensor([ids], device=self.model.device),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long, device=self.model.device),
            max_new_tokens=min(sampling.max_new_tokens, max(self.context_length - len(ids), 1)),
            do_sample=not sampling.greedy,
            repetition_penalty=sampling.repetition_penalty,
            eos_token_id=self.stop_ids,
            pad_token_id=self.tokenizer.pad_token_id,
            streamer=streamer,
            stopping_criteria=StoppingCriteriaList([_Stop()]),
            use_cache=True,
        )
        if not sampling.greedy:
            kwargs.update(temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k)
        error: list[BaseException] = []

        def work() -> None:
            try:
                self._generate(kwargs, use_adapter)
            except BaseException as exc:  # surfaced to the caller below
                error.append(exc)
                streamer.end()

        thread = threading.Thread(target=work, name="lora-studio-generate", daemon=True)
        thread.start()
        pieces = []
        for piece in streamer:
            pieces.append(piece)
            if piece:
                yield piece
        thread.join()
        if error:
            raise _translate(error[0]) from error[0]
        if reply is not None:
            reply.text = "".join(pieces).strip()
            reply.new_tokens = counter["n"]
            reply.seconds = time.monotonic() - started
            reply.first_token_s = counter["first"]
            reply.stopped = cancel.is_set()
            reply.dropped_turns = dropped
            if dropped:
                reply.notes.append(f"the {dropped} oldest turn(s) were left out to fit the context")
            if not self.tokenizer.chat_template:
                reply.notes.append(FALLBACK_HINT)

    def _generate(self, kwargs: dict[str, Any], use_adapter: bool) -> None:
        import contextlib

        import torch

        from lora_studio.core.faults import due, parse_faults

        with self.lock:
            self._generations += 1
            if due(parse_faults(), "generate_error", self._generations):
                raise RuntimeError("injected fault during generation")
            model = self.model
            was_training = model.training
            model.eval()
            try:
                switch = (
                    model.disable_adapter()
                    if (not use_adapter and self.has_adapter)
                    else contextlib.nullcontext()
                )
                with switch, torch.no_grad():
                    model.generate(**kwargs)
            finally:
                model.train(was_training)

    def answer(
        self,
        messages: list[dict[str, str]],
        sampling: Sampling | None = None,
        *,
        use_adapter: bool = True,
        cancel: threading.Event | None = None,
        on_piece: Callable[[str], None] | None = None,
    ) -> Reply:
        reply = Reply("", 0, 0.0, None, False)
        for piece in self.stream(messages, sampling, use_adapter=use_adapter, cancel=cancel, reply=reply):
            if on_piece:
                on_piece(piece)
        return reply

    def compare(
        self,
        messages: list[dict[str, str]],
        sampling: Sampling | None = None,
        *,
        cancel: threading.Event | None = None,
    ) -> tuple[Reply, Reply]:
        """(base, fine-tuned) answers to the same conversation, one after the other on one model."""
        if not self.has_adapter:
            raise ChatError("Nothing to compare: no adapter is loaded", hint="choose a run or adapter folder")
        base = self.answer(messages, sampling, use_adapter=False, cancel=cancel)
        tuned = self.answer(messages, sampling, use_adapter=True, cancel=cancel)
        return base, tuned


def _stop_token_ids(tokenizer: Any) -> list[int]:
    ids = []
    if tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    vocab = tokenizer.get_vocab()
    for token in END_OF_TURN_TOKENS:
        if token in vocab and vocab[token] not in ids:
            ids.append(int(vocab[token]))
    return ids


def _translate(exc: BaseException) -> BaseException:
    import torch

    if isinstance(exc, LoraStudioError):
        return exc
    if isinstance(exc, torch.OutOfMemoryError | MemoryError):
        return OutOfMemoryError(
            "Out of memory while generating",
            hint="lower max new tokens, shorten the conversation (Clear), or load the model in 4-bit",
        )
    return ChatError(
        f"Generation failed: {type(exc).__name__}: {exc}",
        hint="send the message again; if it fails again, choose the model again to reload it",
    )
