"""``lora-studio inspect-data PATH``: what a dataset file is, and exactly what the model will learn from it.

Reads the whole file and lists every invalid record with its location (not only the first), then
loads only the model's tokenizer to show token statistics and the first example with its trained
spans marked. The exit status is 0 only when training could use the file as given.

Supervised data (``--json``) prints one object with these keys (stable)::

    usable      bool: training could use the file as given (exit status 0)
    format      the record format: alpaca | sharegpt | messages | prompt_completion | text
    detected    bool: the format was detected from the fields (false: chosen with --format)
    records     records read, in every file (before any are left out)
    evidence    why it was read that way: which fields, in how many records, column mapping, tools
    warnings    valid but probably unintended: thumbs-down labels, media a text model cannot see,
                speakers with no known role, template placeholders, ...
    speakers    speaker names with no known role: {name: {turns, records, guess}} (guess: the role
                --role-map would most likely give it)
    labels      records with a true/false label: {true, false} ({} when none)
    left_out    records labelled false and left out by --positive-only
    media       records that refer to images, audio or video
    stats       the dataset statistics training uses (null when nothing is usable)
    preview     the first --examples examples: {segments [{text, trained, kind?}], tokens,
                trainable_tokens, original_tokens, truncated, dropped, location, fallback_template};
                kind is "tool_call", "tool_result" or "reasoning" where a segment is one
    errors      every record problem: {message, reason, file, line, column, record, field}
    error       what stops training on the file as a whole (null when usable or only records fail)

Preference files (chosen/rejected pairs, or answers labelled good or bad for KTO) are recognised by
their fields and shown as training with a preference method prepares them: each pair's chosen and
rejected side rendered with the chat template, trained tokens marked, and how many pairs (or good
and bad answers) there are, how many were cut to ``--max-seq-len`` and which records are left out.
``--method`` inspects for one method (``sft`` reads a KTO ``messages`` file as supervised data).
``--json`` on preference data prints one object with these keys (stable)::

    usable      bool: training with the method could use the file as given (exit status 0)
    kind        "pairs" | "labels"
    format      the preference shape: explicit | implicit | sharegpt | alpaca | kto
    method      the method it was prepared for: the one given, else "dpo" (pairs) / "kto" (labels)
    method_requested  the --method given, or null (auto)
    methods     the methods that can train on it: pairs → dpo, orpo, simpo, kto; labels → kto
    counts      records, pairs, desirable, undesirable (usable in the file); train, eval (pairs or
                answers for training / held out; null when the method cannot use the data); train_desirable,
                train_undesirable (KTO); truncated (pairs or answers with a side cut to
                max_seq_len), truncated_tokens; skipped (records with a problem)
    stats       training's dataset statistics (as ``stats`` for supervised data), or null
    longest_side  histogram (edges, counts) of each pair's longer side in tokens, before cutting
    preview     the first --examples pairs: {kind: "pair", location, prompt_tokens, truncated,
                chosen, rejected} (each side: segments [{text, trained}], tokens, trainable_tokens,
                original_tokens, truncated) or KTO answers {kind: "answer", label: good|bad,
                desirable, answer, ...}
    preference  the reader's report: format, files, records, pairs, desirable, undesirable,
                evidence, warnings, skipped
    errors      every problem: {message, reason, file, line, column, record, field}
    error       what stops training with the method (null when usable)
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from lora_studio.cli import use_color
from lora_studio.core.config import RunConfig
from lora_studio.core.errors import ConfigError, DatasetError

_SHOW_ERRORS = 10
_SHOW_CHARS = 4000


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "inspect-data",
        help="check a dataset: format, errors with locations, token statistics, what gets trained",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
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
        "--role-map",
        metavar="NAME=ROLE,...",
        help="map speaker names to roles, e.g. --role-map Customer=user,Agent=assistant "
        "(roles: system, user, assistant, tool)",
    )
    parser.add_argument(
        "--positive-only",
        action="store_true",
        help="keep only records labelled true (thumbs up) and read them as supervised data",
    )
    parser.add_argument(
        "--tools", metavar="FILE", help="a .json list of tool definitions for records without their own"
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
        "--method",
        choices=["auto", "sft", "dpo", "kto", "orpo", "simpo"],
        default="auto",
        help="inspect for this training method (default: supervised data as supervised, preference "
        "pairs for DPO/ORPO/SimPO, KTO labels for KTO); 'sft' reads a KTO messages file as "
        "supervised data",
    )
    parser.add_argument(
        "--preference",
        action="store_true",
        help="read the file as preference data (chosen/rejected pairs or KTO labels) even with --format",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lora_studio.core.data import (
        Encoder,
        build_dataset,
        check_tool_calls,
        error_dict,
        preview_conversations,
        scan_conversations,
        sniff_preference_format,
    )
    from lora_studio.core.data.preference_preview import is_preference_data, methods_text
    from lora_studio.core.models import load_tokenizer, resolve_model

    data = _data_section(args)
    if args.method == "sft":
        # KTO's labelled messages can be read as supervised data (with a warning about the bad
        # answers); pairs cannot: say so instead of listing every record as unreadable
        if sniff_preference_format(data.path) not in (None, "kto"):
            print(
                f"error: {args.path} holds preference pairs (chosen and rejected answers): supervised "
                f"fine-tuning cannot train on them; train with {methods_text('pairs')} instead "
                "(lora-studio train --method dpo, or Method on the Train page)",
                file=sys.stderr,
            )
            return 1
    elif args.method != "auto" or args.preference or is_preference_data(data, "sft"):
        return _inspect_preferences(args, data)
    collecting = data.model_copy(update={"skip_invalid": True})
    conversations, report = scan_conversations(collecting)
    if not conversations:
        errors = report.skipped
        first = f"; first problem: {errors[0]}" if errors else ""
        if args.json:
            payload = {
                **_found(report, usable=False),
                "stats": None,
                "preview": [],
                "errors": [error_dict(e) for e in errors],
                "error": None,
                "detection": report.to_dict(),
            }
            print(json.dumps(payload, indent=2, ensure_ascii=False))
        else:
            for line in report.warnings:
                print(f"Warning  {line}")
            _print_errors(errors, len(errors))
        print(f"error: no usable records in {args.path}{first}", file=sys.stderr)
        return 1
    tokenizer = load_tokenizer(resolve_model(args.model).path)
    try:
        if not args.skip_invalid:  # tool calls the template cannot render: one message, not one per record
            encoder = Encoder(tokenizer, train_on=data.train_on, max_seq_len=data.max_seq_len)
            check_tool_calls(encoder, conversations, report.files)
        prepared = build_dataset(conversations, report, collecting, tokenizer)
    except DatasetError as exc:
        if not args.json:
            raise
        payload = {
            **_found(report, usable=False),
            "stats": None,
            "preview": [],
            "errors": [error_dict(e) for e in report.skipped],
            "error": error_dict(exc),
        }
        print(json.dumps(payload, indent=2, ensure_ascii=False))
        print(f"error: {exc}", file=sys.stderr)
        return 1
    examples = preview_conversations(conversations, data, tokenizer, max(0, args.examples))
    errors = prepared.skipped
    usable = not errors or args.skip_invalid
    if args.json:
        payload = {
            **_found(report, usable=usable),
            "stats": prepared.stats.to_dict(),
            "preview": [e.to_dict() for e in examples],
            "errors": [error_dict(e) for e in errors],
            "error": None,
        }
        print(json.dumps(payload, indent=2, ensure_ascii=False))
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


def _found(report: Any, *, usable: bool) -> dict[str, Any]:
    """The documented top-level keys that say what the file is (see the module's docstring)."""
    return {
        "usable": usable,
        "format": report.format,
        "detected": report.detected,
        "records": report.records,
        "evidence": list(report.evidence),
        "warnings": list(report.warnings),
        "speakers": dict(report.speakers),
        "labels": dict(report.labels),
        "left_out": report.left_out,
        "media": report.media,
    }


def role_map_arg(text: str) -> dict[str, str]:
    """``Customer=user,Agent=assistant`` → a mapping (``data.role_map`` validates the roles)."""
    mapping = {}
    for item in (p for p in text.split(",") if p.strip()):
        name, sep, role = item.rpartition("=")
        if not sep or not name.strip() or not role.strip():
            raise ConfigError({"data.role_map": f"'{item}' is not NAME=ROLE (e.g. Customer=user)"})
        mapping[name.strip()] = role.strip()
    return mapping


def _data_section(args: argparse.Namespace) -> Any:
    columns = {}
    for item in args.column:
        name, sep, column = item.partition("=")
        if not sep or not name.strip() or not column.strip():
            raise ConfigError({"data.columns": f"'{item}' is not FIELD=COLUMN"})
        columns[name.strip()] = column.strip()
    values = {
        "role_map": role_map_arg(args.role_map) if args.role_map else {},
        "positive_only": args.positive_only,
        "tools_path": args.tools,
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
    _print_histogram(stats.histogram, width, "Lengths", lengths["max"])
    for number, example in enumerate(examples, start=1):
        cut = ", truncated" if example.truncated else ""
        print(
            f"\nExample {number} ({example.location}): {example.tokens} tokens{cut}, "
            f"{example.trainable_tokens} trained — {'green' if color else '[[brackets]]'} = learnt"
        )
        parts = _kinds_line(example)
        if parts:
            print(parts)
        print(_marked(example.segments, color=color, kinds=example.kinds))
    _print_errors(errors, len(errors))


def _print_histogram(histogram: dict[str, list[int]], width: int, label: str, longest: int | None) -> None:
    """One bar per bin; ``longest`` caps the last bin's range (the bins are of equal width)."""
    edges, counts = histogram.get("edges", []), histogram.get("counts", [])
    top = max(counts, default=0)
    for i, count in enumerate(counts):
        bar = "#" * round(30 * count / top) if top else ""
        last = edges[i + 1] - 1 if longest is None else min(edges[i + 1] - 1, longest)
        span = f"{edges[i]}-{last}" if last > edges[i] else str(edges[i])
        print(f"{label if i == 0 else '':<{width}}  {span:>11} tokens  {bar} {count}")


_KIND_WORDS = {"tool_call": "tool calls", "tool_result": "tool results", "reasoning": "reasoning"}
#: Colours of a trained / masked segment by kind (a terminal's bold green is "learnt").
_KIND_COLOURS = {
    "tool_call": ("\033[1;4;32m", "\033[2;36m"),
    "tool_result": ("\033[1;33m", "\033[2;33m"),
    "reasoning": ("\033[3;32m", "\033[2;3m"),
}


def _kinds_line(example: Any) -> str:
    """'Tool calls: learnt · tool results: context only · reasoning: learnt' for an example that has them."""
    found: dict[str, set[bool]] = {}
    for (_, trained), kind in zip(example.segments, example.kinds or [], strict=False):
        if kind in _KIND_WORDS:
            found.setdefault(kind, set()).add(trained)
    words = []
    for kind, states in found.items():
        state = "learnt" if states == {True} else "context only" if states == {False} else "partly learnt"
        words.append(f"{_KIND_WORDS[kind]}: {state}")
    return ("  " + " · ".join(words)) if words else ""


def _marked(segments: list[tuple[str, bool]], *, color: bool, kinds: list[str] | None = None) -> str:
    if not color and kinds:  # brackets mark only what is learnt: one pair around each learnt stretch
        merged: list[tuple[str, bool]] = []
        for text, trained in segments:
            if merged and merged[-1][1] == trained:
                merged[-1] = (merged[-1][0] + text, trained)
            else:
                merged.append((text, trained))
        segments, kinds = merged, None
    out, used = [], 0
    for i, (text, trained) in enumerate(segments):
        if used + len(text) > _SHOW_CHARS:
            text = text[: max(0, _SHOW_CHARS - used)] + "…"
        used += len(text)
        kind = kinds[i] if kinds and i < len(kinds) else "text"
        if color and kind in _KIND_COLOURS:
            out.append(f"{_KIND_COLOURS[kind][0 if trained else 1]}{text}\033[0m")
        elif trained:
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


def _inspect_preferences(args: argparse.Namespace, data: Any) -> int:
    """A preference file, prepared as training with ``--method`` (or the method its kind implies) would."""
    from lora_studio.core.data import error_dict
    from lora_studio.core.data.preference_preview import inspect_preferences
    from lora_studio.core.models import load_tokenizer, resolve_model

    tokenizer = load_tokenizer(resolve_model(args.model).path)
    method = None if args.method == "auto" else args.method
    found = inspect_preferences(data, tokenizer, method, preview_count=max(0, args.examples))
    usable = found.error is None
    if args.json:
        payload = {
            "usable": usable,
            **found.to_dict(),
            "preference": found.report.to_dict(),
            "errors": [error_dict(e) for e in found.errors],
            "error": error_dict(found.error) if found.error else None,
        }
        print(json.dumps(payload, indent=2, ensure_ascii=False))
    else:
        _print_preference_report(found, color=use_color(sys.stdout))
    if not usable:
        error = found.error
        if found.stats is not None and found.errors:  # only record problems: skipping would do
            print(
                f"error: {len(found.errors)} of {found.report.records} records have problems; fix them, or "
                "train with skip_invalid = true (--skip-invalid) to leave them out",
                file=sys.stderr,
            )
        else:
            print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


def _print_preference_report(found: Any, *, color: bool) -> None:
    from lora_studio.core.data.preference_preview import METHOD_NAMES, methods_text

    report, stats, counts = found.report, found.stats, found.counts()
    problems = len(found.errors)
    unit = "pairs" if found.method != "kto" else "answers"
    if found.kind == "pairs":
        what = f"{report.pairs} pairs of a chosen and a rejected answer read"
    else:
        what = f"{report.desirable} good and {report.undesirable} bad answers read (KTO labels)"
    method = METHOD_NAMES[found.method]
    choose = (
        f"{methods_text(found.kind)} — choose one with `lora-studio train --method "
        f"{'dpo' if found.kind == 'pairs' else 'kto'}` (or Method on the Train page)"
    )
    rows = [
        ("Dataset", ", ".join(report.files)),
        ("Format", f"preference data, {report.format} (detected)"),
        *[("Evidence", line) for line in report.evidence],
        ("Records", f"{report.records} read, {report.records - problems} usable, {problems} with problems"),
        ("Examples", what),
        ("Methods", choose),
    ]
    if stats is not None:
        lengths = stats.lengths
        share = stats.trainable_tokens / stats.total_tokens if stats.total_tokens else 0.0
        split = f"{stats.examples} {unit} for training, {stats.eval_examples} held out"
        if found.method == "kto":
            split += f" ({counts['train_desirable']} good and {counts['train_undesirable']} bad in training)"
        side = "both sides" if unit == "pairs" else "with its prompt"
        cut = "have a side cut" if unit == "pairs" else "cut"
        rows += [
            (f"As {method}" if found.requested else "Training", split),
            (
                "Cut",
                f"{stats.truncated} {unit} {cut} to max_seq_len {stats.max_seq_len} "
                f"({stats.truncated_tokens:,} tokens cut; the start is kept)",
            ),
            (
                "Tokens",
                f"per {unit[:-1]}, {side}: min {lengths['min']}, median {lengths['median']:g}, "
                f"max {lengths['max']}; {stats.total_tokens:,} in all, {stats.trainable_tokens:,} trained "
                f"({share:.0%}: the answers only)",
            ),
            ("Template", stats.template),
            *[("Warning", line) for line in stats.warnings],
        ]
    else:
        rows += [*[("Warning", line) for line in report.warnings]]
    width = max(len("Longest side"), *(len(k) for k, _ in rows))
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    _print_histogram(found.longest_side, width, "Longest side", None)
    for number, preview in enumerate(found.previews, start=1):
        cut = ", truncated" if preview.truncated else ""
        legend = "green" if color else "[[brackets]]"
        if hasattr(preview, "chosen"):
            print(
                f"\nPair {number} ({preview.location}): prompt {preview.prompt_tokens} tokens{cut} — "
                f"{legend} = learnt"
            )
            sides = [("Chosen", preview.chosen), ("Rejected", preview.rejected)]
        else:
            print(
                f"\nAnswer {number} ({preview.location}), labelled {preview.label}: prompt "
                f"{preview.prompt_tokens} tokens{cut} — {legend} = learnt"
            )
            sides = [(f"Answer ({preview.label})", preview.answer)]
        for name, example in sides:
            note = f", cut from {example.original_tokens}" if example.truncated else ""
            print(f"-- {name}: {example.tokens} tokens{note}, {example.trainable_tokens} trained")
            print(_marked(example.segments, color=color))
    _print_errors(found.errors, len(found.errors))


def _short(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
