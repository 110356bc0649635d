"""Saving files so that a crash, a kill or a full disk never leaves half of one.

Every file or folder the app writes for the user (configs, run status and metrics, exports,
evaluations, prompt sets) is written beside its target and renamed into place, so a reader sees the
old version or the new one, never a torn one. ``pause_before_rename`` is the test seam at the one
moment that matters: the ``write_pause`` fault holds there so a test can kill the process exactly
between "content on disk" and "renamed" (``tests/test_reliability_writes.py``).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import stat
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
        try:  # a file the user restricted on purpose keeps its mode; a new one gets the umask's
            mode = stat.S_IMODE(path.stat().st_mode)
        except FileNotFoundError:
            mode = 0o666 & ~umask()
        os.chmod(tmp, mode)  # mkstemp made it 0600
        pause_before_rename()
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@functools.cache
def umask() -> int:
    """The process's umask (read once: setting it to read it would race other threads later)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    current = os.umask(0o022)
    os.umask(current)
    return current


def honour_umask(path: Path) -> None:
    """Give ``path`` (and everything under it) the modes a plain ``open``/``mkdir`` would have given.

    Temporary folders (``mkdtemp``: 0700) and files written by safetensors or ``mkstemp`` (0600) are
    private to the user; renamed into place as they are, a shared model folder or an exported adapter
    would be unreadable to the other accounts and tools the user's umask lets read them.
    """
    files, folders = 0o666 & ~umask(), 0o777 & ~umask()
    if path.is_dir() and not path.is_symlink():
        for root, _dirs, names in os.walk(path):
            os.chmod(root, folders)
            for name in names:
                target = os.path.join(root, name)
                if not os.path.islink(target):
                    os.chmod(target, files)
    elif path.is_file():
        os.chmod(path, files)


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
