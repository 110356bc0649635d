"""Regenerate ``llama_cpp_quants.npz`` and ``llama_cpp_types.json`` from llama.cpp itself.

Needs llama-cpp-python (``make llamacpp``); run from the repository root:

    .venv/bin/python tests/data/make_llama_cpp_quants.py

``llama_cpp_quants.npz``: inputs (float32) and the bytes llama.cpp's ``ggml_quantize_chunk`` makes
of them, per storage type — so CI, which has no llama.cpp, still checks our port bit for bit.
``llama_cpp_types.json``: the storage type ``llama_model_quantize`` gives every tensor of two
llama-shaped models (tensor shapes only, no weights of value), per file type.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent))

from llama_cpp_native import ggml_quantize  # noqa: E402

TYPES = ("Q4_K", "Q5_K", "Q6_K", "Q4_0", "Q5_0", "Q5_1", "Q8_0")


def inputs() -> dict[str, np.ndarray]:
    """Weights of the kinds a quantizer meets: Gaussian, heavy-tailed, one-signed, sparse, flat, tiny."""
    rng = np.random.default_rng(20261203)
    sparse = rng.standard_normal((4, 512)) * (rng.random((4, 512)) < 0.1)
    sparse[0, :32] = -0.0  # a block of negative zeros: the sign of a zero scale is part of the bytes
    return {
        "gaussian": (rng.standard_normal((8, 1536)) * 0.02).astype(np.float32),
        "heavy": (rng.standard_t(2, (4, 1024)) * 0.05).astype(np.float32),
        "positive": np.abs(rng.standard_normal((2, 768))).astype(np.float32),
        "sparse": sparse.astype(np.float32),
        "constant": np.full((2, 256), 0.5, np.float32),
        "zeros": np.zeros((1, 256), np.float32),
        "tiny": (rng.standard_normal((2, 512)) * 1e-6).astype(np.float32),
    }


def main() -> None:
    import gguf

    from lora_studio.core import llamacpp
    from lora_studio.core.export.gguf import write_model_gguf
    from lora_studio.core.export.quant_mix import FILE_TYPES
    from lora_studio.tiny_models import make_tiny_model

    arrays = {}
    for name, data in inputs().items():
        arrays[f"{name}/input"] = data
        for qtype in TYPES:
            arrays[f"{name}/{qtype}"] = ggml_quantize(data, qtype)
    np.savez_compressed(HERE / "llama_cpp_quants.npz", **arrays)

    from safetensors.torch import load_file

    from lora_studio.core.models import load_config, load_tokenizer, resolve_model

    default = resolve_model("default").path
    tokenizer = load_tokenizer(default)
    result: dict[str, dict[str, dict[str, str]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        models = {
            # the default model (576-wide rows: its K-quants fall back to 32-element types)
            "smollm2-135m": default,
            # an 8B-like layout, narrow: 32 layers, GQA 4, rows K-quants divide, untied output
            "llama-32-layers": make_tiny_model(
                Path(tmp) / "llama-32", default, layers=32, hidden=256, heads=8, kv_heads=2,
                intermediate=768, tie=False,
            ),
        }  # fmt: skip
        for label, folder in models.items():
            config = load_config(folder)
            state = {}
            for file in sorted(folder.glob("*.safetensors")):
                state.update({k: v.float() for k, v in load_file(str(file)).items()})
            source = Path(tmp) / f"{label}-f16.gguf"
            write_model_gguf(source, state, config, tokenizer, quant="f16", name=label, tick=lambda *_: None)
            del state
            result[label] = {}
            for quant, (ftype, _, _) in FILE_TYPES.items():
                if quant == "f16":
                    continue
                target = Path(tmp) / f"{label}-{quant}.gguf"
                llamacpp.quantize(source, target, ftype)
                reader = gguf.GGUFReader(str(target))
                result[label][quant] = {t.name: t.tensor_type.name for t in reader.tensors}
    (HERE / "llama_cpp_types.json").write_text(
        json.dumps(result, sort_keys=True, separators=(",", ":")) + "\n"
    )
    print("wrote", HERE / "llama_cpp_quants.npz", "and", HERE / "llama_cpp_types.json")


if __name__ == "__main__":
    main()
