"""Run every benchmark (``make bench``), then print one table of targets: met or not, with numbers.

Each benchmark runs in its own process with its default size, prints its own tables as it goes and
writes ``bench/results/<name>.json``; this script reads those files back, judges each target, and
writes ``bench/results/summary.json``. It fails (exit 1) only when a benchmark itself fails — a
crash or no results written. A missed target is a finding to report, not a broken build: the
summary says which and by how much.

``bench/qlora_vs_lora.py`` is not run here: it trains the real model twice (far beyond the ~20
minute budget); its own command is in the README.

    python bench/run_all.py [--quick] [--only NAME,NAME] [--skip NAME,NAME]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"

Judged = tuple[str, str, bool | None]  # target, measured, met (None: nothing to judge)


def _throughput(r: dict[str, Any]) -> Judged:
    ratios = [
        f"{row['model'].split(' ')[0]} {row['quant']} {row['ratio']:.2f}"
        + (f" (per CPU-s {row['cpu ratio']:.2f})" if "cpu ratio" in row else "")
        for row in r["rows"]
    ]
    return "engine >= 0.97x plain Trainer+peft", "; ".join(ratios), all(x["ratio"] >= 0.97 for x in r["rows"])


def _packing(r: dict[str, Any]) -> Judged:
    rows = {row["batching"]: row for row in r["rows"]}
    packed, padded = rows["packed (padding-free)"], rows["padded (random batches)"]
    drift = abs(packed["tail loss"] - padded["tail loss"]) / padded["tail loss"]
    measured = f"packed {packed['vs padded']:.2f}x padded; tail loss {drift:.1%} apart"
    return (
        "packed >= 1.5x padded, tail loss within 5%",
        measured,
        packed["vs padded"] >= 1.5 and drift <= 0.05,
    )


def _compute(r: dict[str, Any]) -> Judged:
    rows = {row["what"]: row for row in r["rows"]}
    engine = rows["LoRA Studio engine (standard loss, as the loop)"]
    measured = (
        f"engine/plain {r['engine_vs_plain']:.2f}; engine at {engine['of peak']:.0%} of matmul peak; "
        f"default settings (chunked loss) {r['default_vs_plain']:.2f}x plain"
    )
    return "engine >= plain loop (3% noise allowed)", measured, r["engine_vs_plain"] >= 0.97


def _gui(r: dict[str, Any]) -> Judged:
    training = r["rows"][1]
    measured = (
        f"p99 {training['p99 ms']:.0f} ms, longest {training['longest ms']:.0f} ms "
        f"(idle p99 {r['rows'][0]['p99 ms']:.0f} ms)"
    )
    return "training: p99 <= 50 ms, longest <= 200 ms", measured, r["met"]


def _startup(r: dict[str, Any]) -> Judged:
    heavy = ", ".join(r["heavy_imported_before_show"]) or "none"
    measured = (
        f"{r['ratio_vs_minimal_window']:.2f}x minimal window ({r['ratio_vs_import']:.2f}x bare "
        f"PySide6 import); heavy imports before show: {heavy}"
    )
    return "<= 1.5x minimal pyqtgraph window, no torch", measured, r["met"]


def _plots(r: dict[str, Any]) -> Judged:
    return "< 16 ms per redraw at 100k points", f"{r['median_ms']:.1f} ms (median)", r["met"]


def _chat(r: dict[str, Any]) -> Judged:
    ratio = r["ratio_per_token"]
    return "streamed/plain time per token <= 1.05", f"{ratio:.3f}", ratio <= 1.05


def _estimator_speed(r: dict[str, Any]) -> Judged:
    return (
        "< 50 ms per estimate (p99 wall, longest CPU)",
        (
            f"p99 {r['p99_ms']:.1f} ms, longest CPU {r['cpu_longest_ms']:.1f} ms, longest wall "
            f"{r['longest_ms']:.1f} ms, median {r['median_ms']:.1f} ms"
            if "p99_ms" in r
            else f"longest {r['longest_ms']:.1f} ms, median {r['median_ms']:.1f} ms"
        ),
        r["met"],
    )


def _estimate_accuracy(r: dict[str, Any]) -> Judged:
    parts, met = [], True
    for key in ("precise", "saved_tensors", "gpu"):
        if not r.get(key):
            continue
        s = r[key]["summary"]
        parts.append(f"{key} {s['within_10pct']}/{s['cases']} ({s['min_ratio']}-{s['max_ratio']})")
        met = met and s["within_10pct"] == s["cases"]
    return "every ratio within ±10%", "; ".join(parts), met


def _memory(r: dict[str, Any]) -> Judged:
    t = r["targets"]
    measured = (
        f"peak ratio {t['peak ours/standard at 2k tokens (max over settings)']:.2f}; "
        f"12 GB longest ratio {t['longest on 12 GB, ours/standard (min over models)']:.1f}; "
        "longest vs Unsloth "
        + ", ".join(f"{row['card']} {row['ours']:,}/{row['Unsloth']:,}" for row in r["published"])
    )
    return (
        "peak <= 0.6x standard; longest >= 8x on 12 GB; longest >= Unsloth's at every card",
        measured,
        all(r["met"].values()),
    )


def _long_context_cost(r: dict[str, Any]) -> Judged:
    measured = "; ".join(
        f"{row['seq']}: auto {row['auto / off']:.3f}, on {row['on / off']:.2f}, + chunked attention "
        f"{row['all / off']:.2f}"
        for row in r["rows"]
    )
    return "savers left at auto cost <= 5% (ratios to off)", measured, r["met"]


def _preference_memory(r: dict[str, Any]) -> Judged:
    t = r["targets"]
    measured = (
        f"ours/plain {t['ours/plain at 2048 tokens per side']:.2f} at 2k tokens per side "
        f"(vs TRL alone {t['ours/plain (TRL alone) at 2048']:.2f})"
    )
    return "DPO peak <= 0.7x plain TRL + peft script", measured, r["met"]


def _preference_throughput(r: dict[str, Any]) -> Judged:
    ratios = [f"{row['model'].split(' ')[0]} {row['ratio']:.2f} ({row['pair ratios']})" for row in r["rows"]]
    return (
        "DPO step >= 0.97x plain TRL DPOTrainer + peft",
        "; ".join(ratios),
        all(x["ratio"] >= 0.97 for x in r["rows"]),
    )


def _gguf_types(r: dict[str, Any]) -> Judged:
    rows = {row["type"]: row for row in r["rows"]}
    q4 = rows.get("Q4_K_M", {})
    race = r.get("quantizer") or []
    measured = (
        f"Q4_K_M {q4.get('MB', 0):.0f} MB, llama.cpp top-1 {q4.get('llama.cpp top-1') or 0:.2f}, "
        f"greedy {q4.get('greedy same')}; quantizer vs llama.cpp "
        + (
            ", ".join(f"{x['type']} {x['ours / llama.cpp']:.1f}x" for x in race)
            or "not measured (no llama.cpp)"
        )
    )
    met = [v for v in r["met"].values() if v is not None]
    return (
        "every GGUF type byte-identical to llama.cpp; Q4_K_M answers as the fine-tune in llama.cpp",
        measured,
        all(met) if met else None,
    )


@dataclass(frozen=True)
class Bench:
    name: str  # script bench/<name>.py, results bench/results/<name>.json
    judge: Callable[[dict[str, Any]], Judged]
    quick: bool = True  # accepts --quick
    optional: bool = False  # another issue's script: run when present


BENCHES = [
    Bench("throughput", _throughput),
    Bench("packing", _packing),
    Bench("compute", _compute),
    Bench("gui_responsiveness", _gui),
    Bench("startup", _startup),
    Bench("plots", _plots),
    Bench("chat_latency", _chat),
    Bench("estimator_speed", _estimator_speed),
    Bench("estimate_accuracy", _estimate_accuracy, quick=False),
    Bench("memory", _memory, quick=False, optional=True),
    Bench("long_context_cost", _long_context_cost),
    Bench("memory_cuda", lambda r: ("see its table", "", None), quick=False, optional=True),
    Bench("preference_memory", _preference_memory, quick=False, optional=True),
    Bench("preference_throughput", _preference_throughput),
    Bench("gguf_types", _gguf_types),
]
NOT_RUN = {
    "qlora_vs_lora": "trains the real model twice (far over the make bench budget); "
    "run it alone: .venv/bin/python bench/qlora_vs_lora.py",
}


def run_one(bench: Bench, quick: bool) -> dict[str, Any]:
    """Run one benchmark in its own process, streaming its output; judge what it wrote."""
    script = BENCH / f"{bench.name}.py"
    result_file = RESULTS / f"{bench.name}.json"
    argv = [sys.executable, str(script)] + (["--quick"] if quick and bench.quick else [])
    print(
        f"\n{'=' * 100}\n== {' '.join(Path(a).name if a.endswith('.py') else a for a in argv[1:])}",
        flush=True,
    )
    start = time.time()
    code = subprocess.run(argv, cwd=BENCH.parent).returncode
    seconds = time.time() - start
    fresh = result_file.is_file() and result_file.stat().st_mtime >= start
    entry: dict[str, Any] = {"bench": bench.name, "seconds": round(seconds, 1), "exit_code": code}
    if not fresh:
        entry["status"] = "skipped (wrote no results)" if code == 0 else "FAILED"
        entry.update(target="", measured="", met=None)
        return entry
    try:
        target, measured, met = bench.judge(json.loads(result_file.read_text()))
    except (KeyError, TypeError, ValueError, ZeroDivisionError) as exc:
        entry.update(status="FAILED", target="", measured=f"unreadable results: {exc!r}", met=None)
        return entry
    entry.update(status="ran", target=target, measured=measured, met=met)
    return entry


def verdict(entry: dict[str, Any]) -> str:
    if entry["status"] != "ran":
        return entry["status"]
    return {True: "met", False: "NOT met", None: "-"}[entry["met"]]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="pass --quick to the benchmarks that have it")
    parser.add_argument("--only", default="", help="comma-separated benchmark names")
    parser.add_argument("--skip", default="", help="comma-separated benchmark names")
    args = parser.parse_args()
    only = {n for n in args.only.split(",") if n}
    skip = {n for n in args.skip.split(",") if n}
    unknown = (only | skip) - {b.name for b in BENCHES}
    if unknown:
        parser.error(
            f"unknown benchmark(s): {', '.join(sorted(unknown))}; known: {', '.join(b.name for b in BENCHES)}"
        )
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    started = time.time()
    entries = []
    for bench in BENCHES:
        if (only and bench.name not in only) or bench.name in skip:
            continue
        if bench.optional and not (BENCH / f"{bench.name}.py").is_file():
            continue
        entries.append(run_one(bench, args.quick))
    total = time.time() - started

    sys.path.insert(0, str(BENCH))
    from _common import print_table

    print(f"\n{'=' * 100}")
    print_table(
        f"Benchmark targets ({'quick sizes' if args.quick else 'default sizes'}; {total / 60:.1f} min in all)",
        [
            {
                "bench": e["bench"],
                "result": verdict(e),
                "measured": e["measured"],
                "target": e["target"],
                "s": e["seconds"],
            }
            for e in entries
        ],
    )
    for name, why in NOT_RUN.items():
        print(f"\nnot run: bench/{name}.py — {why}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    summary = {
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "quick": args.quick,
        "seconds": round(total, 1),
        "benches": entries,
        "not_run": NOT_RUN,
    }
    (RESULTS / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print("wrote bench/results/summary.json")
    failed = [e["bench"] for e in entries if e["status"] == "FAILED"]
    if failed:
        print(f"benchmarks that failed to run: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
