"""What reading a dataset found: the canonical conversations and the report the GUI and CLI show.

Kept apart from the readers (``formats``, ``notes``) so both can fill one report without importing
each other.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from lora_studio.core.errors import DatasetError


@dataclass
class Conversation:
    """One training example in canonical form, with the location of the record it came from."""

    messages: list[dict[str, Any]]  # {role, content: str} (+ tool_calls, reasoning_content, tool_call_id)
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
    # speaker names with no known role → {"turns", "records", "guess"}: the Data page's Speakers table
    speakers: dict[str, dict[str, Any]] = field(default_factory=dict)
    labels: dict[str, int] = field(default_factory=dict)  # records with label true / false
    left_out: int = 0  # records labelled false and left out (positive_only)
    media: int = 0  # records that refer to images, audio or video

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["skipped"] = [error_dict(e) for e in self.skipped]
        return data


def error_dict(error: DatasetError) -> dict[str, Any]:
    """A located error as plain JSON-serialisable data."""
    keys = ("file", "line", "column", "record", "field")
    return {"message": str(error), "reason": error.reason, **{k: getattr(error, k) for k in keys}}


def count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
