"""How accurate is the memory estimate? Three measurements, each printed as a table and saved.

1. Analytic vs precise mode for every catalog model (one of three batch/seq/quantization settings
   each, all three for Llama-3.1-8B, plus a few options on SmolLM2-135M), and again for every
   catalog architecture under one of the preference methods (DPO, KTO, ORPO, SimPO in turn, each
   on another setting), as TRL's trainers take their step. Precise mode simulates a real training
   step on fake tensors (1 and 2 layers, extrapolated). Target: ratio within ±10%.
2. Activation bytes vs what autograd really saves: a real forward on this CPU with the engine's
   own model preparation (``wrap_with_lora``), counting each distinct storage that is still saved
   for backward at the end of the forward (``torch.autograd.graph.saved_tensors_hooks``), for
   several architectures, dtypes, batch/seq sizes, with and without checkpointing. Widths are the
   real models'; depth and vocabulary are reduced (they do not change bytes per token per layer).
3. On a CUDA machine only: the estimated total against ``torch.cuda.max_memory_reserved()`` after
   a few real training steps of the engine, and the estimated tensors (total minus the CUDA
   context and allocator slack) against ``torch.cuda.max_memory_allocated()``. Without a GPU this
   part says so and is skipped.

Run: ``.venv/bin/python bench/estimate_accuracy.py`` (a few minutes on a 2-core CPU);
``--only precise|saved|gpu`` runs one part (nothing is written then); ``--cuda`` is ``--only gpu``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
import weakref
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from _common import WORK, default_model_dir, print_table, write_results

from lora_studio.core.config import default

GIB = 2**30
#: Precise mode simulates 1 and 2 decoder layers here (the default, 2 and 4, doubles the time).
PRECISE_LAYERS = 2
SETTINGS = [
    {"quantization": "nf4", "batch_size": 1, "seq_len": 512},
    {
        "quantization": "nf4",
        "double_quant": True,
        "gradient_checkpointing": True,
        "batch_size": 2,
        "seq_len": 1024,
    },
    {"quantization": "none", "batch_size": 2, "seq_len": 256},
]
EXTRA = [
    ("Llama-3.1-8B", SETTINGS[1]),
    ("Llama-3.1-8B", SETTINGS[2]),
    ("SmolLM2-135M", {"quantization": "int8", "batch_size": 2, "seq_len": 256}),
    ("SmolLM2-135M", {"use_dora": True, "batch_size": 2, "seq_len": 256}),
    ("SmolLM2-135M", {"chunked_loss": False, "batch_size": 4, "seq_len": 512}),
    (
        "SmolLM2-135M",
        {"optimizer": "paged_adamw_8bit", "lean_kbit_prep": False, "quantization": "nf4", "batch_size": 1},
    ),
]
#: The long-context savers, forced on (their "auto" needs the device's memory, which these requests
#: leave unknown): a long Llama row, padded SDPA rows (chunked attention replaces the mask), and an
#: eager-only model (chunked attention replaces the scores).
_SAVERS_ON = {
    "tiled_mlp": "on",
    "norm_recompute": "on",
    "checkpoint_offload": "on",
    "chunked_attention": "on",
}
EXTRA += [
    (
        "Llama-3.1-8B",
        {
            "quantization": "nf4",
            "gradient_checkpointing": True,
            "batch_size": 1,
            "seq_len": 8192,
            **_SAVERS_ON,
        },
    ),
    (
        "Qwen2.5-7B",
        {
            "quantization": "nf4",
            "gradient_checkpointing": True,
            "batch_size": 2,
            "seq_len": 2048,
            **_SAVERS_ON,
        },
    ),
    (
        "gemma-2-2b",
        {
            "quantization": "nf4",
            "gradient_checkpointing": True,
            "batch_size": 1,
            "seq_len": 4096,
            **_SAVERS_ON,
        },
    ),
]


#: The preference methods, one per catalog architecture in turn (``preference_cases``).
METHODS = ("dpo", "kto", "orpo", "simpo")


def short(settings: dict[str, Any]) -> str:
    """A compact label: 'nf4+dq b2×1024 gc' (prefixed by the method when it is not SFT)."""
    from lora_studio.core.estimate import METHOD_NAMES

    parts = [METHOD_NAMES[settings["method"]]] if settings.get("method", "sft") != "sft" else []
    parts.append(settings.get("quantization", "none") + ("+dq" if settings.get("double_quant") else ""))
    parts.append(
        f"b{settings.get('batch_size', default('training.batch_size'))}"
        f"×{settings.get('seq_len', default('data.max_seq_len'))}"
    )
    if settings.get("gradient_checkpointing"):
        parts.append("gc")
    if settings.get("use_dora"):
        parts.append("dora")
    if settings.get("lean_kbit_prep") is False:
        parts.append("peft-prep")
    if settings.get("chunked_loss") is False:
        parts.append("full-loss")
    if "optimizer" in settings:
        parts.append(settings["optimizer"])
    if settings.get("tiled_mlp") == "on":
        parts.append("savers on")
    return " ".join(parts)


# -- 1. analytic vs precise -------------------------------------------------------------------


def precise_row(name: str, settings: dict[str, Any]) -> dict[str, Any]:
    """One catalog model in precise mode (runs in a worker process)."""
    from lora_studio.core.estimate import EstimateRequest, estimate_precise

    start = time.perf_counter()
    # with offloaded checkpoints the layer inputs leave the GPU, so a lone layer peaks differently
    # from one of many: those rows simulate 2 and 4 layers, as bench/memory.py does
    layers = 2 * PRECISE_LAYERS if settings.get("checkpoint_offload") == "on" else PRECISE_LAYERS
    precise = estimate_precise(EstimateRequest(f"catalog:{name}", **settings), layers=layers)
    analytic = precise.analytic.total_bytes - precise.analytic.bytes["overhead"]
    return {
        "model": name,
        "setting": short(settings),
        "analytic_GB": analytic / GIB,
        "precise_GB": precise.peak_bytes / GIB,
        "ratio": analytic / precise.peak_bytes,
        "layers": "/".join(map(str, precise.layers_simulated)) + f" of {precise.layers}",
        "s": round(time.perf_counter() - start, 1),
    }


def precise_cases() -> list[tuple[str, dict[str, Any]]]:
    from lora_studio.core.estimate import load_model_catalog

    cases: list[tuple[str, dict[str, Any]]] = []
    seen: set[str] = set()
    for index, model in enumerate(load_model_catalog()):
        key = json.dumps(model.config, sort_keys=True)
        if key in seen:  # same architecture under another name (Llama-3.3-70B = Llama-3.1-70B)
            continue
        seen.add(key)
        cases.append((model.name, SETTINGS[index % len(SETTINGS)]))
    return cases + EXTRA + preference_cases()


def preference_cases() -> list[tuple[str, dict[str, Any]]]:
    """Each catalog architecture once under a preference method (methods and settings in turn).

    KTO needs a batch of at least 2 (its KL term pairs each prompt with another row's answer).
    """
    from lora_studio.core.estimate import load_model_catalog

    cases: list[tuple[str, dict[str, Any]]] = []
    seen: set[str] = set()
    for model in load_model_catalog():
        key = json.dumps(model.config, sort_keys=True)
        if key in seen:
            continue
        seen.add(key)
        index = len(cases)
        method = METHODS[index % len(METHODS)]
        settings = {**SETTINGS[(index + index // len(METHODS)) % len(SETTINGS)], "method": method}
        if method == "kto":
            settings["batch_size"] = max(2, settings["batch_size"])
        cases.append((model.name, settings))
    return cases


def compare_precise() -> list[dict[str, Any]]:
    cases = precise_cases()
    with ProcessPoolExecutor(max_workers=2, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(precise_row, name, settings) for name, settings in cases]
        rows = []
        for future in futures:
            rows.append(future.result())
            print(
                f"  {rows[-1]['model']:<16} {rows[-1]['setting']:<28} ratio {rows[-1]['ratio']:.3f}",
                flush=True,
            )
    return rows


# -- 2. activations vs saved tensors -----------------------------------------------------------


SAVED_CASES = [
    # catalog architecture, layers, dtype, settings
    ("SmolLM2-135M", 4, "fp32", {"batch_size": 2, "seq_len": 256}),
    ("SmolLM2-135M", 4, "bf16", {"batch_size": 2, "seq_len": 256}),
    ("SmolLM2-135M", 4, "bf16", {"batch_size": 2, "seq_len": 256, "gradient_checkpointing": True}),
    ("SmolLM2-135M", 4, "bf16", {"batch_size": 1, "seq_len": 512, "quantization": "nf4"}),
    (
        "SmolLM2-135M",
        4,
        "bf16",
        {"batch_size": 2, "seq_len": 256, "quantization": "nf4", "gradient_checkpointing": True},
    ),
    ("SmolLM2-135M", 4, "bf16", {"batch_size": 1, "seq_len": 256, "use_dora": True}),
    ("Qwen2.5-0.5B", 3, "bf16", {"batch_size": 1, "seq_len": 512}),
    ("Qwen3-0.6B", 2, "bf16", {"batch_size": 2, "seq_len": 128}),
    ("Phi-3-mini-4k", 2, "bf16", {"batch_size": 1, "seq_len": 256}),
    ("gemma-2-2b", 2, "bf16", {"batch_size": 1, "seq_len": 256}),
    ("Llama-3.1-8B", 1, "bf16", {"batch_size": 1, "seq_len": 256}),
]
VOCAB = 2048


def reduced_config(name: str, layers: int) -> Path:
    """The catalog model's config with fewer layers and a small vocabulary, as a config.json."""
    from lora_studio.core.estimate import find_catalog_model

    fields = dict(find_catalog_model(name).config)
    fields.update(num_hidden_layers=layers, vocab_size=VOCAB, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    fields.pop("layer_types", None)
    folder = WORK / f"{name}-{layers}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(fields))
    return folder


def build_model(folder: Path, dtype: str, settings: dict[str, Any]) -> Any:
    """A random-weight model of that config, prepared exactly as the engine prepares it."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from lora_studio.core.config import RunConfig
    from lora_studio.core.models import load_model, quiet_libraries
    from lora_studio.core.train import wrap_with_lora
    from lora_studio.tiny_models import TOKENIZER_FILES

    quant = settings.get("quantization", "none")
    torch.manual_seed(0)
    with quiet_libraries():
        if quant == "none":  # values do not change what is saved: skip initialisation
            config = AutoConfig.from_pretrained(folder)
            torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
            with torch.device("meta"):
                model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype)
            model = model.to_empty(device="cpu")
            model.tie_weights()
        else:
            if not any(folder.glob("*.safetensors")):
                AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder)).save_pretrained(folder)
                for name in TOKENIZER_FILES:  # load_model also loads the tokenizer
                    if (default_model_dir() / name).is_file():
                        shutil.copy(default_model_dir() / name, folder / name)
            model, _ = load_model(str(folder), quant, dtype, "cpu")
    model.config.use_cache = False
    overrides = {
        "model.source": str(folder),
        "model.quantization": quant,
        "model.compute_dtype": dtype,
        "lora.use_dora": settings.get("use_dora", False),
        "training.gradient_checkpointing": settings.get("gradient_checkpointing", False),
    }
    model = wrap_with_lora(model, RunConfig().with_overrides(overrides))
    model.train()
    return model


def saved_tensor_bytes(model: Any, batch: int, seq: int) -> int:
    """Distinct storages autograd still holds for backward after the decoder's forward.

    Parameters and buffers are weights, not activations; tensors saved by a graph that was already
    freed (e.g. DoRA's weight-norm computation) no longer count. Runs under the same CUDA-kernel
    mirror as precise mode (fused dropout keeps a 1-byte mask, as on a GPU).
    """
    import torch

    from lora_studio.core.estimate.fakes import cuda_kernels

    weights = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    entries: list[tuple[Any, int, int]] = []

    def pack(tensor: Any) -> Any:
        storage = tensor.untyped_storage()
        entries.append((weakref.ref(tensor), storage.data_ptr(), storage.nbytes()))
        return tensor

    ids = torch.randint(3, VOCAB, (batch, seq))
    mask = None
    if batch > 1:  # a padded batch, as the Trainer's collator makes
        mask = torch.ones((batch, seq), dtype=torch.long)
        mask[1:, -1] = 0
    decoder = model.get_base_model().get_decoder()
    with cuda_kernels(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        hidden = decoder(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
    alive = {ptr: size for ref, ptr, size in entries if ref() is not None and ptr not in weights}
    del hidden
    return sum(alive.values())


def compare_saved() -> list[dict[str, Any]]:
    from lora_studio.core.estimate import EstimateRequest, estimate_memory

    rows = []
    for name, layers, dtype, settings in SAVED_CASES:
        folder = reduced_config(name, layers)
        model = build_model(folder, dtype, settings)
        measured = saved_tensor_bytes(model, settings["batch_size"], settings["seq_len"])
        del model
        request = EstimateRequest(
            str(folder / "config.json"), device="cpu", compute_dtype=dtype, chunked_loss=False, **settings
        )
        estimated = estimate_memory(request).bytes["activations"]
        rows.append(
            {
                "model": f"{name} ({layers}L)",
                "setting": f"{dtype} " + short(settings),
                "estimate_MB": estimated / 2**20,
                "measured_MB": measured / 2**20,
                "ratio": estimated / measured,
            }
        )
        print(
            f"  {rows[-1]['model']:<20} {rows[-1]['setting']:<26} ratio {rows[-1]['ratio']:.3f}", flush=True
        )
    return rows


# -- 3. a real GPU -----------------------------------------------------------------------------


def compare_gpu() -> list[dict[str, Any]] | None:
    """Estimated total vs ``max_memory_reserved`` after 3 engine steps on the default model."""
    import torch

    if not torch.cuda.is_available():
        return None
    from _common import identity_like_data

    from lora_studio.core.config import RunConfig
    from lora_studio.core.estimate import EstimateRequest, estimate_memory
    from lora_studio.core.train import train

    rows = []
    for settings in ({"quantization": "none"}, {"quantization": "nf4", "gradient_checkpointing": True}):
        config = RunConfig().with_overrides(
            {
                "model.quantization": settings["quantization"],
                "data.path": str(identity_like_data(64)),
                "data.max_seq_len": 256,
                "training.batch_size": 8,
                "training.max_steps": 3,
                "training.gradient_checkpointing": settings.get("gradient_checkpointing", False),
                "training.sample_prompts": [],
                "output.runs_dir": str(WORK / "runs"),
            }
        )
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        train(config)
        measured = torch.cuda.max_memory_reserved()
        allocated = torch.cuda.max_memory_allocated()
        request = EstimateRequest.from_config(config, device="cuda", vram_bytes=None)
        estimate = estimate_memory(request)
        estimated = estimate.total_bytes
        tensors = estimated - estimate.bytes["overhead"]  # allocated memory holds no CUDA context
        rows.append(
            {
                "model": "default",
                "setting": short({**settings, "batch_size": 8, "seq_len": 256}) + " (≤256: padded batches)",
                "estimate_GB": estimated / GIB,
                "max_reserved_GB": measured / GIB,
                "ratio": estimated / measured,
                "tensors_GB": tensors / GIB,
                "max_allocated_GB": allocated / GIB,
                "ratio_allocated": tensors / allocated,
            }
        )
    return rows


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    ratios = [row["ratio"] for row in rows]
    return {
        "cases": len(ratios),
        "within_10pct": sum(0.9 <= r <= 1.1 for r in ratios),
        "min_ratio": round(min(ratios), 3),
        "max_ratio": round(max(ratios), 3),
    }


def main(argv: list[str]) -> int:
    from lora_studio.core.models import quiet_library_defaults

    quiet_library_defaults()
    parser = argparse.ArgumentParser(description="How accurate is the memory estimate?")
    parser.add_argument(
        "--only", choices=("precise", "saved", "gpu"), help="run one part (nothing is written)"
    )
    parser.add_argument("--cuda", action="store_true", help="the GPU comparison alone (bench/gpu_check.sh)")
    args = parser.parse_args(argv)
    only = "gpu" if args.cuda else args.only
    start = time.perf_counter()
    precise: list[dict[str, Any]] = []
    saved: list[dict[str, Any]] = []
    gpu = None
    if only in (None, "precise"):
        print("1. analytic vs precise mode (simulated step), every catalog model")
        precise = compare_precise()
    if only in (None, "saved"):
        print("2. activation bytes vs tensors autograd saves (real forward on this CPU)")
        saved = compare_saved()
    if only in (None, "gpu"):
        print("3. estimated total vs a real GPU")
        gpu = compare_gpu()
    print_table("Analytic vs precise (GB of tensors, overhead excluded; ratio = analytic / precise)", precise)
    print_table("Activations: estimate vs autograd's saved tensors (MB; ratio = estimate / measured)", saved)
    if gpu is None:
        print(
            "\nNo CUDA GPU on this machine: the comparison with torch.cuda.max_memory_reserved() was skipped."
        )
    else:
        print_table(
            "On the GPU: total vs torch.cuda.max_memory_reserved(), tensors vs max_memory_allocated()", gpu
        )
    if only is not None:
        return 0
    results = {
        "precise": {"summary": summary(precise), "rows": precise},
        "saved_tensors": {"summary": summary(saved), "rows": saved},
        "gpu": None if gpu is None else {"summary": summary(gpu), "rows": gpu},
        "seconds": round(time.perf_counter() - start, 1),
    }
    print(f"\nprecise: {results['precise']['summary']}")
    print(f"saved tensors: {results['saved_tensors']['summary']}")
    write_results("estimate_accuracy", results)
    ok = all(0.9 <= row["ratio"] <= 1.1 for row in precise + saved)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
