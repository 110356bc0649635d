"""Raw records → canonical conversations: format detection, column mapping and strict validation.

Every supported format becomes the same :class:`Conversation` (a list of ``{role, content}`` turns,
system prompt first when there is one; or a plain-text document), so rendering and loss masking
have one code path. Validation is strict and located: a record that would train the model on
something the user did not mean (a missing answer, an unknown speaker, a field of the wrong type)
is an error naming the file, line, record and field, never a silent drop. Turns themselves (speakers,
typed content parts, tool calls, reasoning) are read by :mod:`lora_studio.core.data.turns`.

Column layouts from other tools are read as the format whose fields they are: ``query``/``response``
(+ ``history``, ``system``; ms-swift), ``instruction``/``response`` and ``instruction``/``context``/
``response`` (Dolly) as Alpaca; ``question``/``answer`` as prompt/completion; ``system`` + a
``conversation`` list of ``{human, assistant}`` pairs (ms-swift's "sharegpt") as ShareGPT. The
evidence names the columns, so a surprising reading is visible.

Detection votes: each record's best match (in the order of ``FORMATS``) is counted and the most
common wins, so one odd record does not decide the format of a thousand good ones; it is then
reported as mixing formats. This module is Qt-free and imports nothing heavy.
"""

from __future__ import annotations

import json
import re
import threading
from collections import Counter
from typing import Any

from lora_studio.core.config import DataSection
from lora_studio.core.data.files import (
    RawRecord,
    SourceFile,
    check_cancel,
    no_usable_records,
    open_source,
    readable_records,
    resolve_paths,
)
from lora_studio.core.data.notes import labelled, media_note, shared_tools, speaker_note
from lora_studio.core.data.report import Conversation, DetectionReport, count, error_dict
from lora_studio.core.data.turns import ROLES, kind_of, read_turns
from lora_studio.core.errors import DatasetError

#: Detection order: when a record fits several formats, the first one wins.
FORMATS = ("messages", "sharegpt", "alpaca", "prompt_completion", "text")

#: Canonical field → the column names it is read from, first present wins (``data.columns`` overrides).
FIELDS: dict[str, dict[str, tuple[str, ...]]] = {
    "messages": {"messages": ("messages",), "tools": ("tools", "functions")},
    "sharegpt": {
        "conversations": ("conversations", "conversation"),
        "system": ("system",),
        "tools": ("tools", "functions"),
    },
    "alpaca": {
        "instruction": ("instruction", "query"),
        "input": ("input", "context"),
        "output": ("output", "response"),
        "system": ("system", "system_prompt"),
        "history": ("history",),
    },
    "prompt_completion": {
        "prompt": ("prompt", "question", "input", "query"),
        "completion": ("completion", "answer", "response", "output"),
        "system": ("system", "system_prompt"),
    },
    "text": {"text": ("text",)},
}
REQUIRED = {
    "messages": ("messages",),
    "sharegpt": ("conversations",),
    "alpaca": ("instruction", "output"),
    "prompt_completion": ("prompt", "completion"),
    "text": ("text",),
}
_PLACEHOLDER = re.compile(r"\{\{\s*[A-Za-z_]\w*\s*\}\}")
__all__ = ["FIELDS", "FORMATS", "REQUIRED", "ROLES", "Conversation", "DetectionReport", "error_dict"]


def load_conversations(
    data: DataSection, *, cancel: threading.Event | None = None
) -> tuple[list[Conversation], DetectionReport]:
    """Read, detect and validate a dataset without a tokenizer (the Data page's raw view).

    Stops at the first invalid record unless ``data.skip_invalid`` is set, in which case the
    invalid ones are listed in ``report.skipped``. Raises :class:`DatasetError` when nothing usable
    remains.
    """
    conversations, report = scan_conversations(data, cancel=cancel, stop_at_first=not data.skip_invalid)
    if not conversations:
        raise no_usable_records(report.records, report.skipped, report.files)
    return conversations, report


def scan_conversations(
    data: DataSection, *, cancel: threading.Event | None = None, stop_at_first: bool = False
) -> tuple[list[Conversation], DetectionReport]:
    """Read every record, collecting each invalid one in ``report.skipped`` (for ``inspect-data``).

    File-level problems (missing, empty, not UTF-8, broken JSON array) always raise.
    """
    mapping = _check_mapping(data.columns)
    files = resolve_paths(data.path)
    report = DetectionReport(
        format=data.format, detected=data.format == "auto", files=[str(p) for p in files]
    )
    conversations: list[Conversation] = []
    file_formats: dict[str, str] = {}
    tools = shared_tools(data.tools_path, report)
    for path in files:
        source = open_source(path, txt_split=data.txt_split)
        raws, count = readable_records(source, report.skipped, cancel=cancel, stop_at_first=stop_at_first)
        report.records += count
        if not raws:
            continue
        fmt = _file_format(source, raws, data, mapping, report)
        file_formats[str(path)] = fmt
        raws = labelled(raws, data.positive_only, report, source.path.name)
        for raw in raws:
            check_cancel(cancel)
            try:
                conversations.append(_convert(raw, fmt, mapping, data, tools))
            except DatasetError as exc:
                if stop_at_first:
                    raise
                report.skipped.append(exc)
    formats = list(dict.fromkeys(file_formats.values()))
    if len(formats) > 1:
        first, other = (next(p for p, f in file_formats.items() if f == fmt) for fmt in formats[:2])
        raise DatasetError(
            f"files in this folder have different formats: {first} is {formats[0]} but {other} is {formats[1]}",
            file=data.path,
            hint="keep one format per dataset folder",
        )
    if formats:
        report.format = formats[0]
    _add_warnings(conversations, report)
    if data.positive_only and not report.labels:
        report.warnings.append(
            "positive_only is set, but no record has a true/false 'label': nothing was left out"
        )
    return conversations, report


def _check_mapping(columns: dict[str, str]) -> dict[str, str]:
    known = {name for fields in FIELDS.values() for name in fields}
    for key, value in columns.items():
        if key not in known:
            raise DatasetError(
                f"data.columns: '{key}' is not a field that can be mapped",
                hint=f"map one of {', '.join(sorted(known))} to a column name",
            )
        if not isinstance(value, str) or not value:
            raise DatasetError(f"data.columns: '{key}' must map to a column name")
    return dict(columns)


def _resolve(fmt: str, keys: set[str] | dict[str, Any], mapping: dict[str, str]) -> dict[str, str | None]:
    """Canonical field → the column to read it from (None when absent) for one record."""
    resolved: dict[str, str | None] = {}
    for name, candidates in FIELDS[fmt].items():
        if name in mapping:
            resolved[name] = mapping[name] if mapping[name] in keys else None
        else:
            resolved[name] = next((c for c in candidates if c in keys), None)
    return resolved


def _matches(fmt: str, keys: dict[str, Any], mapping: dict[str, str]) -> bool:
    # Mapping a field that another format requires (e.g. instruction) says which format is meant;
    # shared optional fields (system, tools, input) say nothing.
    if any(k not in FIELDS[fmt] and any(k in r for r in REQUIRED.values()) for k in mapping):
        return False
    resolved = _resolve(fmt, keys, mapping)
    return all(resolved[name] is not None for name in REQUIRED[fmt])


def best_match(keys: dict[str, Any], mapping: dict[str, str] | None = None) -> str | None:
    """The first format (in detection order) whose required fields this record has."""
    return next((f for f in FORMATS if _matches(f, keys, mapping or {})), None)


def _file_format(
    source: SourceFile,
    raws: list[RawRecord],
    data: DataSection,
    mapping: dict[str, str],
    report: DetectionReport,
) -> str:
    name, label = str(source.path), source.path.name
    if source.kind == "txt":
        if data.format not in ("auto", "text"):
            raise DatasetError(
                f"a .txt file is plain text, not {data.format}",
                file=name,
                hint="set format to 'text' or 'auto'",
            )
        split = "line" if data.txt_split == "line" else "blank-line-separated block"
        report.evidence.append(
            f"{label}: .txt file → text, one document per {split} ({count(len(raws), 'document')})"
        )
        lines = raws[0].data["text"].count("\n") + 1
        if data.txt_split == "paragraph" and len(raws) == 1 and lines > 1:
            report.warnings.append(
                f"{label} has no blank lines, so its {lines} lines became one document; set txt_split = 'line' "
                "for one document per line"
            )
        return "text"
    if source.columns is not None:
        for canonical, column in mapping.items():
            if column not in source.columns:
                raise DatasetError(
                    f"column '{column}' (mapped to '{canonical}') is not in the header",
                    file=name,
                    line=1 if source.kind != "parquet" else None,
                    hint=f"columns are: {', '.join(source.columns)}",
                )
    votes = Counter(best_match(r.data, mapping) for r in raws)
    report.counts.update({k: report.counts.get(k, 0) + v for k, v in votes.items() if k})
    if data.format != "auto":
        fmt = data.format
        report.evidence.append(f"{label}: format {fmt} chosen by the user")
    else:
        ranked = sorted((f for f in votes if f), key=lambda f: (-votes[f], FORMATS.index(f)))
        if not ranked:
            first = raws[0]
            fields = ", ".join(repr(k) for k in first.data) or "none"
            hint = "choose the format, or map columns with data.columns (e.g. instruction = 'question')"
            if {"chosen", "rejected"} & set(first.data):
                hint = (
                    "this looks like preference (DPO) data, which supervised fine-tuning cannot use "
                    "(`lora-studio inspect-data FILE` checks it as preference data)"
                )
            raise first.error(f"cannot tell the format: the record's fields are {fields}", hint=hint)
        fmt = ranked[0]
        example = next(r for r in raws if _matches(fmt, r.data, mapping))
        columns = _resolve(fmt, example.data, mapping)
        needed = " and ".join(f"'{columns[n]}'" for n in REQUIRED[fmt])
        report.evidence.append(
            f"{label}: {needed} in {votes[fmt]} of {count(len(raws), 'record')} → {fmt}{_layout(fmt, columns, mapping)}"
        )
    used: set[str] = set()
    unused: Counter[str] = Counter()
    for raw in raws:
        columns = {c for c in _resolve(fmt, raw.data, mapping).values() if c}
        used |= columns
        unused.update(k for k in raw.data if k not in columns and not (k == "label" and data.positive_only))
    mapped = [f"{c}→{col}" for c, col in mapping.items()]
    if mapped:
        report.evidence.append(f"{label}: column mapping {', '.join(mapped)}")
    if unused:
        listed = ", ".join(f"'{k}'" for k, _ in unused.most_common(8))
        report.evidence.append(f"{label}: fields not used: {listed}")
    if fmt in ("messages", "sharegpt"):
        column = _resolve(fmt, raws[0].data, mapping)["messages" if fmt == "messages" else "conversations"]
        speaker_note(raws, column, "role" if fmt == "messages" else "from", data.role_map, report, label)
    media_note(raws, report, label)
    return fmt


def _layout(fmt: str, columns: dict[str, str | None], mapping: dict[str, str]) -> str:
    """' (read as instruction = 'query', output = 'response')' when the columns are not the format's own."""
    renamed = [
        f"{name} = '{column}'"
        for name, column in columns.items()
        if column and column != name and name not in mapping and column != FIELDS[fmt][name][0]
    ]
    return f" (read as {', '.join(renamed)})" if renamed else ""


def _convert(
    raw: RawRecord,
    fmt: str,
    mapping: dict[str, str],
    data: DataSection,
    shared_tools: list[Any] | None = None,
) -> Conversation:
    if not _matches(fmt, raw.data, mapping):
        other = best_match(raw.data, mapping)
        resolved = _resolve(fmt, raw.data, mapping)
        missing = next(n for n in REQUIRED[fmt] if resolved[n] is None)
        if other and other != fmt:
            raise raw.error(
                f"record is in {other} format but this file is {fmt}: a file must not mix formats",
                hint="convert the record, or split the file by format",
            )
        column = mapping.get(missing, FIELDS[fmt][missing][0])
        note = f" (mapped to '{missing}')" if missing in mapping else ""
        fields = ", ".join(repr(k) for k in raw.data) or "none"
        raise raw.error(
            f"missing required field{note}", field=column, hint=f"the record's fields are {fields}"
        )
    cols = _resolve(fmt, raw.data, mapping)
    tools = None
    if fmt == "text":
        text = _string(raw, cols["text"])
        if not text.strip():
            raise raw.error("empty text", field=cols["text"])
        return Conversation([], text, None, raw.file, raw.line, raw.index, raw.column)
    if fmt in ("messages", "sharegpt"):
        key = cols[fmt if fmt == "messages" else "conversations"]
        keys = ("role", "content") if fmt == "messages" else ("from", "value")
        messages = read_turns(raw, key, *keys, data.role_map)  # type: ignore[arg-type]
        system = _optional_string(raw, cols.get("system"))
        tools = _tools(raw, cols.get("tools")) or shared_tools
    elif fmt == "alpaca":
        messages = _alpaca(raw, cols)
        system = _optional_string(raw, cols["system"])
    else:
        prompt, completion = _string(raw, cols["prompt"]), _string(raw, cols["completion"])
        if not prompt.strip():
            raise raw.error("empty prompt", field=cols["prompt"])
        if not completion.strip():
            raise raw.error("empty assistant answer", field=cols["completion"])
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]
        system = _optional_string(raw, cols["system"])
    has_system = any(m["role"] == "system" for m in messages[:1])
    system = system if system and system.strip() else data.system_prompt
    if system and not has_system:
        messages.insert(0, {"role": "system", "content": system})
    return Conversation(messages, None, tools, raw.file, raw.line, raw.index, raw.column)


def _string(raw: RawRecord, column: str | None) -> str:
    value = raw.data.get(column) if column else None
    if not isinstance(value, str):
        what = "is null" if value is None else f"must be text, not {kind_of(value)}"
        raise raw.error(what, field=column)
    return value


def _optional_string(raw: RawRecord, column: str | None) -> str | None:
    if not column or raw.data.get(column) is None:
        return None
    return _string(raw, column)


def _alpaca(raw: RawRecord, cols: dict[str, str | None]) -> list[dict[str, str]]:
    instruction = _string(raw, cols["instruction"])
    extra = _optional_string(raw, cols["input"]) or ""
    output = _string(raw, cols["output"])
    if not instruction.strip() and not extra.strip():
        raise raw.error("empty instruction", field=cols["instruction"])
    if not output.strip():
        raise raw.error("empty assistant answer", field=cols["output"])
    messages: list[dict[str, str]] = []
    history_col = cols["history"]
    history = raw.data.get(history_col) if history_col else None
    if history is not None:
        if not isinstance(history, list):
            raise raw.error(
                f"must be a list of [user, assistant] pairs, not {kind_of(history)}", field=history_col
            )
        for j, pair in enumerate(history):
            ok = isinstance(pair, list | tuple) and len(pair) == 2 and all(isinstance(p, str) for p in pair)
            if not ok:
                raise raw.error("must be a [user, assistant] pair of texts", field=f"{history_col}[{j}]")
            if not pair[1].strip():
                raise raw.error("empty assistant answer", field=f"{history_col}[{j}][1]")
            messages += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    prompt = "\n\n".join(p for p in (instruction, extra) if p.strip())
    return [*messages, {"role": "user", "content": prompt}, {"role": "assistant", "content": output}]


def _tools(raw: RawRecord, column: str | None) -> list[Any] | None:
    value = raw.data.get(column) if column else None
    if value is None or value in ("", []):
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise raw.error(f"is not valid JSON ({exc.msg})", field=column) from None
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        raise raw.error(f"must be a list of tool definitions, not {kind_of(value)}", field=column)
    return value or None


def _first_placeholder(conversation: Conversation) -> str | None:
    for turn in conversation.messages:
        match = _PLACEHOLDER.search(turn["content"])
        if match:
            return match.group(0)
    return None


def _add_warnings(conversations: list[Conversation], report: DetectionReport) -> None:
    """Things that are valid but probably not what the user meant: said, never silently fixed."""
    placeholders = [(c, p) for c in conversations if (p := _first_placeholder(c))]
    if placeholders:
        conv, example = placeholders[0]
        report.warnings.append(
            f"template placeholders such as {example} in {count(len(placeholders), 'record')} (first: "
            f"{conv.where()}); the model would learn them literally — fill them in first"
        )
    no_user = [c for c in conversations if c.messages and not any(m["role"] == "user" for m in c.messages)]
    if no_user:
        report.warnings.append(
            f"{count(len(no_user), 'conversation')} without a user turn, so the assistant speaks unprompted "
            f"(first: {no_user[0].where()})"
        )
    with_tools = sum(1 for c in conversations if c.tools)
    if with_tools:
        report.evidence.append(f"tools (function calling) defined in {count(with_tools, 'record')}")
