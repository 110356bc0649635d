"""Where LoRA Studio keeps its files.

Locations come from platformdirs and can be overridden with ``LORA_STUDIO_CACHE_DIR``,
``LORA_STUDIO_RUNS_DIR`` and ``LORA_STUDIO_CONFIG_DIR`` (tests and CI point them into a temporary
folder).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

APP_NAME = "lora-studio"

#: Where a PyInstaller bundle unpacked its data files (``sys._MEIPASS``); None when not frozen.
BUNDLE_DIR: Path | None = Path(sys._MEIPASS) if hasattr(sys, "_MEIPASS") else None

#: The ``resources/`` folder (icons, demo datasets, catalogs): next to the package in the source
#: tree, inside the bundle when frozen (packaging/pyinstaller/lora-studio.spec puts it there).
RESOURCES_DIR = (BUNDLE_DIR or Path(__file__).resolve().parents[2]) / "resources"


def cache_dir() -> Path:
    """Converted models and other re-creatable files."""
    env = os.environ.get("LORA_STUDIO_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir(APP_NAME))


def runs_dir() -> Path:
    """Run folders (checkpoints, metrics, adapters): the user's work, never deleted by the app."""
    env = os.environ.get("LORA_STUDIO_RUNS_DIR")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir(APP_NAME)) / "runs"


def config_dir() -> Path:
    """Small files the user writes through the app (prompt sets): kept, unlike the cache."""
    env = os.environ.get("LORA_STUDIO_CONFIG_DIR")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_config_dir(APP_NAME))


def resource_path(*parts: str) -> Path:
    """A file under ``resources/``."""
    return RESOURCES_DIR.joinpath(*parts)
