"""Shared fixtures: a persistent converted default model, and tiny random models built from configs.

The default model's GGUF → safetensors conversion takes ~30 s, so it is cached once under
``.pytest_cache/`` (re-created automatically; tests that exercise the conversion itself use their
own empty cache). Runs always go to a temporary folder.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parent / "data"
SHARED_DATASETS = ROOT.parent / "shared" / "datasets"

os.environ.setdefault("LORA_STUDIO_CACHE_DIR", str(ROOT / ".pytest_cache" / "lora-studio-cache"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True)
def _runs_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("LORA_STUDIO_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("LORA_STUDIO_CONFIG_DIR", str(tmp_path / "config"))  # saved prompt sets
    yield
    gui_helpers.stop_meters()  # a failed GUI test's meter must not tick on (see stop_meters)
    gui_helpers.free_qt_garbage()


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
