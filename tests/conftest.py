"""Shared fixtures: a persistent converted default model, and tiny random models built from configs.

The default model's GGUF → safetensors conversion takes ~30 s, so it is cached once under
``.pytest_cache/`` (re-created automatically; tests that exercise the conversion itself use their
own empty cache). Runs always go to a temporary folder.
"""

from __future__ import annotations

import json
import os
import shutil
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


@pytest.fixture(scope="session")
def default_model_dir() -> Path:
    """The converted bundled model (bf16 safetensors + tokenizer), converted once per cache."""
    from lora_studio.core.models import resolve_model

    return resolve_model("default").path


TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "special_tokens_map.json",
)


def make_tiny_model(
    out: Path,
    tokenizer_dir: Path,
    *,
    layers: int = 2,
    hidden: int = 64,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate: int = 128,
    tie: bool = True,
    seed: int = 0,
    model_type: str = "llama",
) -> Path:
    """A random llama-family model with the real SmolLM2 tokenizer: fast, but every code path real."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    tok_cfg = json.loads((tokenizer_dir / "config.json").read_text())
    config = AutoConfig.for_model(
        model_type,
        vocab_size=tok_cfg["vocab_size"],
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=2048,
        tie_word_embeddings=tie,
        bos_token_id=tok_cfg.get("bos_token_id"),
        eos_token_id=tok_cfg.get("eos_token_id"),
        pad_token_id=tok_cfg.get("pad_token_id"),
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    for name in TOKENIZER_FILES:
        if (tokenizer_dir / name).is_file():
            shutil.copy(tokenizer_dir / name, out / name)
    return out


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, default_model_dir) -> Path:
    """2 layers, hidden 64, tied embeddings, SmolLM2's tokenizer and ChatML template."""
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-llama", default_model_dir)
