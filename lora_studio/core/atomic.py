"""Saving files so that a crash, a kill or a full disk never leaves half of one.

Every file or folder the app writes for the user (configs, run status and metrics, exports,
evaluations, prompt sets) is written beside its target and renamed into place, so a reader sees the
old version or the new one, never a torn one. ``pause_before_rename`` is the test seam at the one
moment that matters: the ``write_pause`` fault holds there so a test can kill the process exactly
between "content on disk" and "renamed" (``tests/test_reliability_writes.py``).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import tempfile
from pathlib import Path

from lora_studio.core.faults import hold, parse_faults

_writes = itertools.count(1)  # files and folders renamed into place by this process


def atomic_write_text(path: Path, text: str) -> None:
    """Write to a temporary file in the same folder, fsync, then ``os.replace`` into place."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    """The bytes version of :func:`atomic_write_text`; the temporary file is removed on any failure."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        pause_before_rename()
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def pause_before_rename() -> None:
    """Called by every atomic writer between "content written" and "renamed into place".

    With ``write_pause`` unset this costs one environment lookup; set, it sleeps so that a test can
    SIGKILL the process at the one moment where a non-atomic save would leave a torn file.
    """
    if "write_pause" not in os.environ.get("LORA_STUDIO_FAULTS", ""):
        return
    fault = parse_faults().get("write_pause")
    if fault is None:
        return
    number = next(_writes)
    if fault.step in (0, number):
        hold(fault, f"write {number} before its rename")
