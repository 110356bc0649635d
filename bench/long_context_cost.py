"""What the long-context savers cost in speed: training steps of the default model, savers off/auto/on.

The savers (``core/train/long_context.py``) are exact but not free: a tiled MLP reruns each MLP's
forward in backward, recomputed norms rerun their elementwise ops. ``auto`` (the default) turns them
on only when the memory estimate says a run needs them; where it leaves them off the step is the
plain step — its one cost is deciding, once per run (one analytic estimate), which this measures too.

Setting: SmolLM2-135M-Instruct (the app's default model), LoRA r16 all-linear, dropout 0, batch 1,
non-reentrant gradient checkpointing, the engine's chunked loss, torch AdamW; sequences of 512 and
2,048 tokens. Four variants, run interleaved (off, auto, on, all, off, ...) so machine noise
hits them alike; the figure is the median step time, reported as a ratio to "off":

- off:  ``tiled_mlp = norm_recompute = "off"``
- auto: the settings left at "auto", decided by ``estimate.decide_savers`` for this machine (on a GPU or a
        CPU with the memory to spare for these lengths: off)
- on:   both forced on, with the tile sizes the engine uses (at 512 tokens a tile spans the whole
        sequence, so the MLP is not split: only the norms' recompute costs)
- all:  "on" plus chunked attention in place of SDPA (what a padded/packed long run on an
        architecture without a memory-efficient kernel gets)

Targets: auto / off ≤ 1.05 (where auto leaves them off); on / off reported.

Run: ``.venv/bin/python bench/long_context_cost.py [--quick]``
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from _common import default_model_dir, median, print_table, write_results

SEQS = (512, 2048)


def build(variant: str, seq: int) -> tuple[Any, Any, Any, str]:
    import torch
    from transformers import AutoModelForCausalLM

    from lora_studio.core.config import RunConfig
    from lora_studio.core.estimate import decide_savers
    from lora_studio.core.train import wrap_with_lora
    from lora_studio.core.train.long_context import Savers, apply_savers

    folder = default_model_dir()
    setting = {"off": "off", "on": "on", "all": "on", "auto": "auto"}[variant]
    config = RunConfig().with_overrides(
        {
            "model.source": str(folder),
            "lora.r": 16,
            "lora.dropout": 0.0,
            "data.max_seq_len": seq,
            "training.batch_size": 1,
            "training.gradient_checkpointing": True,
            "training.tiled_mlp": setting,
            "training.norm_recompute": setting,
        }
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    model.config.use_cache = False
    model = wrap_with_lora(model, config)
    start = time.perf_counter()
    savers, why = decide_savers(config, "cpu")
    decided = time.perf_counter() - start
    if variant in ("on", "all"):
        savers = Savers(tiled_mlp=True, norm_recompute=True, chunked_attention=variant == "all")
    apply_savers(model, savers)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    return model, optimizer, decided, why


def step_seconds(model: Any, optimizer: Any, ids: Any) -> float:
    from lora_studio.core.train.memory_saving import chunked_forward_loss

    start = time.perf_counter()
    loss = chunked_forward_loss(model, {"input_ids": ids, "labels": ids})
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def main(argv: list[str]) -> int:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    args = parser.parse_args(argv)
    reps = 3 if args.quick else 6
    rows, payload = [], []
    for seq in SEQS:
        built = {v: build(v, seq) for v in ("off", "auto", "on", "all")}
        torch.manual_seed(1)
        ids = torch.randint(0, 49152, (1, seq))
        times: dict[str, list[float]] = {v: [] for v in built}
        for model, optimizer, _, _ in built.values():
            step_seconds(model, optimizer, ids)  # warm-up: optimizer states, allocator
        for _ in range(reps):
            for v, (model, optimizer, _, _) in built.items():
                times[v].append(step_seconds(model, optimizer, ids))
        off = median(times["off"])
        row = {
            "seq": seq,
            "off s/step": off,
            "auto / off": median(times["auto"]) / off,
            "on / off": median(times["on"]) / off,
            "all / off": median(times["all"]) / off,
            "auto decided": built["auto"][3],
            "deciding s (once a run)": built["auto"][2],
        }
        rows.append(row)
        payload.append({**row, "times": times})
        del built
    print_table(
        "Savers off vs auto vs forced on (all: + chunked attention): median step time of the default model (CPU)",
        rows,
    )
    auto_cost = max(r["auto / off"] for r in rows)
    targets = {"auto / off (max over lengths)": auto_cost, "target": 1.05}
    print_table("Targets", [{"measure": k, "value": v} for k, v in targets.items()])
    write_results(
        "long_context_cost",
        {"rows": payload, "reps": reps, "targets": targets, "met": auto_cost <= 1.05},
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
