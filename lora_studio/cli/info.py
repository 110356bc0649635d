"""``lora-studio info MODEL``: what a model is, from its config alone."""

from __future__ import annotations

import argparse
import json

from lora_studio.core.models import model_info


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("info", help="show a model's architecture and size without loading its weights")
    parser.add_argument("model", help="'default', a model folder, a .gguf file, or a cached hub id")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="allow Python code shipped with the model (only for models you trust)",
    )
    parser.add_argument("--allow-pickle", action="store_true", help="allow pickled .bin weights")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    info = model_info(args.model, trust_remote_code=args.trust_remote_code, allow_pickle=args.allow_pickle)
    if args.json:
        print(json.dumps(info.to_dict(), indent=2))
        return 0
    rows = [
        ("Model", f"{info.name} ({info.kind})"),
        ("Folder", info.path),
        ("Architecture", f"{info.architecture} ({info.model_type})"),
        ("Parameters", f"{info.parameters:,} ({info.parameters / 1e6:.1f} M)"),
        ("Layers", str(info.layers)),
        ("Hidden size", str(info.hidden_size)),
        ("MLP size", str(info.intermediate_size)),
        ("Attention heads", f"{info.heads} (key/value heads: {info.kv_heads}, head dim {info.head_dim})"),
        ("Vocabulary", f"{info.vocab_size:,}"),
        ("Context length", f"{info.context_length:,}" if info.context_length else "unknown"),
        ("Stored dtype", info.dtype),
        ("Tied embeddings", "yes" if info.tie_word_embeddings else "no"),
        ("Chat template", "yes" if info.chat_template else "no (a simple fallback template is used)"),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    return 0
