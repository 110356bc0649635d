"""Preference data: pairs of a preferred and a rejected answer, or answers labelled good or bad.

Preference tuning (DPO, ORPO, SimPO) learns from a prompt with a *chosen* and a *rejected* answer;
KTO learns from single answers labelled desirable or not. People have these files in a handful of
shapes, all read here into two canonical forms with the same strict, located validation as the
supervised formats (``formats.py``):

- ``explicit``: TRL's rows — ``prompt``, ``chosen``, ``rejected``, each a text or a list of
  ``{role, content}`` messages (the "conversational" form);
- ``implicit``: only ``chosen`` and ``rejected``, each the whole conversation — message lists that
  share their beginning, or texts in the Anthropic HH style (``\\n\\nHuman: … \\n\\nAssistant: …``);
  the shared beginning is the prompt;
- ``sharegpt``: LLaMA-Factory's ShareGPT preference files — ``conversations`` (the prompt turns) with
  ``chosen`` and ``rejected`` as ``{from, value}`` objects;
- ``alpaca``: ``instruction`` (+ ``input``, ``system``) with ``chosen`` and ``rejected`` texts;
- ``kto``: unpaired rows with a boolean ``label`` — ``prompt`` + ``completion`` (texts or message
  lists, TRL's form) or ``messages`` whose last assistant turn is the labelled answer (LLaMA-Factory).

A pair that would teach nothing or the wrong thing is an error naming the record and field: a
missing or empty side, chosen identical to rejected, a prompt that does not end with the user
speaking, a label that is not true or false. Nothing here needs a tokenizer.
"""

from __future__ import annotations

import re
import threading
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lora_studio.core.data.files import (
    RawRecord,
    check_cancel,
    no_usable_records,
    open_source,
    readable_records,
    resolve_paths,
)
from lora_studio.core.data.formats import error_dict
from lora_studio.core.data.turns import ROLES
from lora_studio.core.data.turns import kind_of as _kind
from lora_studio.core.data.turns import text_content as _content
from lora_studio.core.errors import DatasetError

#: Detection order: the first shape whose fields a record has wins.
PREFERENCE_FORMATS = ("kto", "sharegpt", "alpaca", "explicit", "implicit")
_REQUIRED = {
    "kto": ("label",),
    "sharegpt": ("conversations", "chosen", "rejected"),
    "alpaca": ("instruction", "chosen", "rejected"),
    "explicit": ("prompt", "chosen", "rejected"),
    "implicit": ("chosen", "rejected"),
}
#: Anthropic HH style: "\n\nHuman: …\n\nAssistant: …" (also "H:" / "A:").
_HH_TURN = re.compile(r"\n\n(Human|Assistant|H|A):[ \t]?")
_HH_ROLES = {"Human": "user", "H": "user", "Assistant": "assistant", "A": "assistant"}

Messages = list[dict[str, str]]


@dataclass
class PreferencePair:
    """One prompt with the answer to prefer and the one to avoid, and where it came from."""

    prompt: Messages  # system/user/assistant turns before the answers; the last one is the user's
    chosen: Messages  # the preferred answer: assistant turns (tool turns may sit between them)
    rejected: Messages
    file: str | None = None
    line: int | None = None
    record: int | None = None


@dataclass
class LabelledAnswer:
    """KTO's unpaired example: one answer to a prompt, marked desirable or not."""

    prompt: Messages
    completion: Messages
    desirable: bool
    file: str | None = None
    line: int | None = None
    record: int | None = None


@dataclass
class PreferenceReport:
    """What a preference file holds: its shape, how many pairs or labels, and every bad record."""

    format: str
    files: list[str]
    records: int = 0
    pairs: int = 0
    desirable: int = 0
    undesirable: int = 0
    evidence: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    skipped: list[DatasetError] = field(default_factory=list)

    @property
    def kind(self) -> str:
        """ "pairs" (DPO, ORPO, SimPO) or "labels" (KTO)."""
        return "labels" if self.format == "kto" else "pairs"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["kind"] = self.kind
        data["skipped"] = [error_dict(e) for e in self.skipped]
        return data


def preference_format(keys: dict[str, Any]) -> str | None:
    """The first preference shape whose fields this record has (None: not preference data)."""
    for fmt in PREFERENCE_FORMATS:
        if all(name in keys for name in _REQUIRED[fmt]):
            if fmt == "kto" and not ({"prompt", "completion"} <= set(keys) or "messages" in keys):
                continue
            return fmt
    return None


def sniff_preference_format(path: str | Path, *, sample: int = 20) -> str | None:
    """The preference shape most of the first ``sample`` records have, or None (cheap: reads only those)."""
    try:
        source = open_source(resolve_paths(str(path))[0])
    except DatasetError:
        return None
    votes: Counter[str | None] = Counter()
    for item in source.records:
        if isinstance(item, RawRecord):
            votes[preference_format(item.data)] += 1
        if sum(votes.values()) >= sample:
            break
    found = [(n, fmt) for fmt, n in votes.most_common() if fmt]
    return found[0][1] if found and found[0][0] * 2 > sum(votes.values()) else None


def scan_preferences(
    path: str | Path, *, cancel: threading.Event | None = None, stop_at_first: bool = False
) -> tuple[list[PreferencePair | LabelledAnswer], PreferenceReport]:
    """Read every record of a preference dataset, collecting each invalid one in ``report.skipped``.

    The shape is the one most records have (a file must not mix shapes). File-level problems
    (missing, empty, not UTF-8, broken JSON) raise, as for supervised data.
    """
    files = resolve_paths(str(path))
    report = PreferenceReport(format="", files=[str(p) for p in files])
    examples: list[PreferencePair | LabelledAnswer] = []
    for file in files:
        raws, count = readable_records(
            open_source(file), report.skipped, cancel=cancel, stop_at_first=stop_at_first
        )
        report.records += count
        if not raws:
            continue
        votes = Counter(preference_format(r.data) for r in raws)
        ranked = sorted((f for f in votes if f), key=lambda f: (-votes[f], PREFERENCE_FORMATS.index(f)))
        if not ranked:
            fields = ", ".join(repr(k) for k in raws[0].data) or "none"
            raise raws[0].error(
                f"not preference data: the record's fields are {fields}",
                hint="preference rows have 'chosen' and 'rejected' (or a boolean 'label' for KTO)",
            )
        fmt = ranked[0]
        if report.format and fmt != report.format:
            raise DatasetError(
                f"files in this folder have different preference formats ({report.format} and {fmt})",
                file=str(path),
                hint="keep one format per dataset folder",
            )
        report.format = fmt
        names = [f"'{n}'" for n in _REQUIRED[fmt]]
        needed = " and ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else names)
        report.evidence.append(f"{file.name}: {needed} in {votes[fmt]} of {len(raws)} records → {fmt}")
        for raw in raws:
            check_cancel(cancel)
            try:
                example = _convert(raw, fmt)
            except DatasetError as exc:
                if stop_at_first:
                    raise
                report.skipped.append(exc)
                continue
            examples.append(example)
            if isinstance(example, LabelledAnswer):
                report.desirable += example.desirable
                report.undesirable += not example.desirable
            else:
                report.pairs += 1
    _add_warnings(report)
    return examples, report


def load_preferences(
    path: str | Path, *, skip_invalid: bool = False, cancel: threading.Event | None = None
) -> tuple[list[PreferencePair | LabelledAnswer], PreferenceReport]:
    """Like :func:`scan_preferences`, stopping at the first bad record unless ``skip_invalid``."""
    examples, report = scan_preferences(path, cancel=cancel, stop_at_first=not skip_invalid)
    if not examples:
        raise no_usable_records(report.records, report.skipped, report.files)
    return examples, report


# -- one record -----------------------------------------------------------------------------------


def _convert(raw: RawRecord, fmt: str) -> PreferencePair | LabelledAnswer:
    where = {"file": raw.file, "line": raw.line, "record": raw.index}
    other = preference_format(raw.data)
    if other != fmt:
        if other is not None:
            raise raw.error(
                f"record is {other} preference data but this file is {fmt}: a file must not mix shapes",
                hint="convert the record, or split the file by shape",
            )
        missing = next((n for n in _REQUIRED[fmt] if n not in raw.data), None)
        fields = ", ".join(repr(k) for k in raw.data) or "none"
        if missing is None:  # kto: label without prompt/completion or messages
            missing = "prompt" if "prompt" not in raw.data else "completion"
        raise raw.error(
            f"missing required field (this file is {fmt} preference data)",
            field=missing,
            hint=f"the record's fields are {fields}",
        )
    if fmt == "kto":
        return _kto(raw, where)
    if fmt == "implicit":
        prompt, chosen, rejected = _implicit(raw)
    else:
        if fmt == "sharegpt":
            prompt = _turns(raw, raw.data["conversations"], "conversations", "from", "value")
            chosen = _answer_object(raw, "chosen")
            rejected = _answer_object(raw, "rejected")
        elif fmt == "alpaca":
            prompt = _alpaca_prompt(raw)
            chosen, rejected = _answer(raw, "chosen"), _answer(raw, "rejected")
        else:
            prompt = _prompt(raw, "prompt")
            chosen, rejected = _answer(raw, "chosen"), _answer(raw, "rejected")
        _check_prompt(raw, prompt, "conversations" if fmt == "sharegpt" else _prompt_field(fmt))
    if chosen == rejected:
        raise raw.error(
            "chosen and rejected are the same answer, so there is no preference to learn",
            field="rejected",
        )
    return PreferencePair(prompt, chosen, rejected, **where)


def _prompt_field(fmt: str) -> str:
    return {"alpaca": "instruction", "explicit": "prompt"}[fmt]


def _kto(raw: RawRecord, where: dict[str, Any]) -> LabelledAnswer:
    label = raw.data["label"]
    if not isinstance(label, bool):
        raise raw.error(
            f"must be true or false, not {_kind(label)} {label!r}"[:120],
            field="label",
            hint="true: a desirable answer, false: an undesirable one",
        )
    if "prompt" in raw.data and "completion" in raw.data:
        prompt = _prompt(raw, "prompt")
        _check_prompt(raw, prompt, "prompt")
        completion = _answer(raw, "completion")
    else:
        turns = _turns(raw, raw.data["messages"], "messages", "role", "content")
        last = max((i for i, t in enumerate(turns) if t["role"] == "user"), default=-1)
        prompt, completion = turns[: last + 1], turns[last + 1 :]
        if not prompt:
            raise raw.error("no user turn: the labelled answer has no prompt", field="messages")
        if not any(t["role"] == "assistant" for t in completion):
            raise raw.error(
                "the last turn is the user's: there is no answer to label",
                field=f"messages[{len(turns) - 1}]",
            )
    return LabelledAnswer(prompt, completion, label, **where)


def _implicit(raw: RawRecord) -> tuple[Messages, Messages, Messages]:
    """Split two whole conversations into the turns they share (the prompt) and their answers."""
    chosen_value, rejected_value = raw.data["chosen"], raw.data["rejected"]
    if isinstance(chosen_value, str) != isinstance(rejected_value, str):
        raise raw.error(
            f"chosen is {_kind(chosen_value)} but rejected is {_kind(rejected_value)}: both must be texts "
            "or both message lists",
            field="rejected",
        )
    if isinstance(chosen_value, str):
        chosen_all = _hh_turns(raw, chosen_value, "chosen")
        rejected_all = _hh_turns(raw, rejected_value, "rejected")
    else:
        chosen_all = _turns(raw, chosen_value, "chosen", "role", "content")
        rejected_all = _turns(raw, rejected_value, "rejected", "role", "content")
    shared = 0
    for a, b in zip(chosen_all, rejected_all, strict=False):
        if a != b:
            break
        shared += 1
    while shared and chosen_all[shared - 1]["role"] != "user":  # the prompt ends with the user speaking
        shared -= 1
    if not shared:
        raise raw.error(
            "chosen and rejected share no prompt: their first turns differ",
            field="chosen",
            hint="add a 'prompt' field, or start both conversations with the same user turn",
        )
    prompt = chosen_all[:shared]
    chosen, rejected = chosen_all[shared:], rejected_all[shared:]
    for name, answer in (("chosen", chosen), ("rejected", rejected)):
        _check_answer(raw, answer, name)
    return prompt, chosen, rejected


def _hh_turns(raw: RawRecord, text: str, name: str) -> Messages:
    """Anthropic HH text ("\\n\\nHuman: …\\n\\nAssistant: …") as turns."""
    parts = _HH_TURN.split(text if text.startswith("\n\n") else "\n\n" + text)
    if len(parts) < 3 or parts[0].strip():
        raise raw.error(
            "is a text without a prompt: preference rows need a 'prompt' field, or whole conversations "
            "in both 'chosen' and 'rejected'",
            field=name,
            hint='e.g. {"prompt": "…", "chosen": "…", "rejected": "…"}',
        )
    return [
        {"role": _HH_ROLES[speaker], "content": content.strip()}
        for speaker, content in zip(parts[1::2], parts[2::2], strict=True)
    ]


def _prompt(raw: RawRecord, name: str) -> Messages:
    value = raw.data.get(name)
    if isinstance(value, str):
        if not value.strip():
            raise raw.error("empty prompt", field=name)
        return [{"role": "user", "content": value}]
    return _turns(raw, value, name, "role", "content")


def _answer(raw: RawRecord, name: str) -> Messages:
    value = raw.data.get(name)
    if isinstance(value, str):
        answer = [{"role": "assistant", "content": value}]
    elif isinstance(value, dict):
        return _answer_object(raw, name)
    else:
        answer = _turns(raw, value, name, "role", "content")
    _check_answer(raw, answer, name)
    return answer


def _answer_object(raw: RawRecord, name: str) -> Messages:
    """LLaMA-Factory's answer: one ``{from, value}`` (or ``{role, content}``) object, or a list of them."""
    value = raw.data.get(name)
    if isinstance(value, dict):
        value = [value]
    keys = (
        ("from", "value") if isinstance(value, list) and value and "from" in value[0] else ("role", "content")
    )
    answer = _turns(raw, value, name, *keys)
    _check_answer(raw, answer, name)
    return answer


def _alpaca_prompt(raw: RawRecord) -> Messages:
    parts = []
    for name in ("instruction", "input"):
        value = raw.data.get(name)
        if value is None:
            continue
        if not isinstance(value, str):
            raise raw.error(f"must be text, not {_kind(value)}", field=name)
        if value.strip():
            parts.append(value)
    if not parts:
        raise raw.error("empty instruction", field="instruction")
    prompt = [{"role": "user", "content": "\n\n".join(parts)}]
    system = raw.data.get("system")
    if isinstance(system, str) and system.strip():
        prompt.insert(0, {"role": "system", "content": system})
    return prompt


def _turns(raw: RawRecord, value: Any, name: str, role_key: str, content_key: str) -> Messages:
    """A list of turn objects as canonical ``{role, content}`` messages (no assistant turn required)."""
    if not isinstance(value, list):
        raise _wrong_kind(raw, name, value, f"a text or a list of {{{role_key}, {content_key}}} objects")
    if not value:
        raise raw.error("is an empty list", field=name)
    messages: Messages = []
    for j, turn in enumerate(value):
        where = f"{name}[{j}]"
        if not isinstance(turn, dict):
            raise raw.error(f"must be a {{{role_key}, {content_key}}} object, not {_kind(turn)}", field=where)
        rk, ck = (role_key, content_key) if role_key in turn else ("role", "content")
        role = turn.get(rk)
        canonical = ROLES.get(role.strip().lower()) if isinstance(role, str) else None
        if canonical is None:
            problem = "is missing" if rk not in turn else f"unknown role {role!r}"
            raise raw.error(problem, field=f"{where}.{rk}", hint="use system, user, assistant or tool")
        messages.append({"role": canonical, "content": _content(raw, turn, ck, f"{where}.{ck}")})
    return messages


def _wrong_kind(raw: RawRecord, name: str, value: Any, expected: str) -> DatasetError:
    """The error for a field that is absent or of the wrong kind."""
    if value is None:
        return raw.error("is missing" if name not in raw.data else "is null", field=name)
    return raw.error(f"must be {expected}, not {_kind(value)}", field=name)


def _check_prompt(raw: RawRecord, prompt: Messages, name: str) -> None:
    if prompt[-1]["role"] != "user":
        raise raw.error(
            f"the prompt ends with a {prompt[-1]['role']} turn; it must end with the user speaking",
            field=name,
        )
    if not any(t["content"].strip() for t in prompt if t["role"] == "user"):
        raise raw.error("empty prompt", field=name)


def _check_answer(raw: RawRecord, answer: Messages, name: str) -> None:
    if not answer:
        raise raw.error("is missing: there is no answer after the prompt", field=name)
    for end, turn in (("starts", answer[0]), ("ends", answer[-1])):
        if turn["role"] != "assistant":
            raise raw.error(
                f"must be the assistant's answer, but it {end} with a {turn['role']} turn", field=name
            )
    if not any(t["content"].strip() for t in answer):
        raise raw.error("empty answer", field=name)


def _add_warnings(report: PreferenceReport) -> None:
    one_sided = bool(report.desirable) != bool(report.undesirable)
    if report.format == "kto" and one_sided:
        which = "desirable" if report.desirable else "undesirable"
        report.warnings.append(
            f"every usable answer is labelled {which}: KTO learns from the contrast between both kinds"
        )
