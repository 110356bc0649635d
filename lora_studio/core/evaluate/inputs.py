"""What an evaluation runs on: the models (:class:`ModelSpec`) and the examples (:class:`EvalSet`).

A model is named the way a user thinks of it — a run (its final adapter or one checkpoint), any
adapter folder, or a base model — and carries the settings it was trained with (quantization,
dtype, and for a preference run its method and beta), so it is evaluated as it was trained. The
examples are a dataset file in any format the loader accepts, or the run's own held-out split,
rendered with the run's data settings. Preference data (chosen/rejected pairs, or KTO's answers
labelled good or bad) makes a preference eval set (``kind`` "pairs" or "labels"): a preference
run's own held-out split is the one its training left out, and a pair file is always read as pairs.
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

#: What to do when a run held nothing out (words for the app and the command line).
_NONE_HELD_OUT = (
    "choose a {what} file to evaluate on (in the app: Examples → a file; on the command line: --data FILE), "
    "or train with some data held out (Data page: Held out for evaluation, e.g. 0.1); scoring it on its "
    "own training data would flatter it"
)


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
    method: str = "sft"  # the run's training.method ("sft" for a base model or a foreign adapter)
    beta: float | None = None  # a preference run's preference.beta: the scale of its implicit reward
    init_adapter: str | None = None  # a preference run that started from another adapter (SFT → DPO)

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
            method=config.training.method,
            beta=config.preference.beta if config.training.method != "sft" else None,
            init_adapter=config.preference.init_adapter if config.training.method != "sft" else None,
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
    """One eval example: the prompt (every turn before the last answer) and that answer.

    In a preference eval set ``pair`` is the pair (``reference`` its chosen answer) or the KTO
    labelled answer (``reference`` the answer), and ``conversation`` is None."""

    index: int
    conversation: Any  # data_formats.Conversation
    prompt: list[dict[str, str]] | None
    reference: str | None
    location: str
    pair: Any = None  # data.PreferencePair | data.LabelledAnswer


@dataclass
class EvalSet:
    """The examples every model answers, and how to render them (the run's data settings)."""

    name: str
    source: str
    data: DataSection
    items: list[EvalItem]
    notes: list[str] = field(default_factory=list)
    kind: str = "sft"  # "sft" | "pairs" (chosen/rejected) | "labels" (KTO: answers labelled good or bad)

    def references(self) -> list[str]:
        return [item.reference for item in self.items if item.reference is not None]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "source": self.source,
            "examples": len(self.items),
            "notes": self.notes,
            "kind": self.kind,
        }


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
    A file of chosen/rejected pairs, a preference run's own data, and KTO labels evaluated with a
    preference run give a preference eval set (see :func:`_preference_set`).
    """
    from lora_studio.core.data import load_conversations, sniff_preference_format, split_conversations

    run_config = run.config_with_notes()[0] if run is not None else None
    settings = data or (run_config.data if run_config is not None else DataSection())
    method = run_config.training.method if run_config is not None else "sft"
    if path is not None:
        shape = sniff_preference_format(path)
        if shape is not None and (shape != "kto" or method != "sft"):
            return _preference_set(path, settings, None, method, cancel)
    elif run is not None and method != "sft":
        return _preference_set(None, settings, run, method, cancel)
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
        elif section.hold_out_share() > 0:
            everything, _ = load_conversations(section, cancel=cancel)
            conversations = split_conversations(everything, section, config.training.seed)[1]
            if not conversations:
                raise _too_small(run, f"{len(everything)} records", section, "dataset")
            name, source = _split_names(run, section)
        else:
            raise EvaluationError(
                f"{run.run_id} trained on all of its examples: none were held out to evaluate it on",
                hint=_NONE_HELD_OUT.format(what="dataset"),
            )
    else:
        raise EvaluationError(
            "nothing to evaluate on",
            hint="choose a dataset file (in the app: Examples → a file; on the command line: --data FILE), "
            "or a run that held out some of its data",
        )
    items = [_item(i, conv) for i, conv in enumerate(conversations)]
    return EvalSet(name=name, source=source, data=settings, items=items)


def _too_small(run: RunFolder, records: str, section: DataSection, what: str) -> EvaluationError:
    """A run whose file was too small to hold anything out (its data preview said so)."""
    return EvaluationError(
        f"{run.run_id} trained on all of its {records}: {section.hold_out_share():.0%} of them is "
        "less than one, so none were held out to evaluate it on",
        hint=f"choose a {what} file to evaluate on (in the app: Examples → a file; on the command line: "
        "--data FILE); scoring it on its own training data would flatter it",
    )


def _split_names(run: RunFolder, section: DataSection) -> tuple[str, str]:
    """(name, source) of a run's held-out split, as the eval set reports them."""
    return f"eval split of {run.run_id}", f"{section.path} ({section.hold_out_words()} held out)"


def _preference_set(
    path: str | None,
    settings: DataSection,
    run: RunFolder | None,
    method: str,
    cancel: threading.Event | None,
) -> EvalSet:
    """Pairs or KTO labels from ``path``, or the held-out part of a preference run's own data (the
    same records its training left out: the same reader, the same seeded split)."""
    from lora_studio.core.data import load_preferences
    from lora_studio.core.data.prepare_preference import split_items

    if path is not None:
        items, report = load_preferences(path, skip_invalid=settings.skip_invalid, cancel=cancel)
        name, source = Path(path).name, str(path)
    else:
        assert run is not None
        config, _ = run.config_with_notes()
        section = config.data
        if section.eval_path:
            items, report = load_preferences(
                section.eval_path, skip_invalid=section.skip_invalid, cancel=cancel
            )
            name, source = Path(section.eval_path).name, section.eval_path
        elif section.hold_out_share() > 0:
            everything, report = load_preferences(
                section.path, skip_invalid=section.skip_invalid, cancel=cancel
            )
            items = split_items(everything, section, config.training.seed)[1]
            if not items:
                unit = "answers" if method == "kto" else "pairs"
                raise _too_small(run, f"{len(everything)} {unit}", section, "preference")
            name, source = _split_names(run, section)
        else:
            raise EvaluationError(
                f"{run.run_id} trained on all of its {'pairs' if method != 'kto' else 'answers'}: none were "
                "held out to evaluate it on",
                hint=_NONE_HELD_OUT.format(what="preference"),
            )
    notes = [f"{len(report.skipped)} records with problems were left out"] if report.skipped else []
    items_out = [_preference_item(i, item) for i, item in enumerate(items)]
    return EvalSet(name=name, source=source, data=settings, items=items_out, notes=notes, kind=report.kind)


def _preference_item(index: int, item: Any) -> EvalItem:
    from lora_studio.core.data import LabelledAnswer

    text = answer_text(item.completion if isinstance(item, LabelledAnswer) else item.chosen)
    where = ", ".join(
        part
        for part in (
            item.file,
            f"line {item.line}" if item.line is not None else None,
            f"record {item.record}" if item.record is not None else None,
        )
        if part
    )
    return EvalItem(index, None, item.prompt, text, where, pair=item)


def answer_text(turns: list[dict[str, str]]) -> str:
    """A preference answer's text (its assistant turns), for tables."""
    return "\n".join(t["content"] for t in turns if t["role"] == "assistant")


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
