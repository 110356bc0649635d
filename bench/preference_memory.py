"""Preference-tuning memory: LoRA Studio's DPO path against a plain TRL DPOTrainer + peft script.

Every number is the estimator's **precise mode** (``core/estimate/precise.py`` with
``core/estimate/preference.py``): one DPO training step — the policy forward and backward of each
pair's chosen and rejected answer through TRL's fused log-prob head, the reference forward under
``no_grad`` with the adapter switched off, gradient clipping, the optimizer step — of the model as
each path builds it, on fake tensors under torch's ``MemTracker`` (no weights, no GPU). 2 and 4
decoder layers are simulated and the per-layer difference extrapolated to all 32.

Common to every path: Llama-3.1-8B (catalog config), NF4 + double quant, compute in bf16 under
autocast, LoRA r16 on all linear layers (alpha 32, dropout 0.05 — which TRL's ``disable_dropout``
sets to 0), batch 1 pair, both answers up to ``--seq`` tokens each (every position scored), torch
AdamW, sdpa attention, DPO sigmoid loss, TRL 1.x.

The plain path is a user script that loads the 4-bit model itself and hands it with a
``LoraConfig`` to ``trl.DPOTrainer(model, args=DPOConfig(...), peft_config=...)``, keeping TRL's
defaults: ``gradient_checkpointing=True`` (non-reentrant), ``bf16=True``, ``disable_dropout=True``,
reference = the model with the adapter disabled (no copy), and TRL's cast of a quantized model's
adapters to bf16 (so their gradients and AdamW states are bf16 too). Two variants:

- **plain** — additionally ``prepare_model_for_kbit_training`` before the trainer, as peft's QLoRA
  guide and most QLoRA scripts do: embeddings, norms and lm_head in fp32, hence an fp32 residual
  stream. This is the baseline the target is judged on.
- **plain, TRL alone** — without it: TRL 1.x's DPOTrainer does not call it, so a script that
  leaves it out keeps them in bf16 (memory-identical to our lean k-bit preparation).

**Ours** — the engine: lean k-bit preparation (bf16 embeddings/head), fp32 adapters (as peft makes
them and SFT runs train them), gradient checkpointing, and ``training.checkpoint_offload``
(checkpointed layer inputs and the head's saved hidden states in host memory). Also shown without
the offload, to see what each saver buys.

The chunked loss does not apply: TRL computes DPO's loss, already in tiles (its fused head never
builds the logits). Target: ours ≤ 0.7 × plain at 2,048 tokens per side.

Run: ``.venv/bin/python bench/preference_memory.py`` (a few minutes on 2 CPU cores; ``--seq 2048``
for one length).
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from _common import print_table, write_results

GIB = 2**30
MODEL = "catalog:Llama-3.1-8B"
SEQS = (1024, 2048, 4096)
TARGET_SEQ = 2048
TARGET = 0.7
COMMON = {
    "method": "dpo",
    "quantization": "nf4",
    "double_quant": True,
    "compute_dtype": "bf16",
    "lora_r": 16,
    "targets": "all-linear",
    "lora_dropout": 0.05,
    "batch_size": 1,
    "optimizer": "adamw_torch",
    "gradient_checkpointing": True,
    "device": "cuda",
}
#: name -> (request settings, adapters cast to bf16 as TRL does)
PATHS: dict[str, tuple[dict[str, Any], bool]] = {
    "plain": ({"lean_kbit_prep": False, "checkpoint_offload": False}, True),
    "plain, TRL alone": ({"lean_kbit_prep": True, "checkpoint_offload": False}, True),
    "ours, checkpointing": ({"lean_kbit_prep": True, "checkpoint_offload": False}, False),
    "ours, offloaded checkpoints": ({"lean_kbit_prep": True, "checkpoint_offload": True}, False),
}
OURS = "ours, offloaded checkpoints"
SHOWN = ("parameters", "other", "gradients", "optimizer", "activations", "temporaries")


def simulate(path: str, seq: int) -> dict[str, Any]:
    """Precise peak by category (extrapolated to 32 layers) and the analytic estimate of one path."""
    import torch

    from lora_studio.core.estimate import EstimateRequest, estimate_precise

    settings, bf16_adapters = PATHS[path]
    request = EstimateRequest(MODEL, **COMMON, **settings, seq_len=seq)
    start = time.perf_counter()
    result = estimate_precise(request, adapter_dtype=torch.bfloat16 if bf16_adapters else None)
    analytic = result.analytic.total_bytes - result.analytic.bytes["overhead"]
    return {
        "peak": dict(result.peak),
        "total": result.peak_bytes,
        "analytic": analytic,
        "seconds": time.perf_counter() - start,
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        description="DPO memory: our path against a plain TRL DPOTrainer script."
    )
    parser.add_argument("--seq", type=int, action="append", help="tokens per answer (repeatable)")
    args = parser.parse_args(argv)
    seqs = tuple(args.seq or SEQS)
    if TARGET_SEQ not in seqs:
        seqs = (*seqs, TARGET_SEQ)
    from lora_studio.core.models import quiet_library_defaults

    quiet_library_defaults()
    start = time.perf_counter()
    runs = {(path, seq): simulate(path, seq) for seq in seqs for path in PATHS}
    rows = []
    for seq in seqs:
        plain = runs[("plain", seq)]["total"]
        alone = runs[("plain, TRL alone", seq)]["total"]
        for path in PATHS:
            run = runs[(path, seq)]
            row: dict[str, Any] = {
                "tokens/side": seq,
                "path": path,
                "peak GB": run["total"] / GIB,
                "vs plain": run["total"] / plain,
                "vs TRL alone": run["total"] / alone,
            }
            row.update({f"{k[:6]} GB": run["peak"][k] / GIB for k in SHOWN})
            # the analytic estimate models the engine (fp32 adapters), not TRL's bf16 cast
            bf16_adapters = PATHS[path][1]
            row["analytic/precise"] = "-" if bf16_adapters else run["analytic"] / run["total"]
            rows.append(row)
    print_table(
        f"Peak memory of one DPO step, precise mode ({MODEL[8:]} QLoRA r16 all-linear, batch 1 pair; "
        "GB = GiB of tensors, CUDA context excluded)",
        rows,
    )
    at = {path: runs[(path, TARGET_SEQ)]["total"] for path in PATHS}
    ratio = at[OURS] / at["plain"]
    ratio_alone = at[OURS] / at["plain, TRL alone"]
    weights = runs[(OURS, TARGET_SEQ)]["peak"]["parameters"] + runs[(OURS, TARGET_SEQ)]["peak"]["other"]
    targets = {
        f"ours/plain at {TARGET_SEQ} tokens per side": ratio,
        "target": TARGET,
        f"ours/plain (TRL alone) at {TARGET_SEQ}": ratio_alone,
        f"ours: weights and quantization state, share of the peak at {TARGET_SEQ}": weights / at[OURS],
    }
    print_table("Targets", [{"measure": k, "value": v} for k, v in targets.items()])
    elapsed = time.perf_counter() - start
    print(f"\n{len(runs)} settings simulated in {elapsed:.0f} s")
    write_results(
        "preference_memory",
        {
            "settings": {"model": MODEL, "common": COMMON, "paths": {k: v[0] for k, v in PATHS.items()}},
            "bf16_adapters": [k for k, v in PATHS.items() if v[1]],
            "rows": rows,
            "targets": targets,
            "met": ratio <= TARGET,
            "seconds": elapsed,
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
