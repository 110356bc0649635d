"""GGUF types for the default model: size, memory to run, and how close each stays to the fine-tune.

Trains the bundled demo (``lora-studio train --demo``: SmolLM2-135M-Instruct learns it is "Lumen",
made by "LoRA Studio Labs"; ``--run RUN`` reuses a run), exports every GGUF type and checks each:

- with llama.cpp (when llama-cpp-python is installed): the file loaded *by llama.cpp*, logits on
  the probe prompt against the fine-tune's (max and mean |Δlogit| as a share of the largest logit,
  top-1 agreement) and its 16-token greedy answer against the fine-tune's;
- with transformers' GGUF loader (always): the same logit figures, weights dequantized by gguf-py.

And the quantizer itself: our numpy port of llama.cpp's quantizers against ``llama_model_quantize``
on the same F16 file — bytes identical or not, and the time ratio (ours / llama.cpp, interleaved
repetitions, medians). Targets: every type byte-identical to llama.cpp; Q4_K_M's greedy answer in
llama.cpp the fine-tune's.

Run: ``.venv/bin/python bench/gguf_types.py [--run RUN] [--quick]`` (quick: an 8-step demo run,
one repetition of the quantizer timing).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from _common import WORK, median, print_table, write_results

from lora_studio.core.export.types import QUANTS


def train_demo(steps: int | None) -> Path:
    from lora_studio.core.config import DEMOS, RunConfig
    from lora_studio.core.train import train

    overrides: dict[str, Any] = {**DEMOS["sft"], "output.runs_dir": str(WORK / "runs")}
    if steps:
        overrides["training.max_steps"] = steps
    print(f"training the demo ({steps or 'its default'} steps)…", flush=True)
    result = train(RunConfig().with_overrides(overrides))
    assert result.status == "completed", result.status
    return result.run_dir


def check_types(run: Path, verifier: str) -> dict[str, dict[str, Any]]:
    from lora_studio.core.export import export

    out = WORK / f"export-{verifier}"
    report = export(run, "gguf", out, quant=",".join(QUANTS), verifier=verifier, overwrite=True)
    rows = {}
    for result, quant in zip(report.results, report.plan.quants, strict=True):
        check = result.verification
        f = check.figures
        rows[quant] = {
            "file_bytes": result.size_bytes,
            "passed": check.passed,
            "method": check.method,
            "max |Δ| / largest": f.get("max_abs_diff", float("nan")) / max(f.get("logit_scale", 1.0), 1e-9),
            "mean |Δ| / largest": f.get("mean_abs_diff", float("nan")) / max(f.get("logit_scale", 1.0), 1e-9),
            "top-1": f.get("top1_agreement"),
            "greedy same": f.get("greedy_same_tokens"),
            "greedy of": f.get("greedy_tokens"),
            "answer": f.get("greedy_text"),
        }
    return rows


def quantizer_race(run: Path, repeats: int) -> list[dict[str, Any]]:
    """Our writer vs llama_model_quantize, from the same F16-rounded merged weights."""
    import gguf
    import numpy as np

    from lora_studio.core import llamacpp
    from lora_studio.core.export.gguf import write_model_gguf
    from lora_studio.core.export.plan import resolve_source
    from lora_studio.core.export.quant_mix import FILE_TYPES
    from lora_studio.core.export.verify import load_base, load_peft
    from lora_studio.core.models import load_tokenizer

    src = resolve_source(run)
    from lora_studio.core.models import resolve_model

    base_path = resolve_model(src.base_model).path
    merged = load_peft(load_base(base_path), src.adapter_dir).merge_and_unload()
    state = {k: v.detach().half().float() for k, v in merged.state_dict().items()}
    config, tokenizer = merged.config, load_tokenizer(base_path)
    f16 = WORK / "race-f16.gguf"
    write_model_gguf(f16, state, config, tokenizer, quant="f16", name="race", tick=lambda *_: None)
    rows = []
    for quant in QUANTS:
        if quant == "f16":
            continue
        ours_s, theirs_s = [], []
        for _ in range(repeats):  # interleaved: ours, llama.cpp, ours, ...
            started = time.perf_counter()
            write_model_gguf(
                WORK / "ours.gguf", state, config, tokenizer, quant=quant, name="race", tick=lambda *_: None
            )
            ours_s.append(time.perf_counter() - started)
            started = time.perf_counter()
            llamacpp.quantize(f16, WORK / "theirs.gguf", FILE_TYPES[quant][0])
            theirs_s.append(time.perf_counter() - started)
        mine = {t.name: t for t in gguf.GGUFReader(str(WORK / "ours.gguf")).tensors}
        other = {t.name: t for t in gguf.GGUFReader(str(WORK / "theirs.gguf")).tensors}
        same = mine.keys() == other.keys() and all(
            t.tensor_type == other[n].tensor_type
            and np.array_equal(np.asarray(t.data).view(np.uint8), np.asarray(other[n].data).view(np.uint8))
            for n, t in mine.items()
        )
        rows.append(
            {
                "type": FILE_TYPES[quant][2],
                "bytes identical": same,
                "ours s": median(ours_s),
                "llama.cpp s": median(theirs_s),
                "ours / llama.cpp": median(ours_s) / median(theirs_s),
            }
        )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="a trained run to export (default: train the demo)")
    parser.add_argument("--quick", action="store_true", help="an 8-step demo run, one timing repetition")
    args = parser.parse_args()

    from lora_studio.core import llamacpp
    from lora_studio.core.export.plan import gguf_choices_for

    run = args.run or train_demo(8 if args.quick else None)
    choices = {c.quant: c for c in gguf_choices_for(run)}  # what the Export page shows
    have_llama = llamacpp.status().working
    print(f"llama.cpp verifier: {llamacpp.status().line()}", flush=True)
    by_llama = check_types(run, "llama.cpp") if have_llama else {}
    by_transformers = check_types(run, "transformers")
    rows = []
    for quant in QUANTS:
        t, l_ = by_transformers[quant], by_llama.get(quant, {})
        rows.append(
            {
                "type": choices[quant].label,
                "MB": t["file_bytes"] / 1e6,
                "bits/weight": choices[quant].bits_per_weight,
                "run MB (4k)": choices[quant].run_bytes / 1e6,
                "llama.cpp max": l_.get("max |Δ| / largest"),
                "llama.cpp mean": l_.get("mean |Δ| / largest"),
                "llama.cpp top-1": l_.get("top-1"),
                "greedy same": f"{l_['greedy same']}/{l_['greedy of']}" if l_ else None,
                "llama.cpp answer": l_.get("answer"),
                "transformers max": t["max |Δ| / largest"],
                "transformers mean": t["mean |Δ| / largest"],
                "transformers top-1": t["top-1"],
                "passed": t["passed"] and l_.get("passed", True),
            }
        )
    print_table("GGUF types of the demo fine-tune (default model)", rows)
    race = quantizer_race(run, 1 if args.quick else 3) if have_llama else []
    if race:
        print_table("Our quantizer vs llama.cpp's llama_model_quantize (same F16 file)", race)
    q4 = by_llama.get("q4_k_m", {})
    met = {
        "every type byte-identical to llama.cpp": all(r["bytes identical"] for r in race) if race else None,
        "Q4_K_M answers as the fine-tune in llama.cpp": (q4.get("greedy same") == q4.get("greedy of"))
        if q4
        else None,
    }
    print("\ntargets:", met)
    write_results(
        "gguf_types",
        {
            "run": str(run),
            "llama_cpp": llamacpp.status().line(),
            "rows": rows,
            "quantizer": race,
            "met": met,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
