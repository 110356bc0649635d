"""The user's own LoRA Studio files, and a check that a test session left them exactly as they were.

Tests point every location at temporary folders (``conftest.py``), but a code path that forgets to
read the override would write the real settings, runs or cache of whoever runs the suite — once,
the Train page then opened with a test's tiny model. So the session also records what is in the
real locations before the first test and fails if anything there changed after the last one.
"""

from __future__ import annotations

import os
from pathlib import Path

APP = "lora-studio"


def user_locations(env: dict[str, str]) -> list[Path]:
    """Where the app keeps a user's files under ``env`` (XDG, as platformdirs and QSettings read it)."""
    home = Path(env.get("HOME", "~")).expanduser()
    config = Path(env.get("XDG_CONFIG_HOME") or home / ".config")
    cache = Path(env.get("XDG_CACHE_HOME") or home / ".cache")
    data = Path(env.get("XDG_DATA_HOME") or home / ".local" / "share")
    return [config / APP, cache / APP, data / APP]


def snapshot(paths: list[Path]) -> dict[str, tuple[int, int]]:
    """Every file and folder under ``paths``: (size, mtime in ns)."""
    found: dict[str, tuple[int, int]] = {}
    for root in paths:
        if not root.exists():
            continue
        for folder, dirs, files in os.walk(root):
            for name in [*dirs, *files]:
                path = Path(folder) / name
                try:
                    info = path.lstat()
                except FileNotFoundError:
                    continue
                found[str(path)] = (info.st_size, info.st_mtime_ns)
        info = root.lstat()
        found[str(root)] = (0, info.st_mtime_ns)
    return found


def changes(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]) -> list[str]:
    """What appeared, disappeared or changed between two snapshots, one line each."""
    lines = [f"created {p}" for p in sorted(after.keys() - before.keys())]
    lines += [f"deleted {p}" for p in sorted(before.keys() - after.keys())]
    lines += [f"changed {p}" for p in sorted(before.keys() & after.keys()) if before[p] != after[p]]
    return lines
