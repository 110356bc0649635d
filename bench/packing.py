"""Padding-free packing vs padded batches vs length-grouped batches, on data with a real length spread.

The Alpaca-format public sample (LLaMA-Factory's alpaca_en_demo) trained through the engine on a
tiny llama; non-padding tokens/s for each batching mode, and the mean loss over the last quarter
of the tokens seen (the curves must agree: packing must not change what is learned).
Target: packing >= 1.5x padded.

    python bench/packing.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import time

from _common import DATA, WORK, median, print_table, tiny_model_dir, write_results

MODES = {
    "padded (random batches)": {"data.packing": False, "data.group_by_length": False},
    "length-grouped": {"data.packing": False, "data.group_by_length": True},
    "packed (padding-free)": {"data.packing": True},
}


def alpaca_subset(n: int):
    records = json.loads((DATA / "alpaca_en_demo.first400.json").read_text())[:n]
    path = WORK / f"alpaca-{n}.json"
    path.write_text(json.dumps(records))
    return path


def run(model_dir, data, overrides, steps):
    from lora_studio.core.config import RunConfig
    from lora_studio.core.train import events as ev
    from lora_studio.core.train import train

    config = RunConfig.from_dict(
        {
            "model": {"source": str(model_dir), "compute_dtype": "fp32"},
            "lora": {"r": 16, "dropout": 0.0},
            "data": {"path": str(data), "max_seq_len": 512},
            "training": {
                "max_steps": steps,
                "batch_size": 8,
                "save_steps": 10_000,
                "sample_prompts": [],
                "learning_rate": 1e-3,
            },
            "output": {"runs_dir": str(WORK / "packing-runs")},
        }
    ).with_overrides(overrides)
    marks, curve = {}, []

    def listen(event):
        if isinstance(event, ev.RunStarted):
            marks["start"] = time.perf_counter()
            marks["padding"] = event.dataset.get("padding", {})
        elif isinstance(event, ev.Step):
            curve.append((event.tokens_seen, event.loss))
            marks["end"] = time.perf_counter()

    train(config, listen)
    tokens = curve[-1][0]
    tail = [loss for seen, loss in curve if seen >= 0.75 * tokens]
    return {
        "tokens": tokens,
        "seconds": marks["end"] - marks["start"],
        "tail_loss": sum(tail) / len(tail),
        "padding": marks["padding"],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    from lora_studio.core.models import quiet_library_defaults

    quiet_library_defaults()
    model_dir = tiny_model_dir(layers=4, hidden=256, intermediate=688, heads=4, kv_heads=2)
    data = alpaca_subset(400)
    steps, reps = (10, 1) if args.quick else (20, 2)
    results = {name: [] for name in MODES}
    for _ in range(reps):
        for name, overrides in MODES.items():
            results[name].append(run(model_dir, data, overrides, steps))
    rows = []
    padded_tps = None
    for name, runs in results.items():
        tps = median([r["tokens"] / r["seconds"] for r in runs])
        padded_tps = padded_tps or tps
        rows.append(
            {
                "batching": name,
                "tokens/s": tps,
                "vs padded": tps / padded_tps,
                "tail loss": median([r["tail_loss"] for r in runs]),
            }
        )
    print_table(
        f"Batching modes on alpaca_en_demo (400 records, max 512 tokens, batch 8, {steps} steps, "
        f"median of {reps})",
        rows,
    )
    padding = results["padded (random batches)"][0]["padding"]
    print(f"padding fraction reported by the data module: {padding}")
    print("target: packed >= 1.5x padded, tail losses close")
    write_results("packing", {"rows": rows, "padding": padding, "steps": steps, "reps": reps})


if __name__ == "__main__":
    main()
