"""What an evaluation runs on: the models (:class:`ModelSpec`) and the examples (:class:`EvalSet`).

A model is named the way a user thinks of it — a run (its final adapter or one checkpoint), any
adapter folder, or a base model — and carries the settings it was trained with (quantization,
dtype), so it is evaluated as it was trained. The examples are a dataset file in any format the
loader accepts, or the run's own held-out split, rendered with the run's data settings.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lora_studio.core.config import DataSection
from lora_studio.core.errors import LoraStudioError
from lora_studio.core.runs import RunFolder


class EvaluationError(LoraStudioError):
    """An evaluation cannot run as asked (no eval data, nothing to compare, ...)."""


@dataclass(frozen=True)
class ModelSpec:
    """One model to evaluate: a base (``adapter`` None, or ``use_adapter`` False) or a fine-tune."""

    label: str
    source: str = "default"
    adapter: str | None = None
    use_adapter: bool = True
    run_dir: str | None = None
    quantization: str = "none"
    compute_dtype: str = "auto"
    double_quant: bool = False
    trust_remote_code: bool = False

    @classmethod
    def from_run(
        cls, run: str | Path | RunFolder, *, checkpoint: int | None = None, label: str | None = None
    ) -> ModelSpec:
        """A run's final adapter (else its latest checkpoint), or checkpoint ``checkpoint``, loaded
        with the base model and quantization the run trained with."""
        from lora_studio.core.chat import resolve_adapter

        folder = run if isinstance(run, RunFolder) else RunFolder.open(run)
        config, _ = folder.config_with_notes()
        if checkpoint is None:
            adapter = resolve_adapter(folder.path)
        else:
            found = dict(folder.checkpoints())
            if checkpoint not in found:
                have = ", ".join(str(s) for s in found) or "none"
                raise EvaluationError(f"{folder.path}: no checkpoint {checkpoint} (checkpoints: {have})")
            adapter = resolve_adapter(found[checkpoint])
        model = config.model
        return cls(
            label=label or (folder.run_id if checkpoint is None else f"{folder.run_id}@{checkpoint}"),
            source=model.source,
            adapter=str(adapter),
            run_dir=str(folder.path),
            quantization=model.quantization,
            compute_dtype=model.compute_dtype,
            double_quant=model.double_quant,
            trust_remote_code=model.trust_remote_code,
        )

    @classmethod
    def from_adapter(
        cls, path: str | Path, *, model: str | None = None, label: str | None = None
    ) -> ModelSpec:
        """Any adapter folder; inside a run folder (or a checkpoint of one) the run's settings apply.

        Without ``model`` the base is the run's, else the adapter's recorded base if it exists
        locally, else the bundled default model.
        """
        from lora_studio.core.chat import resolve_adapter

        folder = resolve_adapter(path)
        for parent in (folder.parent, folder.parent.parent):
            if (parent / "config.toml").is_file() and (parent / "status.json").is_file():
                spec = cls.from_run(parent, label=label or folder.name)
                return dataclasses.replace(spec, adapter=str(folder), source=model or spec.source)
        recorded = _recorded_base(folder)
        return cls(label=label or folder.name, source=model or recorded or "default", adapter=str(folder))

    def base_of(self, label: str = "base") -> ModelSpec:
        """The same loaded weights with the adapter switched off (no second model in memory)."""
        return dataclasses.replace(self, label=label, use_adapter=False, run_dir=None)

    @property
    def load_key(self) -> tuple[Any, ...]:
        return (self.source, self.adapter, self.quantization, self.compute_dtype, self.double_quant)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class EvalItem:
    """One eval example: the prompt (every turn before the last answer) and that answer."""

    index: int
    conversation: Any  # data_formats.Conversation
    prompt: list[dict[str, str]] | None
    reference: str | None
    location: str


@dataclass
class EvalSet:
    """The examples every model answers, and how to render them (the run's data settings)."""

    name: str
    source: str
    data: DataSection
    items: list[EvalItem]
    notes: list[str] = field(default_factory=list)

    def references(self) -> list[str]:
        return [item.reference for item in self.items if item.reference is not None]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "source": self.source, "examples": len(self.items), "notes": self.notes}


def load_eval_set(
    path: str | None = None,
    *,
    run: RunFolder | None = None,
    data: DataSection | None = None,
    cancel: threading.Event | None = None,
) -> EvalSet:
    """A dataset file (any format the loader accepts), or ``run``'s own held-out split.

    Raises the loader's located :class:`DatasetError` for unusable data. With ``run``, the run's
    data settings (system prompt, sequence length, loss tokens) render the examples as in training.
    """
    from lora_studio.core.data import load_conversations, split_conversations

    settings = data or (run.config_with_notes()[0].data if run is not None else DataSection())
    if path is not None:
        section = settings.model_copy(
            update={"path": path, "format": "auto", "columns": {}, "eval_path": None, "eval_fraction": 0.0}
        )
        conversations, _ = load_conversations(section, cancel=cancel)
        name, source = Path(path).name, str(path)
    elif run is not None:
        config, _ = run.config_with_notes()
        section = config.data
        if section.eval_path:
            eval_section = section.model_copy(update={"path": section.eval_path, "eval_path": None})
            conversations, _ = load_conversations(eval_section, cancel=cancel)
            name, source = Path(section.eval_path).name, section.eval_path
        elif section.eval_fraction > 0:
            everything, _ = load_conversations(section, cancel=cancel)
            conversations = split_conversations(everything, section, config.training.seed)[1]
            name, source = (
                f"eval split of {run.run_id}",
                f"{section.path} ({section.eval_fraction:g} held out)",
            )
        else:
            raise EvaluationError(
                f"{run.run_id} trained on all of its examples: none were held out to evaluate it on",
                hint="choose a dataset file to evaluate on (in the app: Examples → a file; on the command line: "
                "--data FILE), or train with some data held out (Data page: Held out for evaluation, e.g. "
                "0.1); scoring it on its own training data would flatter it",
            )
    else:
        raise EvaluationError(
            "nothing to evaluate on",
            hint="choose a dataset file (in the app: Examples → a file; on the command line: --data FILE), "
            "or a run that held out some of its data",
        )
    items = [_item(i, conv) for i, conv in enumerate(conversations)]
    return EvalSet(name=name, source=source, data=settings, items=items)


def _item(index: int, conv: Any) -> EvalItem:
    messages = conv.messages
    last = max((i for i, msg in enumerate(messages) if msg["role"] == "assistant"), default=None)
    if conv.text is not None or last is None or last == 0:
        return EvalItem(index, conv, None, None, conv.where())
    return EvalItem(index, conv, messages[:last], messages[last]["content"], conv.where())


def _recorded_base(adapter: Path) -> str | None:
    try:
        config = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    base = config.get("base_model_name_or_path")
    return base if isinstance(base, str) and base and Path(base).expanduser().exists() else None
