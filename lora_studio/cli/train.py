"""``lora-studio train``: run the engine from a terminal (and under accelerate / torchrun).

Every config field is also a flag, generated from ``RunConfig`` so the two can never drift; flags
override the config file. Ctrl-C cancels cleanly: the adapter is saved, the run is marked
``cancelled`` and the exit code is 130. A second Ctrl-C aborts at once.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import types
import typing
from pathlib import Path
from typing import Any

from lora_studio.cli import install_sigint
from lora_studio.core.config import DEMOS, RunConfig
from lora_studio.core.errors import CancelledError
from lora_studio.core.train import events as ev
from lora_studio.core.train import format_duration

# Friendlier names for the most used fields; every other field is --<name-with-dashes>.
ALIASES = {
    "model.source": ["--model"],
    "model.quantization": ["--quant", "--quantization"],
    "data.path": ["--data"],
    "data.format": ["--format"],
    "data.tools_path": ["--tools", "--tools-path"],
    "training.learning_rate": ["--lr", "--learning-rate"],
    "lora.r": ["--lora-r"],
    "lora.alpha": ["--lora-alpha"],
    "lora.dropout": ["--lora-dropout"],
    "lora.init": ["--lora-init"],
    "lora.target_modules": ["--targets"],
    "training.method": ["--method"],
    "preference.init_adapter": ["--init-adapter"],
    "training.sample_prompts": ["--sample-prompt"],
    "output.runs_dir": ["--runs-dir"],
}


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "train",
        help="fine-tune a model (a new run, the demo, or --resume RUN_DIR)",
        description="Train a LoRA/QLoRA adapter. Flags override values from --config.",
    )
    parser.add_argument("--config", type=Path, help="a run.toml written by the app or by hand")
    parser.add_argument(
        "--demo",
        nargs="?",
        const="sft",
        choices=sorted(DEMOS),
        help="train the default model on a bundled dataset: 'sft' (the default: who the assistant is, "
        "~5 min on a CPU) or 'dpo' (prefer concise answers)",
    )
    parser.add_argument(
        "--resume", type=Path, metavar="RUN_DIR", help="continue a run from its last checkpoint"
    )
    parser.add_argument("--json", action="store_true", help="print events as JSON lines")
    parser.add_argument("--save-config", type=Path, metavar="PATH", help="write the final config and exit")
    add_config_flags(parser)
    parser.set_defaults(func=run)


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("run settings (each overrides the config file)")
    for section_name, section_field in RunConfig.model_fields.items():
        section = section_field.annotation
        if not (isinstance(section, type) and hasattr(section, "model_fields")):
            continue
        for name, info in section.model_fields.items():
            dotted = f"{section_name}.{name}"
            flags = ALIASES.get(dotted, [f"--{name.replace('_', '-')}"])
            kwargs: dict[str, Any] = {
                "dest": dotted,
                "default": argparse.SUPPRESS,
                "metavar": name.upper(),
                "help": (info.description or "").replace("%", "%%"),
            }
            annotation = info.annotation
            origin_args = typing.get_args(annotation)
            if annotation is bool:
                kwargs["action"] = argparse.BooleanOptionalAction
                del kwargs["metavar"]
            elif typing.get_origin(annotation) is typing.Literal:
                kwargs["choices"] = list(origin_args)
                kwargs["metavar"] = "{" + ",".join(origin_args) + "}"
            elif dotted == "training.sample_prompts":
                kwargs["action"] = "append"
            elif dotted == "data.columns":
                kwargs["type"] = _mapping
                kwargs["metavar"] = "FIELD=COLUMN,..."
            elif dotted == "data.role_map":
                kwargs["type"] = _role_map
                kwargs["metavar"] = "NAME=ROLE,..."
            elif dotted == "lora.target_modules":
                kwargs["type"] = _targets
                kwargs["metavar"] = "all-linear|NAME,NAME"
            elif annotation is int or (isinstance(annotation, types.UnionType) and int in origin_args):
                kwargs["type"] = int
            elif annotation is float or (isinstance(annotation, types.UnionType) and float in origin_args):
                kwargs["type"] = float
            group.add_argument(*flags, **kwargs)


def _rewards(values: dict[str, float]) -> str:
    """A preference run's reward margin, accuracy and KL on the step line (empty for SFT)."""
    return "".join(f"  {word}" for word in ev.preference_words(values))


def _mapping(text: str) -> dict[str, str]:
    pairs = [p for p in text.split(",") if p.strip()]
    try:
        return {k.strip(): v.strip() for k, v in (p.split("=", 1) for p in pairs)}
    except ValueError:
        raise argparse.ArgumentTypeError(
            "use FIELD=COLUMN pairs, e.g. instruction=question,output=answer"
        ) from None


def _role_map(text: str) -> dict[str, str]:
    """``Customer=user,Agent=assistant``; the roles are checked by ``data.role_map``'s validator."""
    pairs = [p for p in text.split(",") if p.strip()]
    mapping = {}
    for pair in pairs:
        name, sep, role = pair.rpartition("=")
        if not sep or not name.strip() or not role.strip():
            raise argparse.ArgumentTypeError("use NAME=ROLE pairs, e.g. Customer=user,Agent=assistant")
        mapping[name.strip()] = role.strip()
    return mapping


def _targets(text: str) -> str | list[str]:
    return "all-linear" if text == "all-linear" else [t.strip() for t in text.split(",") if t.strip()]


def build_config(args: argparse.Namespace) -> RunConfig:
    config = RunConfig.load(args.config) if args.config else RunConfig()
    overrides = {k: v for k, v in vars(args).items() if "." in k}
    if args.demo:
        overrides = {**DEMOS[args.demo], **overrides}
    return config.with_overrides(overrides) if overrides else config


def run(args: argparse.Namespace) -> int:
    from lora_studio.core.estimate import decide_savers
    from lora_studio.core.train import resume, train

    cancel = threading.Event()
    printer = JsonPrinter() if args.json else HumanPrinter()
    restore = install_sigint(
        cancel, printer.note, "Stopping after this step and saving the adapter (Ctrl-C again to abort)..."
    )
    try:
        if args.resume:
            result = resume(args.resume, printer, cancel=cancel, decide_savers=decide_savers)
        else:
            config = build_config(args)
            if args.save_config:
                config.save(args.save_config)
                print(f"wrote {args.save_config}")
                return 0
            result = train(config, printer, cancel=cancel, decide_savers=decide_savers)
    except CancelledError:
        return 130
    finally:
        restore()
    return 0 if result.status == "completed" else 130


class JsonPrinter:
    def __call__(self, event: ev.Event) -> None:
        print(json.dumps(event.to_dict()), flush=True)

    def note(self, text: str) -> None:
        print(json.dumps({"event": "note", "message": text}), flush=True)


class HumanPrinter:
    """One line per logging step; a summary with the before/after samples at the end."""

    def __init__(self, stream: Any = None) -> None:
        self.stream = stream or sys.stdout
        self.samples: dict[str, tuple[tuple[str, str], ...]] = {}
        self.rewards = {"train": "", "eval": ""}  # a preference run's last margin/accuracy, for the summary

    def out(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def note(self, text: str) -> None:
        self.out(text)

    def __call__(self, event: ev.Event) -> None:
        if isinstance(event, ev.Phase):
            self.out(f"... {event.name}" + (f": {event.detail}" if event.detail else ""))
        elif isinstance(event, ev.RunStarted):
            pct = 100 * event.trainable_params / max(event.total_params, 1)
            self.out(f"Run {event.run_id} in {event.run_dir}")
            self.out(
                f"  {event.model.get('name')} on {event.device} ({event.dtype}), "
                f"{event.trainable_params:,} trainable of {event.total_params:,} parameters ({pct:.2f}%)"
            )
            if event.world_size > 1:
                self.out(
                    f"  {event.world_size} processes, global batch {event.global_batch} "
                    "(per-device batch x accumulation x processes)"
                )
            method = event.config.get("training", {}).get("method", "sft")
            unit = {"sft": "training examples", "kto": "labelled answers"}.get(method, "preference pairs")
            self.out(
                f"  {method.upper()}: " * (method != "sft")
                + f"{event.dataset.get('examples', '?')} {unit}, {event.total_steps} steps"
                + (
                    f", {event.dataset['eval_examples']} held out"
                    if event.dataset.get("eval_examples")
                    else ""
                )
                + (f", resuming from step {event.resumed_from_step}" if event.resumed_from_step else "")
            )
            for warning in event.dataset.get("warnings") or []:
                self.out(f"  note: {warning}")
        elif isinstance(event, ev.Step):
            self.rewards["train"] = _rewards(event.preference)
            mem = event.mem
            used = mem.get("cuda_peak", mem.get("rss", 0)) / 1024**3
            label = "GPU peak" if "cuda_peak" in mem else "RAM"
            grad = f"  grad {event.grad_norm:.3f}" if event.grad_norm is not None else ""
            self.out(
                f"step {event.step:>5}/{event.total_steps}  loss {event.loss:.4f}  lr {event.learning_rate:.2e}"
                f"{grad}{_rewards(event.preference)}  {event.tokens_per_s:,.0f} tok/s  "
                f"ETA {_duration(event.eta_s)}  {label} {used:.2f} GB"
            )
        elif isinstance(event, ev.Evaluation):
            self.out(f"eval  step {event.step}: loss {event.eval_loss:.4f}{_rewards(event.preference)}")
            self.rewards["eval"] = _rewards(event.preference)
        elif isinstance(event, ev.CheckpointSaved):
            self.out(f"checkpoint saved: {event.path}")
        elif isinstance(event, ev.SampleProgress):
            if event.tokens == 0:  # each prompt once: the answers themselves come in the summary
                self.out(f"    prompt {event.index + 1} of {event.total}: {event.prompt}")
        elif isinstance(event, ev.Samples):
            self.samples[event.stage] = event.samples
        elif isinstance(event, ev.Finished):
            self._summary(event)
        elif isinstance(event, ev.Failed) and event.run_dir:
            # the error itself is printed once, by the command's error handler
            self.out(f"Run failed after step {event.step}; run folder: {event.run_dir}")

    def _summary(self, event: ev.Finished) -> None:
        self.out("")
        self.out(f"Run {event.status} at step {event.step} in {_duration(event.elapsed_s)}.")
        if event.final_loss is not None:
            self.out(
                f"  final loss {event.final_loss:.4f}"
                + (f", eval loss {event.final_eval_loss:.4f}" if event.final_eval_loss is not None else "")
            )
        for stage, rewards in self.rewards.items():
            if rewards:
                self.out(f"  last {stage} step:{rewards}")
        self.out(f"  run folder: {event.run_dir}")
        if event.adapter_path:
            self.out(f"  adapter:    {event.adapter_path}")
        before = dict(self.samples.get("before", ()))
        after = self.samples.get("after", ())
        for prompt, answer in after:
            self.out(f"\n  Q: {prompt}")
            if prompt in before:
                self.out(f"  before: {before[prompt]}")
            self.out(f"  after:  {answer}")


def _duration(seconds: float | None) -> str:
    return format_duration(seconds, none="--")
