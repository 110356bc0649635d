"""Real CUDA peaks of one QLoRA training step: the standard path against ours, and against precise mode.

``bench/memory.py`` compares the two paths on simulated peaks; this checks the simulation on a
GPU. It builds a random-weight model from a catalog config (real widths and vocabulary, fewer
layers so it is quick to write and load), saves it, loads it as the engine does (bitsandbytes NF4
+ double quant, bf16), prepares it with the engine's ``wrap_with_lora`` for each path (settings
``COMMON`` and ``PATHS`` of ``bench/memory.py``), and runs two steps of forward (bf16 autocast, as
the Trainer), backward, clipping and torch AdamW. The second step's ``max_memory_allocated`` is
compared with precise mode's simulated peak for the same config at the same depth, and
``max_memory_reserved`` + the CUDA context with the allowance ``bench/memory.py`` adds.

Without a CUDA device it says so and exits 0 (nothing is written).

Run: ``.venv/bin/python bench/memory_cuda.py [--model Llama-3.1-8B] [--layers 8] [--seqs 1024,4096]``
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path
from typing import Any

from _common import WORK, print_table, write_results
from memory import ALLOWANCE, COMMON, PATHS

GIB = 2**30


def build_model_folder(model: str, layers: int) -> Path:
    """A random-weight bf16 model of the catalog config with ``layers`` decoder layers, saved once."""
    import torch
    from transformers import AutoModelForCausalLM

    from lora_studio.core.estimate import catalog_config, find_catalog_model
    from lora_studio.core.models import text_config

    config = catalog_config(find_catalog_model(model))
    if layers:
        text_config(config).num_hidden_layers = layers
        if getattr(text_config(config), "layer_types", None):
            text_config(config).layer_types = list(text_config(config).layer_types)[:layers]
    folder = WORK / f"{model}-{layers or 'all'}"
    if not (folder / "config.json").exists():
        torch.manual_seed(0)
        net = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
        net.save_pretrained(folder)
        del net
    return folder


def run_config(folder: Path, path: str, r: int) -> Any:
    from lora_studio.core.config import RunConfig

    overrides = {
        "model.source": str(folder),
        "model.quantization": COMMON["quantization"],
        "model.double_quant": COMMON["double_quant"],
        "model.compute_dtype": COMMON["compute_dtype"],
        "model.lean_kbit_prep": PATHS[path]["lean_kbit_prep"],
        "lora.r": r,
        "lora.alpha": 2 * r,
        "lora.dropout": COMMON["lora_dropout"],
        "lora.target_modules": COMMON["targets"],
        "training.batch_size": 1,
        "training.optimizer": COMMON["optimizer"],
        "training.gradient_checkpointing": COMMON["gradient_checkpointing"],
        "training.chunked_loss": PATHS[path]["chunked_loss"],
        "training.checkpoint_offload": PATHS[path]["checkpoint_offload"],
    }
    return RunConfig().with_overrides(overrides)


def measure(folder: Path, path: str, r: int, seq: int) -> dict[str, int]:
    """Peak allocated / reserved bytes of a steady-state step, and the process's CUDA context."""
    import torch
    from transformers import AutoModelForCausalLM

    from lora_studio.core.models import quantization_config
    from lora_studio.core.train import wrap_with_lora
    from lora_studio.core.train.memory_saving import chunked_forward_loss, offload_context

    config = run_config(folder, path, r)
    quant = quantization_config("nf4", torch.bfloat16, double_quant=True)
    model = AutoModelForCausalLM.from_pretrained(
        folder, dtype=torch.bfloat16, quantization_config=quant, device_map={"": 0}
    )
    model.config.use_cache = False
    model = wrap_with_lora(model, config)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4, foreach=True)
    ids = torch.randint(0, model.config.vocab_size, (1, seq), device="cuda")
    t = config.training

    def step() -> None:
        with offload_context(t.checkpoint_offload), torch.autocast("cuda", dtype=torch.bfloat16):
            if t.chunked_loss:
                loss = chunked_forward_loss(model, {"input_ids": ids, "labels": ids})
            else:
                loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        del loss
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # creates the optimizer states, as the simulation's warm-up step does
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    free, total = torch.cuda.mem_get_info()
    out = {
        "allocated": torch.cuda.max_memory_allocated(),
        "reserved": torch.cuda.max_memory_reserved(),
        "context": (total - free) - torch.cuda.memory_reserved(),
    }
    return out  # the model and optimizer go with this frame; the caller empties the cache


def release() -> None:
    import torch

    gc.collect()
    torch.cuda.empty_cache()


def simulated(folder: Path, path: str, r: int, seq: int) -> int:
    """Precise mode's peak (tensors) for the same config, every layer simulated."""
    from lora_studio.core.estimate import EstimateRequest, estimate_precise

    settings = {**COMMON, **PATHS[path], "lora_r": r, "seq_len": seq}
    req = EstimateRequest(str(folder / "config.json"), **settings)
    layers = json.loads((folder / "config.json").read_text())["num_hidden_layers"]
    return estimate_precise(req, layers=layers).peak_bytes


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="Llama-3.1-8B", help="catalog model (default Llama-3.1-8B)")
    parser.add_argument("--layers", type=int, default=8, help="decoder layers to build (0: all)")
    parser.add_argument("--r", type=int, default=32, help="LoRA rank (default 32)")
    parser.add_argument("--seqs", default="1024,4096", help="sequence lengths (default 1024,4096)")
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("bench/memory_cuda.py: no CUDA device here — the real-GPU memory comparison was skipped.")
        return 0
    seqs = [int(s) for s in args.seqs.split(",")]
    start = time.perf_counter()
    folder = build_model_folder(args.model, args.layers)
    rows = []
    for seq in seqs:
        for path in PATHS:
            real = measure(folder, path, args.r, seq)
            release()
            sim = simulated(folder, path, args.r, seq)
            rows.append(
                {
                    "path": path,
                    "seq": seq,
                    "allocated GB": real["allocated"] / GIB,
                    "simulated GB": sim / GIB,
                    "sim/alloc": sim / real["allocated"],
                    "reserved GB": real["reserved"] / GIB,
                    "context GB": real["context"] / GIB,
                    "reserved+context - sim GB": (real["reserved"] + real["context"] - sim) / GIB,
                }
            )
    ratios = []
    for seq in seqs:
        std, ours = (next(r for r in rows if r["seq"] == seq and r["path"] == p) for p in PATHS)
        ratios.append(
            {
                "seq": seq,
                "allocated ours/std": ours["allocated GB"] / std["allocated GB"],
                "simulated ours/std": ours["simulated GB"] / std["simulated GB"],
            }
        )
    name = f"{args.model}, {args.layers or 'all'} layers, r{args.r}, {torch.cuda.get_device_name()}"
    print_table(f"One training step on CUDA vs precise mode ({name}; GB = GiB)", rows)
    print_table("Peak ratio, ours / standard", ratios)
    print(
        f"\nallowance used by bench/memory.py for context + allocator: {ALLOWANCE / GIB:.2f} GB "
        "(compare with the last column)"
    )
    write_results(
        "memory_cuda",
        {
            "model": args.model,
            "layers": args.layers,
            "r": args.r,
            "device": torch.cuda.get_device_name(),
            "rows": rows,
            "ratios": ratios,
            "seconds": time.perf_counter() - start,
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
