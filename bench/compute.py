"""Compute efficiency: achieved FLOP/s of LoRA training steps vs the machine's matmul FLOP/s.

FLOPs per token (stated formula): 4 x N_matmul (forward 2N + the input-gradient half of the
backward 2N; frozen weights get no weight gradient) + 6 x N_lora (adapters do get weight
gradients) + 6 x s x d x L for causal attention (QK^T and AV: 2 x 2 x (s/2) x d forward, x3 with
the backward), where N_matmul counts every weight used in a matmul (linear layers + output head),
s is the sequence length, d the attention width and L the layers. Gradient checkpointing would add
2 x N_matmul (not used here).

The engine is compared with a plain PyTorch loop (forward, backward, AdamW step) on the same
model, LoRA config (r16 all-linear, the engine's default dropout 0.05) and batch shape, with the
standard loss on both sides, measured in the same run. Target: engine >= the plain loop (3% noise).
The engine at its default settings is reported too: the chunked loss (a memory saver, on by
default) recomputes the output head in the backward pass, which costs compute on this model.

    python bench/compute.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from _common import DATA, WORK, median, print_table, write_results

SEQ, BATCH = 256, 4


def device() -> str:
    """Where the engine will train: the GPU when there is one (bench/gpu_check.sh), else the CPU."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def matmul_flops(reps: int = 8) -> float:
    import torch

    a, b = torch.randn(2048, 2048, device=device()), torch.randn(2048, 2048, device=device())
    a @ b
    times = []
    for _ in range(reps):
        sync()
        start = time.perf_counter()
        a @ b
        sync()
        times.append(time.perf_counter() - start)
    return 2 * 2048**3 / median(times)


def flops_per_token(model, seq: int) -> float:
    import torch

    cfg = model.config
    matmul = sum(
        m.weight.numel()
        for n, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and "lora_" not in n
    )
    lora = sum(p.numel() for p in model.parameters() if p.requires_grad)
    d = cfg.num_attention_heads * (
        getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    )
    return 4 * matmul + 6 * lora + 6 * seq * d * cfg.num_hidden_layers


LORA_DROPOUT = 0.05  # the engine's default (lora.dropout)


def plain_loop(steps: int) -> tuple[float, float]:
    import torch
    from peft import LoraConfig, get_peft_model

    from lora_studio.core.models import load_model

    model, _ = load_model("default", "none", "fp32")
    torch.manual_seed(0)
    model = get_peft_model(
        model, LoraConfig(r=16, lora_alpha=32, lora_dropout=LORA_DROPOUT, target_modules="all-linear")
    )
    model.config.use_cache = False
    model.to(device())
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    ids = torch.randint(0, model.config.vocab_size, (BATCH, SEQ), device=device())
    times = []
    for step in range(steps + 1):
        sync()
        start = time.perf_counter()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync()
        if step:  # the first step warms up
            times.append(time.perf_counter() - start)
    tokens_per_s = BATCH * SEQ / median(times)
    return tokens_per_s, flops_per_token(model, SEQ)


def long_documents() -> str:
    """c4 documents as plain text: nearly all are cut to SEQ tokens, so batches are BATCH x SEQ."""
    lines = (DATA / "c4_demo.long24.jsonl").read_text().splitlines()
    path = WORK / "c4.jsonl"
    path.write_text("\n".join(line for line in lines if len(json.loads(line)["text"]) > 2000) + "\n")
    return str(path)


def engine(steps: int, *, chunked_loss: bool) -> float:
    from lora_studio.core.config import RunConfig
    from lora_studio.core.train import events as ev
    from lora_studio.core.train import train

    config = RunConfig.from_dict(
        {
            "model": {"source": "default", "compute_dtype": "fp32"},
            "lora": {"r": 16, "alpha": 32, "dropout": LORA_DROPOUT},
            "data": {"path": long_documents(), "max_seq_len": SEQ, "train_on": "all"},
            "training": {
                "max_steps": steps + 1,
                "batch_size": BATCH,
                "save_steps": 10_000,
                "sample_prompts": [],
                "learning_rate": 1e-4,
                "chunked_loss": chunked_loss,
            },
            "output": {"runs_dir": str(WORK / "compute-runs")},
        }
    )
    marks = {}

    def listen(event):
        if isinstance(event, ev.Step) and event.step == 1:
            marks["start"], marks["tokens0"] = time.perf_counter(), event.tokens_seen
        elif isinstance(event, ev.Step) and event.step == steps + 1:
            marks["end"], marks["tokens1"] = time.perf_counter(), event.tokens_seen

    train(config, listen)
    return (marks["tokens1"] - marks["tokens0"]) / (marks["end"] - marks["start"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    from lora_studio.core.models import quiet_library_defaults

    quiet_library_defaults()
    steps = 2 if args.quick else 4
    peak = matmul_flops()
    plain_tps, per_token = plain_loop(steps)
    engine_tps = engine(steps, chunked_loss=False)
    default_tps = engine(steps, chunked_loss=True)
    peak_after = matmul_flops()
    peak = (peak + peak_after) / 2

    def row(what: str, tps: float) -> dict[str, Any]:
        return {
            "what": what,
            "tok/s": tps,
            "GFLOP/s": tps * per_token / 1e9,
            "of peak": tps * per_token / peak,
        }

    rows = [
        {"what": f"fp32 matmul 2048^2 ({device()})", "tok/s": "-", "GFLOP/s": peak / 1e9, "of peak": 1.0},
        row("plain PyTorch LoRA loop", plain_tps),
        row("LoRA Studio engine (standard loss, as the loop)", engine_tps),
        row("LoRA Studio engine, default settings (chunked loss)", default_tps),
    ]
    print_table(
        f"Compute efficiency, SmolLM2-135M fp32, LoRA r16 all-linear dropout {LORA_DROPOUT}, "
        f"batch {BATCH}x{SEQ} ({per_token / 1e6:.0f} MFLOP per token)",
        rows,
    )
    print(f"engine / plain loop: {engine_tps / plain_tps:.3f} (target >= 1.0 within noise)")
    print(
        f"chunked loss (memory saver, default on) costs {1 - default_tps / engine_tps:.0%} of the engine's speed here"
    )
    write_results(
        "compute",
        {
            "rows": rows,
            "flops_per_token": per_token,
            "engine_vs_plain": engine_tps / plain_tps,
            "default_vs_plain": default_tps / plain_tps,
        },
    )


if __name__ == "__main__":
    main()
