"""Time and peak of one training step with offloaded checkpoints: none, save_on_cpu, overlapped.

A random-weight Llama-shaped model (default: 4 decoder layers of Llama 3 8B's shape, hidden 4096,
its 128k vocabulary), LoRA r16 on every linear layer, bf16 weights under bf16 autocast, non-reentrant
gradient checkpointing and the chunked loss, as the engine trains it; one sequence of 8192 tokens.
The modes are:

- ``none``: checkpointing alone (the layer inputs stay on the GPU);
- ``save_on_cpu``: ``torch.autograd.graph.save_on_cpu(pin_memory=True)``, synchronous copies;
- ``overlapped``: ``lora_studio.core.train.offload.Offloader``, copies on a side stream, prefetch.

A step is forward + backward (the optimizer's step is the same for all three and left out). Each
mode first runs once untimed and its loss and LoRA gradients are compared with ``none``'s (``none
again`` shows the run-to-run noise of the attention kernels); then the modes are timed interleaved
(``none``, ``save_on_cpu``, ``overlapped``, ``none``, ...) and the median is reported; the peak is
``max_memory_allocated`` of one more step after resetting the peak stats.

Without a CUDA device it says so and exits 0 (nothing is written).

Run: ``.venv/bin/python bench/offload_cuda.py [--layers 4] [--hidden 4096] [--seq 8192] [--reps 5]``
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from typing import Any

from _common import print_table, write_results

GIB = 2**30
MODES = ("none", "save_on_cpu", "overlapped")


def build_model(layers: int, hidden: int, seq: int) -> Any:
    """Llama 3 8B's shape at ``layers`` layers (heads of 128, GQA 4:1, MLP 3.5×), random bf16 weights, LoRA."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(
        hidden_size=hidden,
        intermediate_size=hidden * 7 // 2,
        num_hidden_layers=layers,
        num_attention_heads=hidden // 128,
        num_key_value_heads=max(1, hidden // 512),
        vocab_size=128256,
        max_position_embeddings=max(seq, 8192),
        rope_theta=500000.0,
        use_cache=False,
    )
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()
    model = get_peft_model(
        model,
        LoraConfig(
            r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", init_lora_weights=False
        ),
    )
    model.train()
    return model


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=4, help="decoder layers (default 4)")
    parser.add_argument("--hidden", type=int, default=4096, help="hidden size (default 4096)")
    parser.add_argument("--seq", type=int, default=8192, help="tokens in the sequence (default 8192)")
    parser.add_argument("--reps", type=int, default=5, help="timed steps per mode (default 5)")
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("bench/offload_cuda.py: no CUDA device here — the offload timing comparison was skipped.")
        return 0

    from lora_studio.core.train.memory_saving import chunked_forward_loss
    from lora_studio.core.train.offload import Offloader, shared_host_buffers

    model = build_model(args.layers, args.hidden, args.seq)
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    ids = torch.randint(0, model.config.vocab_size, (1, args.seq), device="cuda")
    offloaders: list[Offloader] = []

    def context(mode: str) -> contextlib.AbstractContextManager[Any]:
        if mode == "save_on_cpu":
            return torch.autograd.graph.save_on_cpu(pin_memory=True)
        if mode == "overlapped":
            offloaders.append(Offloader())
            return offloaders[-1]
        return contextlib.nullcontext()

    def step(mode: str) -> torch.Tensor:
        with context(mode), torch.autocast("cuda", dtype=torch.bfloat16):
            loss = chunked_forward_loss(model, {"input_ids": ids, "labels": ids})
        loss.backward()
        return loss.detach()

    def grads() -> dict[str, torch.Tensor]:
        out = {n: p.grad.detach().clone() for n, p in trainable}
        model.zero_grad(set_to_none=True)
        return out

    reference_loss = step("none")
    reference = grads()
    rows: dict[str, dict[str, Any]] = {}
    for mode in ("none again", *MODES[1:]):
        loss = step(mode.split()[0])
        got = grads()
        rows[mode] = {
            "mode": mode,
            "loss diff": abs(loss - reference_loss).item(),
            "max grad diff": max((got[n] - reference[n]).abs().max().item() for n in got),
        }
    del reference
    allocations_after_warmup = shared_host_buffers().allocations

    times: dict[str, list[float]] = {mode: [] for mode in MODES}
    for _ in range(args.reps):
        for mode in MODES:
            torch.cuda.synchronize()
            start = time.perf_counter()
            step(mode)
            torch.cuda.synchronize()
            times[mode].append((time.perf_counter() - start) * 1000)
            model.zero_grad(set_to_none=True)
    peaks = {}
    for mode in MODES:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        step(mode)
        torch.cuda.synchronize()
        peaks[mode] = torch.cuda.max_memory_allocated()
        model.zero_grad(set_to_none=True)

    base_ms = statistics.median(times["none"])
    table = [
        {
            "mode": mode,
            "ms/step": statistics.median(times[mode]),
            "vs none": statistics.median(times[mode]) / base_ms,
            "peak GiB": peaks[mode] / GIB,
        }
        for mode in MODES
    ]
    stats = offloaders[-1].stats
    pool = shared_host_buffers()
    offload = {
        "tensors offloaded": stats.offloaded,
        "offloaded GiB": stats.offloaded_bytes / GIB,
        "deduplicated": stats.deduplicated,
        "kept parameters": stats.kept_parameters,
        "kept small": stats.kept_small,
        "kept other": stats.kept_other,
        "prefetched": stats.prefetched,
        "fetched on demand": stats.fetched_on_demand,
        "pinned GiB held": pool.held_bytes / GIB,
        "pinned allocations after warm-up": pool.allocations - allocations_after_warmup,
    }
    name = (
        f"{args.layers} layers, hidden {args.hidden}, {args.seq} tokens, bf16, {torch.cuda.get_device_name()}"
    )
    print_table(f"One forward + backward with checkpointing ({name}; median of {args.reps})", table)
    print_table("Exactness against no offload (first step of each mode)", list(rows.values()))
    print_table("Overlapped offloader, last step", [offload])
    ratio = statistics.median(times["overlapped"]) / base_ms
    print(
        f"\noverlapped / no offload: {ratio:.3f} "
        f"(save_on_cpu / no offload: {statistics.median(times['save_on_cpu']) / base_ms:.3f})"
    )
    write_results(
        "offload_cuda",
        {
            "layers": args.layers,
            "hidden": args.hidden,
            "seq": args.seq,
            "reps": args.reps,
            "device": torch.cuda.get_device_name(),
            "times_ms": times,
            "rows": table,
            "exactness": list(rows.values()),
            "offload": offload,
            "overlapped_over_none": ratio,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
