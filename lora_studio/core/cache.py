"""The model cache: what it holds, how much disk it takes, and clearing it safely.

The cache keeps only files the app can re-create (models converted from GGUF, ~30 s each for the
default model), so clearing it costs time, never work. Runs — the user's checkpoints and adapters —
are never touched, even when the runs folder has been pointed inside the cache folder.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from lora_studio.core.paths import cache_dir, runs_dir

#: The file a finished conversion writes last (``core.models``): a folder with it is complete.
CONVERTED_MARKER = "lora_studio_source.json"
#: An unfinished conversion folder (``.<name>.<random>``) older than this is a crash's leftover;
#: a younger one may belong to a conversion running right now, so it is left alone.
STALE_AFTER_S = 3600


@dataclass(frozen=True)
class CacheEntry:
    path: Path
    size: int
    kind: str  # "converted model" or "unfinished conversion"


@dataclass(frozen=True)
class CacheUsage:
    folder: Path
    entries: tuple[CacheEntry, ...]

    @property
    def size(self) -> int:
        return sum(entry.size for entry in self.entries)

    def describe(self) -> str:
        models = sum(entry.kind == "converted model" for entry in self.entries)
        leftovers = len(self.entries) - models
        words = f"{models} converted model{'s' if models != 1 else ''}"
        if leftovers:
            words += f", {leftovers} unfinished conversion{'s' if leftovers != 1 else ''}"
        return words


def models_dir(root: Path | None = None) -> Path:
    """Where converted models live (``core.models.converted_gguf_folder`` writes there)."""
    return (root or cache_dir()) / "models"


def cache_usage(
    root: Path | None = None, *, protect: Iterable[Path] = (), now: float | None = None
) -> CacheUsage:
    """The clearable entries of the model cache with their sizes (reads sizes only, no contents).

    ``protect``: more folders that must survive (the runs folder a config points at); the default
    runs folder is always protected.
    """
    folder = models_dir(root)
    entries = []
    if folder.is_dir():
        protected = _protected(protect)
        moment = time.time() if now is None else now
        for child in sorted(folder.iterdir()):
            if not child.is_dir() or child.is_symlink() or _contains(child, protected):
                continue
            if (child / CONVERTED_MARKER).is_file():
                entries.append(CacheEntry(child, _size(child), "converted model"))
            elif child.name.startswith(".") and moment - child.stat().st_mtime > STALE_AFTER_S:
                entries.append(CacheEntry(child, _size(child), "unfinished conversion"))
    return CacheUsage(folder, tuple(entries))


def clear_cache(root: Path | None = None, *, protect: Iterable[Path] = ()) -> CacheUsage:
    """Delete what :func:`cache_usage` lists and return it; anything else in the folder stays.

    A file that cannot be deleted (permissions, in use on Windows) raises ``OSError`` naming it,
    after the entries before it have been removed.
    """
    usage = cache_usage(root, protect=protect)
    for entry in usage.entries:
        shutil.rmtree(entry.path)
    return usage


def _protected(extra: Iterable[Path]) -> list[Path]:
    return [Path(p).expanduser().resolve() for p in (runs_dir(), *extra)]


def _contains(path: Path, protected: list[Path]) -> bool:
    """True when ``path`` is, or holds, a protected folder (a runs folder set inside the cache)."""
    resolved = path.resolve()
    return any(p == resolved or resolved in p.parents for p in protected)


def _size(folder: Path) -> int:
    total = 0
    for item in folder.rglob("*"):
        try:
            if item.is_file() and not item.is_symlink():
                total += item.stat().st_size
        except OSError:  # vanished while counting
            continue
    return total
