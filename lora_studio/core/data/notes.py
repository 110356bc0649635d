"""What a dataset file says besides its records: shared tool definitions, thumbs-up/down labels,
speaker names with no known role, and references to media a text model cannot see.

Each is valid data that would train something the user probably did not mean, so it is said in
the report (a warning with a count and the first record, and what to do), never silently fixed:
labels are filtered only when asked (``data.positive_only``), speakers mapped only by
``data.role_map``.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

from lora_studio.core.data.files import RawRecord, read_text
from lora_studio.core.data.report import DetectionReport, count
from lora_studio.core.data.turns import kind_of, role_map_text, speakers
from lora_studio.core.errors import DatasetError

#: Fields and text placeholders of multimodal records (LLaMA-Factory, ms-swift): a text model never
#: sees the media, only the placeholder text.
MEDIA_FIELDS = ("images", "image", "audios", "audio", "videos", "video")
_MEDIA_TAG = re.compile(r"<(image|audio|video)>")


def shared_tools(path: str | None, report: DetectionReport) -> list[Any] | None:
    """``data.tools_path``: one list of tool definitions for every record without its own."""
    if not path:
        return None
    source = Path(path).expanduser()
    if not source.is_file():
        raise DatasetError(
            "tool definitions file does not exist", file=str(source), hint="check data.tools_path"
        )
    try:
        value = json.loads(read_text(source))
    except json.JSONDecodeError as exc:
        raise DatasetError(
            f"invalid JSON: {exc.msg}", file=str(source), line=exc.lineno, column=exc.colno
        ) from None
    if isinstance(value, dict) and isinstance(value.get("tools"), list):
        value = value["tools"]
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(t, dict) for t in value):
        raise DatasetError(
            f"must hold a list of tool definitions (objects), not {kind_of(value)}",
            file=str(source),
            hint='e.g. [{"type": "function", "function": {"name": ..., "parameters": {...}}}]',
        )
    report.evidence.append(
        f"tools: {count(len(value), 'definition')} from {source.name} for every record without its own"
    )
    return value


def labelled(
    raws: list[RawRecord], positive_only: bool, report: DetectionReport, label: str
) -> list[RawRecord]:
    """Records with a true/false ``label`` (thumbs up/down): warned about, or only the true ones kept.

    SFT learns every answer it sees, so a thumbs-down answer would be learnt as a good one.
    """
    labels = [r for r in raws if isinstance(r.data.get("label"), bool)]
    if not labels:
        return raws
    rejected = [r for r in labels if r.data["label"] is False]
    report.labels["true"] = report.labels.get("true", 0) + len(labels) - len(rejected)
    report.labels["false"] = report.labels.get("false", 0) + len(rejected)
    if positive_only:
        report.left_out += len(rejected)
        report.evidence.append(
            f"{label}: label = true in {len(labels) - len(rejected)} of {count(len(raws), 'record')}; "
            f"{len(rejected)} labelled false left out (positive_only)"
        )
        return [r for r in raws if r.data.get("label") is not False]
    if rejected:
        report.warnings.append(
            f"{label}: {len(rejected)} of {len(raws)} records have label = false (KTO-style preference data, "
            f"first: record {rejected[0].index}); those answers are examples of what not to say, but supervised "
            "fine-tuning learns every answer it sees — keep only the records labelled true (positive_only = "
            "true, --positive-only; on the Data page: Keep only records labelled true), or train with KTO"
        )
    return raws


def speaker_note(
    raws: list[RawRecord],
    column: str | None,
    role_key: str,
    role_map: dict[str, str],
    report: DetectionReport,
    label: str,
) -> None:
    """Speaker names with no known role: one line with a guessed ``role_map`` (each turn is also an error)."""
    found = speakers(raws, column, role_key, role_map)
    for name, facts in found.items():
        known = report.speakers.setdefault(name, {"turns": 0, "records": 0, "guess": facts["guess"]})
        known["turns"] += facts["turns"]
        known["records"] += facts["records"]
    if role_map:
        report.evidence.append(f"{label}: speakers mapped with role_map: {role_map_text(role_map)}")
    if found:
        names = ", ".join(f"'{n}' ({count(f['records'], 'record')})" for n, f in list(found.items())[:6])
        guess = role_map_text({n: f["guess"] for n, f in found.items()})
        report.warnings.append(
            f"{label}: speakers with no known role: {names}; map them to roles with role_map "
            f"(a guess: --role-map '{guess}'; on the Data page: Speakers)"
        )


def media_note(raws: list[RawRecord], report: DetectionReport, label: str) -> None:
    """Records that refer to images, audio or video: a text model sees only their placeholder text."""
    fields: Counter[str] = Counter()
    tags: Counter[str] = Counter()
    affected = []
    for raw in raws:
        present = [k for k in MEDIA_FIELDS if raw.data.get(k) not in (None, "", [])]
        found = set(_MEDIA_TAG.findall(_all_text(raw.data)))
        fields.update(present)
        tags.update(found)
        if present or found:
            affected.append(raw)
    if not affected:
        return
    report.media += len(affected)
    what = " and ".join(
        [f"the '{k}' field" for k in fields][:2] + [f"'<{t}>' in the text" for t in sorted(tags)][:2]
    )
    if tags:
        seen = ", ".join(f"'<{t}>'" for t in sorted(tags))
        sees = f"it will see {seen} as ordinary text (and learn to write it) and never the media itself"
    else:
        sees = "it never sees the media, only the text, so answers about them are learnt without what they describe"
    report.warnings.append(
        f"{label}: {len(affected)} of {count(len(raws), 'record')} refer to images, audio or video ({what}; "
        f"first: record {affected[0].index}), but the model reads text only: {sees} — use a text-only dataset, "
        "or remove these records"
    )


def _all_text(value: Any) -> str:
    """Every string in a record, joined (placeholders can sit in any turn)."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        return "\n".join(_all_text(v) for v in value.values())
    if isinstance(value, list):
        return "\n".join(_all_text(v) for v in value)
    return ""
