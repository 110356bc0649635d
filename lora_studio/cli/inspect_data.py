"""``lora-studio inspect-data PATH``: what a dataset file is, and exactly what the model will learn from it.

Reads the whole file and lists every invalid record with its location (not only the first), then
loads only the model's tokenizer to show token statistics and the first example with its trained
spans marked. The exit status is 0 only when training could use the file as given.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from typing import Any

from lora_studio.cli import use_color
from lora_studio.core.config import RunConfig
from lora_studio.core.data import LabelledAnswer
from lora_studio.core.errors import ConfigError, DatasetError

_SHOW_ERRORS = 10
_SHOW_CHARS = 4000


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "inspect-data",
        help="check a dataset: format, errors with locations, token statistics, what gets trained",
    )
    parser.add_argument(
        "path", help="a .json/.jsonl/.csv/.tsv/.parquet/.txt file, a folder of them, or 'demo'"
    )
    parser.add_argument(
        "--format",
        default="auto",
        choices=["auto", "alpaca", "sharegpt", "messages", "prompt_completion", "text"],
        help="record format (default: detected from the fields)",
    )
    parser.add_argument("--model", default="default", help="model whose tokenizer and chat template to use")
    parser.add_argument(
        "--max-seq-len", type=int, default=512, help="longest example in tokens (default 512)"
    )
    parser.add_argument(
        "--train-on", choices=["assistant", "all"], default="assistant", help="tokens the loss uses"
    )
    parser.add_argument(
        "--column",
        action="append",
        default=[],
        metavar="FIELD=COLUMN",
        help="map a field to a column name, e.g. --column instruction=question (repeatable)",
    )
    parser.add_argument(
        "--txt-split", choices=["paragraph", "line"], default="paragraph", help=".txt documents"
    )
    parser.add_argument(
        "--skip-invalid", action="store_true", help="accept the file if some records are valid"
    )
    parser.add_argument(
        "--examples", type=int, default=1, help="how many rendered examples to show (default 1)"
    )
    parser.add_argument(
        "--preference",
        action="store_true",
        help="read the file as preference data: chosen/rejected pairs (detected by themselves) or KTO labels",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lora_studio.core.data import (
        build_dataset,
        error_dict,
        preview_conversations,
        scan_conversations,
        sniff_preference_format,
    )
    from lora_studio.core.models import load_tokenizer, resolve_model

    data = _data_section(args)
    # Pairs (chosen/rejected) cannot be read as supervised data at all; KTO's labelled rows can (with a
    # warning about the undesirable ones), so they are inspected as preference data only when asked.
    if args.preference or (args.format == "auto" and sniff_preference_format(data.path) not in (None, "kto")):
        return _inspect_preferences(args)
    collecting = data.model_copy(update={"skip_invalid": True})
    conversations, report = scan_conversations(collecting)
    if not conversations:
        errors = report.skipped
        first = f"; first problem: {errors[0]}" if errors else ""
        if args.json:
            payload = {
                "usable": False,
                "detection": report.to_dict(),
                "errors": [error_dict(e) for e in errors],
            }
            print(json.dumps(payload, indent=2))
        else:
            _print_errors(errors, len(errors))
        print(f"error: no usable records in {args.path}{first}", file=sys.stderr)
        return 1
    tokenizer = load_tokenizer(resolve_model(args.model).path)
    prepared = build_dataset(conversations, report, collecting, tokenizer)
    examples = preview_conversations(conversations, data, tokenizer, max(0, args.examples))
    errors = prepared.skipped
    usable = not errors or args.skip_invalid
    if args.json:
        payload = {
            "usable": usable,
            "stats": prepared.stats.to_dict(),
            "preview": [e.to_dict() for e in examples],
            "errors": [error_dict(e) for e in errors],
        }
        print(json.dumps(payload, indent=2))
    else:
        _print_report(prepared.stats, examples, errors, color=use_color(sys.stdout))
    if not usable:
        print(
            f"error: {len(errors)} of {report.records} records have problems; fix them, or train with "
            "skip_invalid = true (--skip-invalid) to leave them out",
            file=sys.stderr,
        )
        return 1
    return 0


def _data_section(args: argparse.Namespace) -> Any:
    columns = {}
    for item in args.column:
        name, sep, column = item.partition("=")
        if not sep or not name.strip() or not column.strip():
            raise ConfigError({"data.columns": f"'{item}' is not FIELD=COLUMN"})
        columns[name.strip()] = column.strip()
    values = {
        "path": args.path,
        "format": args.format,
        "max_seq_len": args.max_seq_len,
        "train_on": args.train_on,
        "columns": columns,
        "txt_split": args.txt_split,
        "skip_invalid": args.skip_invalid,
    }
    return RunConfig.from_dict({"data": values}).data


def _print_report(stats: Any, examples: list[Any], errors: list[DatasetError], *, color: bool) -> None:
    lengths, pad = stats.lengths, stats.padding
    share = stats.trainable_tokens / stats.total_tokens if stats.total_tokens else 0.0
    rows = [
        ("Dataset", ", ".join(stats.files)),
        ("Format", f"{stats.format} ({'detected' if stats.detected else 'chosen'})"),
        *[("Evidence", line) for line in stats.evidence],
        (
            "Records",
            f"{stats.records} read, {stats.records - len(errors)} usable, {len(errors)} with problems",
        ),
        (
            "Examples",
            f"{stats.examples} train, {stats.eval_examples} eval; {stats.truncated} cut to max_seq_len "
            f"{stats.max_seq_len} ({stats.truncated_tokens:,} tokens cut); {stats.dropped} dropped "
            "(nothing trainable left)",
        ),
        (
            "Tokens",
            f"min {lengths['min']}, median {lengths['median']:g}, p95 {lengths['p95']}, max {lengths['max']}; "
            f"{stats.total_tokens:,} in all, {stats.trainable_tokens:,} trained ({share:.0%}, on {stats.train_on})",
        ),
        (
            "Padding",
            f"batches of {pad['batch_size']}: {pad['padded_random']:.1%} in random order, "
            f"{pad['padded_length_grouped']:.1%} grouped by length, 0% packed",
        ),
        ("Template", stats.template),
        *[("Warning", line) for line in stats.warnings],
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    edges, counts = stats.histogram["edges"], stats.histogram["counts"]
    top = max(counts, default=0)
    for i, count in enumerate(counts):
        bar = "#" * round(30 * count / top) if top else ""
        last = min(edges[i + 1] - 1, lengths["max"])
        span = f"{edges[i]}-{last}" if last > edges[i] else str(edges[i])
        print(f"{'Lengths' if i == 0 else '':<{width}}  {span:>11} tokens  {bar} {count}")
    for number, example in enumerate(examples, start=1):
        cut = ", truncated" if example.truncated else ""
        print(
            f"\nExample {number} ({example.location}): {example.tokens} tokens{cut}, "
            f"{example.trainable_tokens} trained — {'green' if color else '[[brackets]]'} = learnt"
        )
        print(_marked(example.segments, color=color))
    _print_errors(errors, len(errors))


def _marked(segments: list[tuple[str, bool]], *, color: bool) -> str:
    out, used = [], 0
    for text, trained in segments:
        if used + len(text) > _SHOW_CHARS:
            text = text[: max(0, _SHOW_CHARS - used)] + "…"
        used += len(text)
        if trained:
            out.append(f"\033[1;32m{text}\033[0m" if color else f"[[{text}]]")
        else:
            out.append(f"\033[2m{text}\033[0m" if color else text)
        if used >= _SHOW_CHARS:
            out.append(f"\n(… {sum(len(t) for t, _ in segments) - used:,} more characters)")
            break
    return "".join(out)


def _print_errors(errors: list[DatasetError], total: int) -> None:
    if not errors:
        return
    shown = errors[:_SHOW_ERRORS]
    print(f"\nProblems (first {len(shown)} of {total}):" if total > len(shown) else f"\nProblems ({total}):")
    for error in shown:
        print(f"  {error}")


def _inspect_preferences(args: argparse.Namespace) -> int:
    """A preference file (chosen/rejected pairs or KTO labels): its shape, counts and every bad record.

    Supervised fine-tuning cannot train on it, so the exit status is 1 even for a clean file; the
    report is still what a person needs to fix the file before preference tuning.
    """
    from lora_studio.core.data import error_dict, scan_preferences

    examples, report = scan_preferences(args.path)
    shown = examples[: max(0, args.examples)]
    if args.json:
        payload = {
            "usable": False,
            "preference": report.to_dict(),
            "preview": [asdict(example) for example in shown],
            "errors": [error_dict(e) for e in report.skipped],
        }
        print(json.dumps(payload, indent=2, ensure_ascii=False))
    else:
        usable = report.records - len(report.skipped)
        counts = (
            f"{report.pairs} pairs (chosen and rejected answers)"
            if report.kind == "pairs"
            else f"{report.desirable} desirable and {report.undesirable} undesirable answers (KTO labels)"
        )
        rows = [
            ("Dataset", ", ".join(report.files)),
            ("Format", f"preference data, {report.format} (detected)"),
            *[("Evidence", line) for line in report.evidence],
            ("Records", f"{report.records} read, {usable} usable, {len(report.skipped)} with problems"),
            ("Examples", counts),
            *[("Warning", line) for line in report.warnings],
        ]
        width = max(len(k) for k, _ in rows)
        for key, value in rows:
            print(f"{key:<{width}}  {value}")
        for number, example in enumerate(shown, start=1):
            print(f"\nExample {number} ({example.file}, record {example.record}):")
            for turn in example.prompt:
                print(f"  {turn['role']:<9}  {_short(turn['content'])}")
            if isinstance(example, LabelledAnswer):
                sides = [("desirable" if example.desirable else "undesirable", example.completion)]
            else:
                sides = [("chosen", example.chosen), ("rejected", example.rejected)]
            for name, answer in sides:
                print(f"  {name:<9}  {_short(' / '.join(t['content'] for t in answer))}")
        _print_errors(report.skipped, len(report.skipped))
    print(
        f"error: {args.path} holds preference data ({report.format}); supervised fine-tuning needs one "
        "answer per prompt and cannot train on it",
        file=sys.stderr,
    )
    return 1


def _short(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
