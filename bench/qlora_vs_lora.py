"""Does QLoRA cost quality? LoRA on a full-precision base vs QLoRA (NF4 + double quant), same everything else.

Trains the default model on the bundled reviews data (``resources/datasets/reviews.jsonl``) twice with
the engine — same seed, steps, batch, learning rate and LoRA settings; the only difference is how
the frozen base weights are stored — then evaluates the base model, both fine-tunes on the held-out
``reviews_eval.jsonl`` with ``lora_studio.core.evaluate`` and prints eval loss, accuracy, macro-F1,
peak process RSS of each training run (and the memory estimator's figure), and the QLoRA − LoRA gap
with a paired bootstrap 95% interval over the examples.

Each training run is a separate process, so its peak RSS is its own. On a CPU "16-bit base" means
the engine's CPU default, fp32. Usage::

    .venv/bin/python bench/qlora_vs_lora.py                      # ~10 minutes on a quiet 2-core CPU
    .venv/bin/python bench/qlora_vs_lora.py --reuse RUN_A RUN_B  # evaluate two finished runs again

Results: ``bench/results/qlora_vs_lora.json``; each run folder also gets its ``eval/<stamp>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

RESULTS = ROOT / "bench" / "results"
DATASETS = ROOT / "resources" / "datasets"
VARIANTS = {
    "LoRA": {"quantization": "none", "double_quant": False},
    "QLoRA": {"quantization": "nf4", "double_quant": True},
}


def config_for(variant: str, args: argparse.Namespace) -> Any:
    from lora_studio.core.config import RunConfig

    return RunConfig.from_dict(
        {
            "model": {"source": "default", **VARIANTS[variant]},
            "lora": {"r": 16, "alpha": 32, "dropout": 0.05},
            "data": {
                "path": str(DATASETS / "reviews.jsonl"),
                "eval_path": str(DATASETS / "reviews_eval.jsonl"),
                "max_seq_len": 96,  # every review fits (58-70 tokens); also what the estimate assumes
            },
            "training": {
                "max_steps": args.steps,
                "batch_size": args.batch_size,
                "learning_rate": args.lr,
                "seed": args.seed,
                "save_steps": args.steps,
                "eval_steps": args.steps,
                "sample_prompts": [],
            },
            "output": {"runs_dir": args.runs_dir, "run_name": f"bench-{variant.lower()}"},
        }
    )


def train_one(variant: str, args: argparse.Namespace) -> dict[str, Any]:
    """In a child process: train one variant and report its own peak RSS."""
    from lora_studio.core.train import events as ev
    from lora_studio.core.train import train

    config = config_for(variant, args)
    started = time.monotonic()

    def listener(event: Any) -> None:
        if isinstance(event, ev.Step) and (event.step % 5 == 0 or event.step == event.total_steps):
            print(
                f"  {variant}: step {event.step}/{event.total_steps} loss {event.loss:.3f} "
                f"({time.monotonic() - started:.0f} s)",
                file=sys.stderr,
                flush=True,
            )

    result = train(config, listener)
    seconds = time.monotonic() - started
    return {
        "variant": variant,
        "run_dir": str(result.run_dir),
        "status": result.status,
        "steps": result.step,
        "final_loss": result.final_loss,
        "seconds": round(seconds, 1),
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,  # Linux: KiB
        "estimate_bytes": estimate(config),
    }


def estimate(config: Any) -> int | None:
    """The memory estimator's total for this config on the CPU, when the estimator is installed."""
    try:
        from lora_studio.core.estimate import EstimateRequest, estimate_memory
    except ImportError:
        return None
    try:
        return estimate_memory(EstimateRequest.from_config(config, device="cpu", vram_bytes=None)).total_bytes
    except Exception as exc:  # the estimate is extra information; never lose the benchmark over it
        print(f"  (estimate failed: {exc})", file=sys.stderr)
        return None


def train_in_child(variant: str, args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as handle:
        out = Path(handle.name)
    command = [sys.executable, __file__, "--train-one", variant, "--result", str(out), *passthrough(args)]
    print(f"training {variant} ...", file=sys.stderr, flush=True)
    subprocess.run(command, check=True)
    data = json.loads(out.read_text())
    out.unlink()
    return data


def passthrough(args: argparse.Namespace) -> list[str]:
    return [
        f"--steps={args.steps}",
        f"--batch-size={args.batch_size}",
        f"--lr={args.lr}",
        f"--seed={args.seed}",
        f"--runs-dir={args.runs_dir}",
    ]


def evaluate_runs(runs: dict[str, dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    from lora_studio.core.evaluate import EvalOptions, ModelSpec, evaluate, load_eval_set, scoring

    lora = ModelSpec.from_run(runs["LoRA"]["run_dir"], label="LoRA")
    qlora = ModelSpec.from_run(runs["QLoRA"]["run_dir"], label="QLoRA")
    options = EvalOptions(max_examples=args.max_examples, seed=args.seed)

    def progress(event: Any) -> None:
        if event.done == event.total and event.stage in ("loss", "generating"):
            print(f"  evaluated {event.model}: {event.stage} {event.done}/{event.total}", file=sys.stderr)

    report = evaluate(
        [lora.base_of("base"), lora, qlora],
        load_eval_set(str(DATASETS / "reviews_eval.jsonl")),
        options,
        progress=progress,
    )
    gap = scoring.comparison_rows(
        report.metric,
        ["LoRA", "QLoRA"],
        [report.results[1].rows, report.results[2].rows],
        resamples=options.resamples,
        confidence=options.confidence,
        seed=options.seed,
    )
    return {"report": report.to_dict(), "gap": gap}


def table(runs: dict[str, dict[str, Any]], evaluation: dict[str, Any]) -> list[list[str]]:
    """Rows for the README: metric, base, LoRA, QLoRA, QLoRA − LoRA [95% CI]."""
    gib = 1024**3
    rows = [["", "base", "LoRA (fp32 base)", "QLoRA (NF4 + double quant)", "QLoRA − LoRA [95% CI]"]]
    for row, gap in zip(evaluation["report"]["comparison"], evaluation["gap"], strict=True):
        digits = row["digits"]
        values = [_num(v, digits) for v in row["values"]]
        diff = gap["differences"][0] if gap["differences"] else None
        cell = (
            f"{diff['estimate']:+.{digits}f} [{diff['low']:+.{digits}f}, {diff['high']:+.{digits}f}]"
            if diff and "estimate" in diff
            else _gap(gap["values"], digits)
        )
        rows.append([row["title"], *values, cell])

    def each(key: str, fmt: Any) -> list[str]:
        return [fmt(runs[v].get(key)) for v in ("LoRA", "QLoRA")]

    size = lambda b: f"{b / gib:.2f} GiB" if b else "n/a"  # noqa: E731
    rss = each("peak_rss_bytes", size)
    rows.append(["peak RSS while training", "", *rss, _ratio(runs, "peak_rss_bytes")])
    rows.append(["memory estimate (CPU)", "", *each("estimate_bytes", size), _ratio(runs, "estimate_bytes")])
    rows.append(["training time", "", *each("seconds", lambda s: f"{s:.0f} s"), _ratio(runs, "seconds")])
    return rows


def _num(value: Any, digits: int) -> str:
    return "n/a" if value is None else (f"{value:.{digits}f}" if isinstance(value, float) else str(value))


def _gap(values: list[Any], digits: int) -> str:
    return f"{values[1] - values[0]:+.{digits}f}" if None not in values else ""


def _ratio(runs: dict[str, dict[str, Any]], key: str) -> str:
    a, b = runs["LoRA"].get(key), runs["QLoRA"].get(key)
    return f"×{b / a:.2f}" if a and b else ""


def markdown(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(row) + " |" for row in rows[1:]]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=35)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--runs-dir", default=None, help="where the two runs go (default: the app's runs folder)"
    )
    parser.add_argument(
        "--max-examples", type=int, help="evaluate a seeded sample of the 45 held-out examples"
    )
    parser.add_argument("--reuse", nargs=2, metavar=("LORA_RUN", "QLORA_RUN"), help="evaluate finished runs")
    parser.add_argument("--train-one", choices=list(VARIANTS), help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.runs_dir is None:
        from lora_studio.core.paths import runs_dir

        args.runs_dir = str(runs_dir())
    if args.train_one:
        Path(args.result).write_text(json.dumps(train_one(args.train_one, args)))
        return 0
    started = time.monotonic()
    load_before = os.getloadavg()
    if args.reuse:
        runs = {
            v: {"variant": v, "run_dir": str(Path(p).resolve())}
            for v, p in zip(VARIANTS, args.reuse, strict=True)
        }
    else:
        runs = {v: train_in_child(v, args) for v in VARIANTS}
    print("evaluating base, LoRA and QLoRA ...", file=sys.stderr, flush=True)
    evaluation = evaluate_runs(runs, args)
    rows = table(runs, evaluation)
    text = markdown(rows)
    print()
    print(text)
    report = evaluation["report"]
    print(f"\n{report['eval_set']['examples']} held-out examples; metric: {report['metric_reason']}")
    import torch

    payload = {
        "benchmark": "qlora_vs_lora",
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "torch": torch.__version__,
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
        },
        "settings": {k: getattr(args, k) for k in ("steps", "batch_size", "lr", "seed", "max_examples")},
        "runs": runs,
        "evaluation": evaluation,
        "table_markdown": text,
        "seconds": round(time.monotonic() - started, 1),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "qlora_vs_lora.json"
    out.write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
