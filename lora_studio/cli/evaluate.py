"""``lora-studio evaluate``: score a run, an adapter or a base model on eval data, and compare them.

Prints one table: each model's eval loss, perplexity and task metric, and each model's difference
from the first column with a bootstrap confidence interval over the examples. Ctrl-C cancels.

A preference run (DPO, ORPO, SimPO, KTO) is measured on its held-out pairs (or KTO answers) from
log-probabilities, with no generation: how often each model prefers the chosen answer and by what
mean margin, with the paired interval of tuned − base, and the fine-tune's implicit reward against
its base (reward accuracy and margin, each with its own interval). The definitions are printed
under the table (and in ``lora_studio/core/evaluate/scoring.py``).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

from lora_studio.core.evaluate import METRIC_CHOICES


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "evaluate",
        help="measure a fine-tune on held-out data: loss, accuracy / ROUGE / exact match, vs base or other runs",
    )
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--run", help="run folder, run id, or a unique part of it (its final adapter)")
    which.add_argument("--adapter", help="an adapter folder (a run's checkpoint or any PEFT adapter)")
    parser.add_argument(
        "--checkpoint", type=int, help="with --run: evaluate checkpoint N instead of the final adapter"
    )
    parser.add_argument(
        "--model",
        help="base model ('default', a folder, a .gguf or a hub id); default: the run's or adapter's",
    )
    parser.add_argument(
        "--data", help="eval file in any supported format (default: the run's held-out split)"
    )
    parser.add_argument(
        "--compare-base",
        action="store_true",
        help="also evaluate the base model (the same weights, adapter off)",
    )
    parser.add_argument(
        "--compare", nargs="+", metavar="RUN", default=[], help="more runs to evaluate side by side"
    )
    parser.add_argument(
        "--metric",
        choices=METRIC_CHOICES,
        default="auto",
        help="task metric (default: chosen from the answers)",
    )
    parser.add_argument("--max-examples", type=int, help="evaluate a seeded sample of N examples")
    parser.add_argument(
        "--batch-size", type=int, default=8, help="examples per forward pass / generation batch"
    )
    parser.add_argument(
        "--max-new-tokens", type=int, help="answer length (default: sized from the references)"
    )
    parser.add_argument(
        "--labels", help="comma-separated label set (default: the distinct reference answers)"
    )
    parser.add_argument(
        "--synonym", action="append", default=[], metavar="WORD=LABEL", help="count an answer WORD as LABEL"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap and of --max-examples")
    parser.add_argument(
        "--runs-dir", type=Path, help="runs folder (default: $LORA_STUDIO_RUNS_DIR or the app's)"
    )
    parser.add_argument("--out", type=Path, help="also save the results in this folder (under eval/)")
    parser.add_argument("--no-save", action="store_true", help="do not write results into the run folders")
    parser.add_argument(
        "--show", type=int, default=0, metavar="N", help="print the N lowest-scoring examples"
    )
    parser.add_argument("--json", action="store_true", help="print the results as one JSON object")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lora_studio.core.evaluate import EvalOptions, EvaluationError, evaluate, load_eval_set
    from lora_studio.core.runs import find_run

    options = EvalOptions(
        metric=args.metric,
        max_examples=args.max_examples,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        labels=[s.strip() for s in args.labels.split(",") if s.strip()] if args.labels else None,
        synonyms=_synonyms(args.synonym),
        seed=args.seed,
    )
    options.check()
    if args.checkpoint is not None and not args.run:
        raise EvaluationError("--checkpoint needs --run", hint="or give the checkpoint folder with --adapter")
    models = _models(args, find_run)
    first_run = next((find_run(s.run_dir) for s in models if s.run_dir), None)
    eval_set = load_eval_set(args.data, run=first_run)
    cancel = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda *_: cancel.set())
    try:
        report = evaluate(
            models,
            eval_set,
            options,
            progress=None if args.json else _Progress(),
            cancel=cancel,
            save=not args.no_save,
            save_dir=args.out,
        )
    finally:
        signal.signal(signal.SIGINT, previous)
    if args.json:
        print(json.dumps(report.to_dict(examples=args.show > 0), indent=2, ensure_ascii=False))
        return 0
    print_report(report.to_dict())
    if args.show:
        _print_worst(report, args.show)
    return 0


def _models(args: argparse.Namespace, find_run: Any) -> list[Any]:
    from lora_studio.core.evaluate import EvaluationError, ModelSpec

    models = []
    if args.run:
        spec = ModelSpec.from_run(find_run(args.run, args.runs_dir), checkpoint=args.checkpoint)
        models.append(spec if not args.model else _with_base(spec, args.model))
    elif args.adapter:
        models.append(ModelSpec.from_adapter(args.adapter, model=args.model))
    models += [ModelSpec.from_run(find_run(name, args.runs_dir)) for name in args.compare]
    if args.compare_base:
        tuned = next((s for s in models if s.adapter), None)
        if tuned is None:
            raise EvaluationError(
                "--compare-base needs a fine-tune", hint="give --run, --adapter or --compare"
            )
        models.insert(0, tuned.base_of())
    if not models:
        models.append(ModelSpec("base", source=args.model or "default"))
    return models


def _with_base(spec: Any, model: str) -> Any:
    import dataclasses

    return dataclasses.replace(spec, source=model)


def _synonyms(pairs: list[str]) -> dict[str, str]:
    from lora_studio.core.evaluate import EvaluationError

    out = {}
    for pair in pairs:
        word, sep, label = pair.partition("=")
        if not sep or not word.strip() or not label.strip():
            raise EvaluationError(f"--synonym {pair!r}: expected WORD=LABEL, e.g. --synonym good=positive")
        out[word.strip()] = label.strip()
    return out


class _Progress:
    """One line per stage on stderr; counts update in place on a terminal."""

    def __init__(self) -> None:
        self.last: tuple[str, str] | None = None
        self.tty = sys.stderr.isatty()

    def __call__(self, event: Any) -> None:
        key = (event.stage, event.model)
        head = f"[{event.model_index + 1}/{event.models}] {event.model}: " if event.model else ""
        if key != self.last:
            if self.last is not None and self.tty:
                print(file=sys.stderr)
            self.last = key
            if not self.tty:
                print(f"{head}{event.stage} ...", file=sys.stderr, flush=True)
        if self.tty:
            count = f" {event.done}/{event.total}" if event.total > 1 else ""
            print(f"\r{head}{event.stage}{count}", end="", file=sys.stderr, flush=True)
            if event.stage == "saving" or (event.stage == "comparing"):
                print(file=sys.stderr)
                self.last = None


def print_report(report: dict[str, Any]) -> None:
    """The human table: a header, one row per metric, notes, confusion matrices, where it was saved."""
    data = report["eval_set"]
    unit = {"pairs": "pairs", "labels": "labelled answers"}.get(data.get("kind", "sft"), "examples")
    print(f"Eval set  {data['name']}  ({data['examples']} {unit})  source: {data['source']}")
    print(f"Metric    {report['metric'] or 'loss only'}  — {report['metric_reason']}")
    from lora_studio.core.evaluate import display_labels
    from lora_studio.core.evaluate.scoring import DEFINITIONS

    short = display_labels([entry["model"]["label"] for entry in report["models"]])
    labels = list(short.values())
    baseline = short.get(report.get("baseline"), report.get("baseline"))
    header = ["METRIC", *labels]
    others = [label for label in labels if label != baseline]
    conf = round(report["options"]["confidence"] * 100)
    header += [f"Δ {label} − {baseline}  [{conf}% CI]" for label in others] if len(labels) > 1 else []
    table = [header]
    for row in report["comparison"]:
        values = [_fmt(v, row["digits"]) for v in row["values"]]
        for k, own in enumerate(row.get("intervals") or []):
            if own:  # a fine-tune against its own base: its value's interval, read against the null line
                mark = " †" if own.get("excludes_null") else ""
                values[k] += f"  [{own['low']:.{row['digits']}f}, {own['high']:.{row['digits']}f}]{mark}"
        cells = [row["title"], *values]
        diffs = {short.get(d["model"], d["model"]): d for d in row["differences"]}
        for label in others if len(labels) > 1 else []:
            d = diffs.get(label)
            cells.append(_fmt_diff(d, row["digits"]) if d and "estimate" in d else "")
        table.append(cells)
    print()
    _print_table(table)
    if any(d.get("excludes_zero") for row in report["comparison"] for d in row["differences"]):
        print("* the interval excludes 0: unlikely to be noise")
    if any(
        own and own.get("excludes_null") for row in report["comparison"] for own in row.get("intervals") or []
    ):
        print(f"† the {conf}% interval excludes the chance line (0.5 for shares, 0 for margins)")
    definitions = DEFINITIONS.get(report["metric"])
    if definitions:
        print(textwrap.fill(definitions, width=100))
    for note in report["notes"]:
        print(f"note: {note}")
    for entry in report["models"]:
        confusion = entry["metrics"].get("confusion")
        if confusion:
            _print_confusion(short[entry["model"]["label"]], confusion)
    for path in report["saved"]:
        print(f"saved: {path}")


def _print_confusion(label: str, confusion: dict[str, Any]) -> None:
    names = confusion["labels"]
    rows = [["gold \\ answer", *names, "(unparseable)"]]
    rows += [
        [name, *map(str, line), str(unparsed)]
        for name, line, unparsed in zip(names, confusion["matrix"], confusion["unparseable"], strict=True)
    ]
    print(f"\nConfusion matrix — {label}")
    _print_table(rows, indent="  ")


def _print_worst(report: Any, n: int) -> None:
    from lora_studio.core.evaluate.inputs import answer_text

    result = report.results[-1]
    keys = ("correct", "exact", "rouge_l", "margin", "reward_correct")
    key = next((k for k in keys if any(k in r for r in result.rows)), "loss")
    reverse = key == "loss"
    order = sorted(
        range(len(result.rows)),
        key=lambda i: (result.rows[i].get(key) is None, result.rows[i].get(key) or 0),
        reverse=reverse,
    )
    print(f"\nLowest-scoring examples for {result.spec.label} (by {key}):")
    for i in order[:n]:
        item, row = report.eval_set.items[i], result.rows[i]
        prompt = item.prompt[-1]["content"] if item.prompt else "(text)"
        name = (
            "reference:"
            if item.pair is None
            else ("chosen:   " if hasattr(item.pair, "rejected") else "answer:   ")
        )
        print(f"  {item.location}\n    prompt:    {_clip(prompt)}\n    {name} {_clip(item.reference or '')}")
        if item.pair is not None:  # preference data: nothing was generated
            other = getattr(item.pair, "rejected", None)
            label = "rejected:  " + _clip(answer_text(other)) if other else f"label:     {row.get('label')}"
            print(f"    {label}   ({key} {_fmt(row.get(key), 3)})")
            continue
        print(f"    answer:    {_clip(row.get('answer') or '')}   ({key} {_fmt(row.get(key), 3)})")


def _clip(text: str, width: int = 100) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _fmt(value: Any, digits: int) -> str:
    if value is None:
        return "n/a"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _fmt_diff(d: dict[str, Any], digits: int) -> str:
    mark = " *" if d.get("excludes_zero") else ""
    return f"{d['estimate']:+.{digits}f}  [{d['low']:+.{digits}f}, {d['high']:+.{digits}f}]{mark}"


def _print_table(rows: list[list[str]], indent: str = "") -> None:
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print(
            indent
            + "  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )
