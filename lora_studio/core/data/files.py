"""Dataset files → raw records, each with the place it came from.

This is the strict first reading of a dataset. Every byte is read here anyway, so this is where a
problem can still be located precisely: the file, the line and column of JSON, the physical line
where a CSV row starts (quoted cells may span lines), the record number. Later stages only ever
see records that carry their location.

Files are parsed here once, by the standard library (pyarrow for Parquet), rather than a second
time through ``datasets.load_dataset``: that would double the reading time, write an Arrow cache,
and re-infer column types (datasets 5.2 reads the system cell ``00000`` of ms-swift's alpaca.csv
as the float 0.0). The tokenized result is a ``datasets.Dataset`` (see ``core/data/prepare.py``), which
is what the trainer consumes.

Conventions: lines and columns count from 1 (as editors do); records count from 1 in file order,
so in a JSON Lines file without blank lines ``record N`` is ``line N``. Only the standard library
is imported at module level; pyarrow (installed with ``datasets``) is imported for Parquet only.
"""

from __future__ import annotations

import bisect
import csv
import io
import json
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lora_studio.core.errors import CancelledError, DatasetError
from lora_studio.core.paths import resource_path

SUFFIXES = (".json", ".jsonl", ".csv", ".tsv", ".parquet", ".txt")
_JSONL = {".jsonl", ".ndjson"}
DEMO = "demo"
DEMO_FILE = ("datasets", "identity.jsonl")
#: The bundled datasets by the names ``data.path`` accepts: the SFT demo and the DPO demo.
DEMOS = {DEMO: DEMO_FILE, "demo-dpo": ("datasets", "concise.jsonl")}


@dataclass
class RawRecord:
    """One record as read from a file: a mapping of field names to values, and where it is."""

    data: dict[str, Any]
    file: str
    index: int
    line: int | None = None
    column: int | None = None

    def error(self, message: str, *, field: str | None = None, hint: str | None = None) -> DatasetError:
        """A :class:`DatasetError` located at this record (and one of its fields)."""
        return DatasetError(
            message,
            file=self.file,
            line=self.line,
            column=self.column,
            record=self.index,
            field=field,
            hint=hint,
        )


@dataclass
class SourceFile:
    """A readable dataset file: its kind, its header (tabular files) and its records.

    ``records`` yields :class:`RawRecord` or, for a record that cannot be read but does not stop
    the reading of the rest (a bad JSON Lines line, a CSV row with too many cells), the
    :class:`DatasetError` to report; file-level problems are raised straight away.
    """

    path: Path
    kind: str  # "json" | "jsonl" | "csv" | "tsv" | "parquet" | "txt"
    columns: list[str] | None
    records: Iterator[RawRecord | DatasetError]
    notes: list[str] = field(default_factory=list)


def resolve_paths(path: str) -> list[Path]:
    """The files a ``data.path`` names: ``demo``, one file, or every dataset file in a folder."""
    if path in DEMOS:
        return [resource_path(*DEMOS[path])]
    target = Path(path).expanduser()
    if not target.exists():
        raise DatasetError(
            "file or folder does not exist", file=str(target), hint="check the path, or use 'demo'"
        )
    if target.is_dir():
        files = sorted(
            p
            for p in target.rglob("*")
            if p.is_file()
            and p.suffix.lower() in (*SUFFIXES, *_JSONL)
            and not any(part.startswith(".") for part in p.relative_to(target).parts)
        )
        if not files:
            raise DatasetError(
                "folder holds no dataset files",
                file=str(target),
                hint=f"expected {', '.join(SUFFIXES)} files",
            )
        return files
    if target.suffix.lower() not in (*SUFFIXES, *_JSONL):
        raise DatasetError(
            f"unsupported file type '{target.suffix or '(none)'}'",
            file=str(target),
            hint=f"use one of {', '.join(SUFFIXES)}",
        )
    return [target]


def open_source(path: Path, *, txt_split: str = "paragraph") -> SourceFile:
    """Check a file's encoding and outer structure, and return a lazy reader of its records."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return _parquet(path)
    text = read_text(path)
    name = str(path)
    if suffix in _JSONL:
        return SourceFile(path, "jsonl", None, _jsonl_records(name, text))
    if suffix == ".json":
        return _json(name, path, text)
    if suffix in (".csv", ".tsv"):
        return _table(name, path, text, "\t" if suffix == ".tsv" else ",")
    return SourceFile(path, "txt", None, _txt_records(name, text, txt_split))


def read_text(path: Path) -> str:
    """The file as UTF-8 text (a byte-order mark is allowed); empty and non-UTF-8 files are refused."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"cannot be read ({exc.strerror or exc})", file=str(path)) from None
    if not raw.strip():
        raise DatasetError("empty file", file=str(path), hint="the file has no records")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise DatasetError(
            f"not UTF-8 text: byte 0x{raw[exc.start]:02x} at byte offset {exc.start} cannot be decoded",
            file=str(path),
            line=line,
            hint="save the file as UTF-8",
        ) from None


class _Lines:
    """Character offset → (line, column), both from 1, by bisecting the newline positions."""

    def __init__(self, text: str) -> None:
        self.newlines = [m.start() for m in re.finditer("\n", text)]

    def at(self, pos: int) -> tuple[int, int]:
        line = bisect.bisect_left(self.newlines, pos)
        start = self.newlines[line - 1] + 1 if line else 0
        return line + 1, pos - start + 1


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


def _kind(value: Any) -> str:
    """What a JSON value is, in JSON's words."""
    names = {str: "a string", list: "an array", dict: "an object", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number" if isinstance(value, int | float) else type(value).__name__)


def _json(name: str, path: Path, text: str) -> SourceFile:
    lines = _Lines(text)
    start = _skip_ws(text, 0)
    if text[start] == "{":
        # Objects at the top level: JSON Lines saved as .json, or a single record.
        return SourceFile(path, "json", None, _json_stream(name, text, lines), ["objects, not an array"])
    if text[start] != "[":
        line, col = lines.at(start)
        raise DatasetError(
            "expected a JSON array of records",
            file=name,
            line=line,
            column=col,
            hint="a .json dataset is [ {...}, {...} ]; use .jsonl for one object per line",
        )
    return SourceFile(path, "json", None, _json_array(name, text, lines, start + 1))


def _decode(name: str, text: str, pos: int, lines: _Lines) -> tuple[Any, int]:
    try:
        return json.JSONDecoder().raw_decode(text, pos)
    except json.JSONDecodeError as exc:
        line, col = lines.at(exc.pos)
        raise DatasetError(f"invalid JSON: {exc.msg}", file=name, line=line, column=col) from None


def _json_record(
    name: str, text: str, pos: int, lines: _Lines, index: int
) -> tuple[RawRecord | DatasetError, int]:
    """The JSON value at ``pos`` as a record (or why it is not one), and where it ends."""
    value, end = _decode(name, text, pos, lines)
    line, col = lines.at(pos)
    if isinstance(value, dict):
        return RawRecord(value, name, index, line, col), end
    error = DatasetError(
        f"record is {_kind(value)}, not an object", file=name, line=line, column=col, record=index
    )
    return error, end


def _json_array(name: str, text: str, lines: _Lines, pos: int) -> Iterator[RawRecord | DatasetError]:
    index = 0
    pos = _skip_ws(text, pos)
    if pos < len(text) and text[pos] == "]":
        raise DatasetError("the JSON array is empty: no records", file=name, line=lines.at(pos)[0])
    while True:
        pos = _skip_ws(text, pos)
        index += 1
        item, end = _json_record(name, text, pos, lines, index)
        yield item
        pos = _skip_ws(text, end)
        if pos < len(text) and text[pos] == ",":
            pos += 1
            continue
        if pos < len(text) and text[pos] == "]":
            break
        line, col = lines.at(pos)
        what = "the file ends" if pos >= len(text) else f"found {text[pos]!r}"
        raise DatasetError(
            f"invalid JSON: expected ',' or ']' after record {index}, but {what}",
            file=name,
            line=line,
            column=col,
        )
    rest = _skip_ws(text, pos + 1)
    if rest < len(text):
        line, col = lines.at(rest)
        raise DatasetError("invalid JSON: extra data after the array", file=name, line=line, column=col)


def _json_stream(name: str, text: str, lines: _Lines) -> Iterator[RawRecord | DatasetError]:
    pos, index = _skip_ws(text, 0), 0
    while pos < len(text):
        index += 1
        item, end = _json_record(name, text, pos, lines, index)
        yield item
        pos = _skip_ws(text, end)


def _jsonl_records(name: str, text: str) -> Iterator[RawRecord | DatasetError]:
    index = 0
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        index += 1
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            yield DatasetError(
                f"invalid JSON: {exc.msg}",
                file=name,
                line=number,
                column=exc.colno,
                record=index,
                hint="each line of a .jsonl file must be one JSON object",
            )
            continue
        if isinstance(value, dict):
            yield RawRecord(value, name, index, number)
        else:
            yield DatasetError(
                f"line is {_kind(value)}, not a JSON object", file=name, line=number, record=index
            )


def _table(name: str, path: Path, text: str, delimiter: str) -> SourceFile:
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    try:
        header = next(reader)
        while not header:
            header = next(reader)
    except StopIteration:
        raise DatasetError("empty file", file=name) from None
    except csv.Error as exc:
        raise DatasetError(f"invalid CSV: {exc}", file=name, line=reader.line_num) from None
    header_line = reader.line_num
    names = [cell.strip() for cell in header]
    blank = [i + 1 for i, cell in enumerate(names) if not cell]
    dupes = sorted({cell for cell in names if cell and names.count(cell) > 1})
    if blank or dupes:
        problem = f"column {blank[0]} has no name" if blank else f"column '{dupes[0]}' appears twice"
        raise DatasetError(
            f"the first line is not a header ({problem})",
            file=name,
            line=header_line,
            hint="the first line must name the columns, e.g. instruction,input,output",
        )
    return SourceFile(path, path.suffix.lower()[1:], names, _table_rows(name, reader, names))


def _table_rows(name: str, reader: Any, names: list[str]) -> Iterator[RawRecord | DatasetError]:
    index = 0
    while True:
        start = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise DatasetError(f"invalid CSV: {exc}", file=name, line=start) from None
        if not row or (len(row) == 1 and not row[0].strip()):
            continue
        index += 1
        if len(row) != len(names):
            yield DatasetError(
                f"row has {len(row)} cells but the header names {len(names)} columns",
                file=name,
                line=start,
                record=index,
                hint="quote cells that contain the delimiter or line breaks",
            )
            continue
        yield RawRecord(dict(zip(names, row, strict=True)), name, index, start)


def _txt_records(name: str, text: str, split: str) -> Iterator[RawRecord]:
    index = 0
    block: list[str] = []
    block_line = 0
    for number, line in enumerate(text.split("\n"), start=1):
        if split == "line":
            if line.strip():
                index += 1
                yield RawRecord({"text": line.rstrip("\r")}, name, index, number)
            continue
        if line.strip():
            if not block:
                block_line = number
            block.append(line.rstrip("\r"))
        elif block:
            index += 1
            yield RawRecord({"text": "\n".join(block)}, name, index, block_line)
            block = []
    if block:
        yield RawRecord({"text": "\n".join(block)}, name, index + 1, block_line)


def _parquet(path: Path) -> SourceFile:
    import pyarrow.parquet as pq

    name = str(path)
    if path.stat().st_size == 0:
        raise DatasetError("empty file", file=name)
    try:
        handle = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises ArrowInvalid / OSError with a technical message
        raise DatasetError(
            f"not a Parquet file, or a damaged one ({exc})",
            file=name,
            hint="export the table again as Parquet",
        ) from None
    if handle.metadata.num_rows == 0:
        raise DatasetError("the Parquet file has no rows", file=name)

    def rows() -> Iterator[RawRecord]:
        index = 0
        try:
            for batch in handle.iter_batches(batch_size=1024):
                for row in batch.to_pylist():
                    index += 1
                    yield RawRecord(row, name, index)
        except Exception as exc:  # a damaged data page surfaces only while reading
            raise DatasetError(f"damaged Parquet data after record {index} ({exc})", file=name) from None

    return SourceFile(path, "parquet", list(handle.schema_arrow.names), rows())


def check_cancel(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise CancelledError("Dataset preparation was cancelled")


def readable_records(
    source: SourceFile,
    skipped: list[DatasetError],
    *,
    cancel: threading.Event | None = None,
    stop_at_first: bool = False,
) -> tuple[list[RawRecord], int]:
    """The records of ``source`` that could be read, and how many it has in all.

    A record that cannot be read (broken JSON on its line, a wrong type) is raised when
    ``stop_at_first``, else added to ``skipped`` — so a report can list every bad record at once.
    """
    raws: list[RawRecord] = []
    count = 0
    for item in source.records:
        check_cancel(cancel)
        count += 1
        if isinstance(item, DatasetError):
            if stop_at_first:
                raise item
            skipped.append(item)
        else:
            raws.append(item)
    return raws, count


def no_usable_records(records: int, skipped: list[DatasetError], files: list[str]) -> DatasetError:
    """The error for a dataset in which every record has a problem (the first one is the hint)."""
    first = skipped[0] if skipped else None
    return DatasetError(
        f"no usable records: all {records} records have problems",
        file=files[0] if len(files) == 1 else None,
        hint=f"first: {first}" if first else None,
    )
