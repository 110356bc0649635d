"""Tiny random models built from a config, with a real tokenizer: fast, yet every code path is real.

Used by the tests and the benchmarks (a 2-layer llama with SmolLM2's tokenizer trains a step in
well under a second on a CPU).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

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

    from lora_studio.core.models import model_construction

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
    with model_construction():
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    for name in TOKENIZER_FILES:
        if (tokenizer_dir / name).is_file():
            shutil.copy(tokenizer_dir / name, out / name)
    return out
