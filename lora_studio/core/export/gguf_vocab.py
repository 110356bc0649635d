"""The tokenizer inside a GGUF: vocabulary, merges, token types, special tokens, chat template.

Written as llama.cpp's ``convert_hf_to_gguf.py`` writes a byte-level BPE vocabulary, because both
llama.cpp and transformers' GGUF loader rebuild the tokenizer from exactly these keys; the
pre-tokenizer name is found the way llama.cpp's converter finds it (a hash of a test encoding).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from hashlib import sha256
from pathlib import Path
from typing import Any

from lora_studio.core.errors import LoraStudioError


class GGUFExportError(LoraStudioError):
    """This model or adapter cannot be written as GGUF (yet)."""


# llama.cpp identifies a BPE pre-tokenizer by hashing the ids of this text (convert_hf_to_gguf.py).
_PRE_CHECK_TEXT = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) "
    "✅ 🦙🦙 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ "
    "------======= нещо на Български ''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, "
    "'RE you sure? 'M not sure I'll make it, 'D you like some tea? We'Ve a'lL"
)
_PRE_HASHES = {
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",
    "c136ed14d01c2745d4f60a9596ae66800e2b61fa45643e72436041855ad4089d": "smaug-bpe",
    "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454": "gpt-2",
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",
    "e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea": "qwen2",
    "63b97e4253352e6f357cc59ea5b583e3a680eaeaf2632188c2b952de2588485e": "tekken",
    "ccc2ef013c104be7bae2965776d611e1d7a8a2a9c547dd93a682c9a9fc80352e": "gpt-4o",
    "d353350c764d8c3b39c763113960e4fb4919bea5fbf208a0e3b22e8469dc7406": "llama4",
    "9d032fcbd5501f4a38150912590928bfb36091efb5df11b8e2124b0390e3fb1e": "falcon3",
}


def add_tokenizer_metadata(
    writer: Any, tokenizer: Any, config: Any, *, source_gguf: Path | None = None
) -> list[str]:
    """Vocabulary, merges, token types, special tokens and chat template, as llama.cpp's converter writes them.

    Only byte-level BPE tokenizers (GPT-2 style, as in SmolLM2, Llama 3, Qwen) are written for now.
    """
    import gguf

    model = check_tokenizer(tokenizer)
    notes: list[str] = []
    vocab = tokenizer.get_vocab()
    size = max(int(config.vocab_size), max(vocab.values()) + 1)
    by_id = {i: t for t, i in vocab.items()}
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(size):
        token = by_id.get(i)
        if token is None:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(token)
            control = added[i].special or (token.startswith("<|") and token.endswith("|>"))
            types.append(gguf.TokenType.CONTROL if control else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(token)
            types.append(gguf.TokenType.NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    pre, how = pre_tokenizer_name(tokenizer, source_gguf)
    if how == "guessed":
        notes.append(f"pre-tokenizer not recognised; wrote tokenizer.ggml.pre = '{pre}'")
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    for attr, add in (
        ("bos_token_id", writer.add_bos_token_id),
        ("eos_token_id", writer.add_eos_token_id),
        ("unk_token_id", writer.add_unk_token_id),
        ("pad_token_id", writer.add_pad_token_id),
    ):
        value = getattr(tokenizer, attr, None)
        if value is not None:
            add(int(value))
    probe = tokenizer("a")["input_ids"]
    writer.add_add_bos_token(bool(probe) and probe[0] == tokenizer.bos_token_id)
    writer.add_add_eos_token(bool(probe) and probe[-1] == tokenizer.eos_token_id and len(probe) > 1)
    from lora_studio.core.chat import END_OF_TURN_TOKENS

    eot = next(
        (vocab[t] for t in END_OF_TURN_TOKENS if t in vocab and vocab[t] != tokenizer.eos_token_id), None
    )
    if eot is not None:
        writer.add_eot_token_id(int(eot))
    template = tokenizer.chat_template
    if isinstance(template, Mapping):
        template = template.get("default") or next(iter(template.values()), None)
    if template:
        writer.add_chat_template(str(template))
    else:
        notes.append("the tokenizer has no chat template; none was written")
    return notes


def check_tokenizer(tokenizer: Any) -> dict[str, Any]:
    """The tokenizer's BPE model (vocab, merges); only byte-level BPE (GPT-2 style) is written yet."""
    backend = (
        json.loads(tokenizer.backend_tokenizer.to_str()) if hasattr(tokenizer, "backend_tokenizer") else {}
    )
    model = backend.get("model") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback") or not _byte_level(backend):
        raise GGUFExportError(
            "GGUF export: only byte-level BPE tokenizers (GPT-2 style, as in SmolLM2, Llama 3 or Qwen) "
            "are supported yet",
            hint="export 'merged' and convert it with llama.cpp's convert_hf_to_gguf.py",
        )
    return model


def _byte_level(backend: dict[str, Any]) -> bool:
    text = json.dumps(backend.get("pre_tokenizer")) + json.dumps(backend.get("decoder"))
    return '"ByteLevel"' in text


def pre_tokenizer_name(tokenizer: Any, source_gguf: Path | None = None) -> tuple[str, str]:
    """llama.cpp's name for the pre-tokenizer: by the converter's hash, else from the source GGUF.

    Returns ``(name, how)`` where ``how`` is "hash", "source" or "guessed".
    """
    ids = tokenizer.encode(_PRE_CHECK_TEXT)
    found = _PRE_HASHES.get(sha256(str(ids).encode()).hexdigest())
    if found:
        return found, "hash"
    if source_gguf is not None and source_gguf.is_file():
        import gguf

        field = gguf.GGUFReader(str(source_gguf)).fields.get("tokenizer.ggml.pre")
        if field is not None:
            return str(field.contents()), "source"
    backend = json.loads(tokenizer.backend_tokenizer.to_str())
    if (backend.get("pre_tokenizer") or {}).get("type") == "ByteLevel":
        return "gpt-2", "guessed"
    return "default", "guessed"
