"""Raw records → canonical conversations: format detection, column mapping and strict validation.

Every supported format becomes the same :class:`Conversation` (a list of ``{role, content}`` turns,
system prompt first when there is one; or a plain-text document), so rendering and loss masking
have one code path. Validation is strict and located: a record that would train the model on
something the user did not mean (a missing answer, an unknown speaker, a field of the wrong type)
is an error naming the file, line, record and field, never a silent drop.

Detection votes: each record's best match (in the order of ``FORMATS``) is counted and the most
common wins, so one odd record does not decide the format of a thousand good ones; it is then
reported as mixing formats. This module is Qt-free and imports nothing heavy.
"""

from __future__ import annotations

import json
import re
import threading
from collections import Counter
from dataclasses import asdict, dataclass, field
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
from lora_studio.core.errors import DatasetError

#: Detection order: when a record fits several formats, the first one wins.
FORMATS = ("messages", "sharegpt", "alpaca", "prompt_completion", "text")

#: Canonical field → the column names it is read from, first present wins (``data.columns`` overrides).
FIELDS: dict[str, dict[str, tuple[str, ...]]] = {
    "messages": {"messages": ("messages",), "tools": ("tools",)},
    "sharegpt": {"conversations": ("conversations",), "system": ("system",), "tools": ("tools",)},
    "alpaca": {
        "instruction": ("instruction",),
        "input": ("input",),
        "output": ("output",),
        "system": ("system", "system_prompt"),
        "history": ("history",),
    },
    "prompt_completion": {
        "prompt": ("prompt", "question", "input"),
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
#: Speaker names found in the wild → canonical role. ShareGPT's ``function_call`` is the assistant
#: calling a tool (trained); ``observation`` is the tool's answer (not trained).
ROLES = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "chatgpt": "assistant",
    "model": "assistant",
    "bard": "assistant",
    "bing": "assistant",
    "function_call": "assistant",
    "tool": "tool",
    "function": "tool",
    "observation": "tool",
    "ipython": "tool",
}
_PLACEHOLDER = re.compile(r"\{\{\s*[A-Za-z_]\w*\s*\}\}")


@dataclass
class Conversation:
    """One training example in canonical form, with the location of the record it came from."""

    messages: list[dict[str, str]]
    text: str | None = None  # plain-text documents have no turns
    tools: list[Any] | None = None
    file: str | None = None
    line: int | None = None
    record: int | None = None
    column: int | None = None

    def error(self, message: str, *, hint: str | None = None) -> DatasetError:
        return DatasetError(
            message, file=self.file, line=self.line, column=self.column, record=self.record, hint=hint
        )

    def where(self) -> str:
        return str(self.error("")).rstrip(": ")


@dataclass
class DetectionReport:
    """What was read and why it was read that way: the evidence the GUI and ``inspect-data`` show."""

    format: str
    detected: bool  # False when the user chose the format
    files: list[str]
    records: int = 0
    counts: dict[str, int] = field(default_factory=dict)  # records whose best match is each format
    evidence: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    skipped: list[DatasetError] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["skipped"] = [error_dict(e) for e in self.skipped]
        return data


def error_dict(error: DatasetError) -> dict[str, Any]:
    """A located error as plain JSON-serialisable data."""
    keys = ("file", "line", "column", "record", "field")
    return {"message": str(error), "reason": error.reason, **{k: getattr(error, k) for k in keys}}


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
    for path in files:
        source = open_source(path, txt_split=data.txt_split)
        raws, count = readable_records(source, report.skipped, cancel=cancel, stop_at_first=stop_at_first)
        report.records += count
        if not raws:
            continue
        fmt = _file_format(source, raws, data, mapping, report)
        file_formats[str(path)] = fmt
        for raw in raws:
            check_cancel(cancel)
            try:
                conversations.append(_convert(raw, fmt, mapping, data))
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
            f"{label}: .txt file → text, one document per {split} ({_count(len(raws), 'document')})"
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
        report.evidence.append(f"{label}: {needed} in {votes[fmt]} of {_count(len(raws), 'record')} → {fmt}")
    used: set[str] = set()
    unused: Counter[str] = Counter()
    for raw in raws:
        columns = {c for c in _resolve(fmt, raw.data, mapping).values() if c}
        used |= columns
        unused.update(k for k in raw.data if k not in columns)
    mapped = [f"{c}→{col}" for c, col in mapping.items()]
    if mapped:
        report.evidence.append(f"{label}: column mapping {', '.join(mapped)}")
    if unused:
        listed = ", ".join(f"'{k}'" for k, _ in unused.most_common(8))
        report.evidence.append(f"{label}: fields not used: {listed}")
    labels = [r for r in raws if isinstance(r.data.get("label"), bool)]
    rejected = [r for r in labels if r.data["label"] is False]
    if rejected:
        report.warnings.append(
            f"{label}: {len(rejected)} of {len(raws)} records have label = false (KTO-style preference data, "
            f"first: record {rejected[0].index}); those answers are examples of what not to say, but supervised "
            "fine-tuning learns every answer it sees — filter them out first"
        )
    return fmt


def _convert(raw: RawRecord, fmt: str, mapping: dict[str, str], data: DataSection) -> Conversation:
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
        messages = _turns(raw, key, *keys)  # type: ignore[arg-type]
        system = _optional_string(raw, cols.get("system"))
        tools = _tools(raw, cols.get("tools"))
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
        what = "is null" if value is None else f"must be text, not {_kind(value)}"
        raise raw.error(what, field=column)
    return value


def _optional_string(raw: RawRecord, column: str | None) -> str | None:
    if not column or raw.data.get(column) is None:
        return None
    return _string(raw, column)


def _kind(value: Any) -> str:
    """What a field holds, in the words the error messages use."""
    names = {list: "a list", dict: "an object", bool: "a boolean", type(None): "null", str: "text"}
    return names.get(type(value), "a number" if isinstance(value, int | float) else type(value).__name__)


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
                f"must be a list of [user, assistant] pairs, not {_kind(history)}", field=history_col
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


def _turns(raw: RawRecord, column: str, role_key: str, content_key: str) -> list[dict[str, str]]:
    value = raw.data.get(column)
    if not isinstance(value, list):
        raise raw.error(
            f"must be a list of {{{role_key}, {content_key}}} objects, not {_kind(value)}", field=column
        )
    if not value:
        raise raw.error("is an empty list: the conversation has no turns", field=column)
    messages: list[dict[str, str]] = []
    for j, turn in enumerate(value):
        where = f"{column}[{j}]"
        if not isinstance(turn, dict):
            raise raw.error(f"must be a {{{role_key}, {content_key}}} object, not {_kind(turn)}", field=where)
        rk, ck = role_key, content_key
        if rk not in turn and "role" in turn:  # ShareGPT files written with OpenAI keys
            rk, ck = "role", "content"
        role = turn.get(rk)
        if not isinstance(role, str):
            problem = "is missing" if rk not in turn else f"must be text, not {_kind(role)}"
            raise raw.error(problem, field=f"{where}.{rk}")
        canonical = ROLES.get(role.strip().lower())
        if canonical is None:
            raise raw.error(
                f"unknown role '{role}'",
                field=f"{where}.{rk}",
                hint="use system, user, assistant or tool (ShareGPT: system, human, gpt, function_call, observation)",
            )
        content = _content(raw, turn, ck, f"{where}.{ck}")
        if canonical == "assistant" and not content.strip():
            raise raw.error("empty assistant answer", field=f"{where}.{ck}")
        messages.append({"role": canonical, "content": content})
    if not any(m["role"] == "assistant" for m in messages):
        raise raw.error("the conversation has no assistant turn, so there is nothing to learn", field=column)
    return messages


def _content(raw: RawRecord, turn: dict[str, Any], key: str, where: str) -> str:
    content = turn.get(key)
    if isinstance(content, str):
        return content
    if content is None and turn.get("tool_calls"):
        raise raw.error("is empty and the turn has tool_calls, which are not supported yet", field=where)
    if isinstance(content, list) and all(isinstance(p, dict) for p in content):
        if all(p.get("type") == "text" and isinstance(p.get("text"), str) for p in content):
            return "".join(p["text"] for p in content)
        raise raw.error("has non-text parts (images, audio); only text can be trained", field=where)
    problem = "is missing" if key not in turn else f"must be text, not {_kind(content)}"
    raise raw.error(problem, field=where)


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
        raise raw.error(f"must be a list of tool definitions, not {_kind(value)}", field=column)
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
            f"template placeholders such as {example} in {_count(len(placeholders), 'record')} (first: "
            f"{conv.where()}); the model would learn them literally — fill them in first"
        )
    no_user = [c for c in conversations if c.messages and not any(m["role"] == "user" for m in c.messages)]
    if no_user:
        report.warnings.append(
            f"{_count(len(no_user), 'conversation')} without a user turn, so the assistant speaks unprompted "
            f"(first: {no_user[0].where()})"
        )
    with_tools = sum(1 for c in conversations if c.tools)
    if with_tools:
        report.evidence.append(f"tools (function calling) defined in {_count(with_tools, 'record')}")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
