"""The project's own exception types.

Each carries the message a user will read: what is wrong, where, and what to do. The CLI prints
``str(error)`` on one line (no traceback) and the GUI shows it in one consistent dialog.
"""

from __future__ import annotations


class LoraStudioError(Exception):
    """Base class: an error whose message is meant for the user."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message} — {self.hint}"
        return self.message


class ConfigError(LoraStudioError):
    """A run configuration is invalid. ``problems`` maps dotted field names to reasons."""

    def __init__(self, problems: dict[str, str], *, source: str | None = None) -> None:
        self.problems = dict(problems)
        where = f" in {source}" if source else ""
        lines = [f"{name}: {reason}" for name, reason in self.problems.items()]
        count = len(lines)
        head = f"Invalid configuration{where} ({count} problem{'s' if count != 1 else ''})"
        super().__init__(head + ": " + "; ".join(lines))


class ModelSourceError(LoraStudioError):
    """A model string could not be turned into a usable local model."""


class DatasetError(LoraStudioError):
    """A dataset file or record cannot be used. Carries the location when known."""

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        column: int | None = None,
        record: int | None = None,
        field: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.file = file
        self.line = line
        self.column = column
        self.record = record
        self.field = field
        parts = []
        if file:
            parts.append(str(file))
        if line is not None:
            parts.append(f"line {line}")
        if column is not None:
            parts.append(f"column {column}")
        if record is not None:
            parts.append(f"record {record}")
        if field:
            parts.append(f"field '{field}'")
        location = ", ".join(parts)
        self.reason = message
        super().__init__(f"{location}: {message}" if location else message, hint=hint)


class TrainingError(LoraStudioError):
    """Training failed for a reason the user can act on."""


class OutOfMemoryError(TrainingError):
    """The run does not fit in memory; the hint names settings that reduce it."""


class CancelledError(LoraStudioError):
    """Work was cancelled by the user."""
