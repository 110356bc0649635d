"""Shared fixtures: a persistent converted default model, and tiny random models built from configs.

The default model's GGUF → safetensors conversion takes ~30 s, so it is cached once under
``.pytest_cache/`` (re-created automatically; tests that exercise the conversion itself use their
own empty cache). Runs always go to a temporary folder.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
import user_files

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parent / "data"

# The user's real files, as they are before any test runs (checked again after the last one).
_REAL_LOCATIONS = user_files.user_locations(dict(os.environ))
_REAL_BEFORE = user_files.snapshot(_REAL_LOCATIONS)
# Everything a code path could find without our own overrides goes to a sandbox too: Qt's default
# settings file, platformdirs' folders (XDG) — for this process and every process a test starts.
_SANDBOX = Path(tempfile.mkdtemp(prefix="lora-studio-tests-home-"))
for _name in ("XDG_CONFIG_HOME", "XDG_CACHE_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME"):
    os.environ[_name] = str(_SANDBOX / _name.lower())
os.environ.setdefault("LORA_STUDIO_CACHE_DIR", str(ROOT / ".pytest_cache" / "lora-studio-cache"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True)
def _runs_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("LORA_STUDIO_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("LORA_STUDIO_CONFIG_DIR", str(tmp_path / "config"))  # saved prompt sets
    monkeypatch.setenv("LORA_STUDIO_SETTINGS", str(tmp_path / "settings.ini"))  # the GUI's QSettings
    yield
    gui_helpers.stop_meters()  # a failed GUI test's meter must not tick on (see stop_meters)
    gui_helpers.free_qt_garbage()


@pytest.fixture(scope="session", autouse=True)
def _users_files_untouched():
    """Fails the session (an error after the last test) if any test wrote the user's real files."""
    yield
    changed = user_files.changes(_REAL_BEFORE, user_files.snapshot(_REAL_LOCATIONS))
    shutil.rmtree(_SANDBOX, ignore_errors=True)
    assert not changed, (
        "the user's own LoRA Studio files changed during the tests (a test that writes there, or the app "
        "or `make bench` running meanwhile):\n" + "\n".join(changed[:20])
    )


@pytest.fixture(scope="session")
def default_model_dir() -> Path:
    """The converted bundled model (bf16 safetensors + tokenizer), converted once per cache."""
    from lora_studio.core.models import resolve_model

    return resolve_model("default").path


import gui_helpers  # noqa: E402  (Qt-free at import)

from lora_studio.tiny_models import make_tiny_model  # noqa: E402  (re-exported for tests)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, default_model_dir) -> Path:
    """2 layers, hidden 64, tied embeddings, SmolLM2's tokenizer and ChatML template."""
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-llama", default_model_dir)
