"""Where LoRA Studio keeps its files.

Locations come from platformdirs and can be overridden with ``LORA_STUDIO_CACHE_DIR`` and
``LORA_STUDIO_RUNS_DIR`` (tests and CI point them into a temporary folder).
"""

from __future__ import annotations

import os
from pathlib import Path

APP_NAME = "lora-studio"

#: The repository's ``resources/`` folder: icons, demo datasets, catalogs.
RESOURCES_DIR = Path(__file__).resolve().parents[2] / "resources"


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


def resource_path(*parts: str) -> Path:
    """A file under ``resources/``."""
    return RESOURCES_DIR.joinpath(*parts)
