"""What the training engine tells the world: frozen dataclasses of plain Python values.

Events never carry tensors, so a listener (CLI printer, JSON writer, the GUI's Qt bridge) can keep
or forward them across threads without touching the device. A listener is any callable taking
one event; the engine calls it on the training thread, so a listener must be quick.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol


class Listener(Protocol):
    def __call__(self, event: Event) -> None: ...


@dataclass(frozen=True)
class Event:
    @property
    def kind(self) -> str:
        return _KINDS[type(self)]

    def to_dict(self) -> dict[str, Any]:
        data = {"event": self.kind}
        data.update(_json_safe(asdict(self)))
        return data


@dataclass(frozen=True)
class Phase(Event):
    """A slow preparation step started (so a user is never left guessing what is happening)."""

    name: str  # "resolving model" | "preparing data" | "loading model" | "sampling" | "saving adapter" ...
    detail: str = ""
    elapsed_s: float | None = None  # the run's clock (core/train/clock.py); the engine stamps it


@dataclass(frozen=True)
class RunStarted(Event):
    run_id: str
    run_dir: str
    config: dict[str, Any]
    model: dict[str, Any]
    dataset: dict[str, Any]
    trainable_params: int
    total_params: int
    total_steps: int
    device: str
    dtype: str
    resumed_from_step: int = 0
    world_size: int = 1
    global_batch: int = 0  # per-device batch x accumulation x processes
    elapsed_s: float | None = None  # the run's clock, earlier sessions of a resumed run included


@dataclass(frozen=True)
class Step(Event):
    step: int
    total_steps: int
    epoch: float
    loss: float
    learning_rate: float
    grad_norm: float | None
    tokens_per_s: float
    tokens_seen: int
    elapsed_s: float
    eta_s: float | None
    mem: dict[str, Any] = field(default_factory=dict)
    # preference methods: reward_chosen, reward_rejected, reward_margin, reward_accuracy (and KTO's kl)
    preference: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Evaluation(Event):
    step: int
    eval_loss: float
    preference: dict[str, float] = field(default_factory=dict)  # as in Step, on the held-out data


@dataclass(frozen=True)
class CheckpointSaved(Event):
    step: int
    path: str


@dataclass(frozen=True)
class Samples(Event):
    """Greedy answers to the configured prompts; ``stage`` is "before" or "after" training."""

    step: int
    stage: str
    samples: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class SampleProgress(Event):
    """A sample answer being written, token by token: before the first step this is all a run does
    for a while (minutes for a quantized model on a CPU), so a person is shown which prompt and how
    far — and can stop it."""

    stage: str  # "before" | "after"
    index: int  # the prompt being answered, from 0
    total: int  # prompts to answer
    prompt: str
    tokens: int  # generated so far
    max_tokens: int
    text: str  # the answer so far
    done: bool = False  # the answer is complete (its final text; always reported)
    elapsed_s: float | None = None


@dataclass(frozen=True)
class Paused(Event):
    """Training is held at a step boundary (``paused``) or continues (``not paused``)."""

    step: int
    paused: bool
    elapsed_s: float | None = None  # the run's clock, which stands still while paused


@dataclass(frozen=True)
class Finished(Event):
    status: str  # "completed" | "cancelled"
    step: int
    run_dir: str
    adapter_path: str | None
    final_loss: float | None
    final_eval_loss: float | None
    elapsed_s: float


@dataclass(frozen=True)
class Failed(Event):
    error_type: str
    message: str
    hint: str | None
    step: int
    run_dir: str | None


def preference_words(values: dict[str, float]) -> list[str]:
    """A preference step's figures for a log line: ['margin +0.184', 'accuracy 94%', 'KL 0.012']
    ([] for SFT). The CLI and the app's log say them the same way."""
    words = []
    if values.get("reward_margin") is not None:
        words.append(f"margin {values['reward_margin']:+.3f}")
    if values.get("reward_accuracy") is not None:
        words.append(f"accuracy {100 * values['reward_accuracy']:.0f}%")
    if values.get("kl") is not None:
        words.append(f"KL {values['kl']:.3f}")
    return words


_KINDS: dict[type, str] = {
    Phase: "phase",
    RunStarted: "run_started",
    Step: "step",
    Evaluation: "eval",
    CheckpointSaved: "checkpoint",
    Samples: "samples",
    SampleProgress: "sample_progress",
    Paused: "paused",
    Finished: "finished",
    Failed: "failed",
}


def _json_safe(value: Any) -> Any:
    """NaN/inf become None: JSON has neither, and a reader must not choke on a diverged run."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value
