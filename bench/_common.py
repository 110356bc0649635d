"""Shared helpers for the benchmarks: models, data, tables and result files.

Every benchmark compares against a baseline measured in the same process, interleaving the
repetitions (baseline, ours, baseline, ours, ...) so that machine noise hits both alike, and
reports medians and ratios rather than absolute times.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
#: Excerpts of public datasets the benchmarks train on (bench/data/SOURCES.md).
DATA = ROOT / "bench" / "data"
sys.path.insert(0, str(ROOT))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
WORK = Path(tempfile.mkdtemp(prefix="lora-studio-bench-"))
os.environ.setdefault("LORA_STUDIO_RUNS_DIR", str(WORK / "runs"))


def default_model_dir() -> Path:
    from lora_studio.core.models import resolve_model

    return resolve_model("default").path


def tiny_model_dir(**kwargs: Any) -> Path:
    from lora_studio.tiny_models import make_tiny_model

    name = "tiny-" + "-".join(f"{k}{v}" for k, v in sorted(kwargs.items()))
    out = WORK / name
    if not out.exists():
        make_tiny_model(out, default_model_dir(), **kwargs)
    return out


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def percentile(values: list[float], q: float) -> float:
    """The q-quantile by the nearest-rank method (numpy's ``inverted_cdf``: no interpolation, so the
    result is a value that was measured)."""
    import numpy as np

    return float(np.quantile(values, q, method="inverted_cdf")) if values else float("nan")


def print_table(title: str, rows: list[dict[str, Any]]) -> None:
    print(f"\n{title}")
    if not rows:
        print("  (no rows)")
        return
    keys = list(rows[0])
    cells = [[_fmt(row.get(k)) for k in keys] for row in rows]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    print("  " + "  ".join(k.ljust(w) for k, w in zip(keys, widths, strict=True)))
    for row in cells:
        print("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def write_results(name: str, payload: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": name,
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        **payload,
    }
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"\nwrote {path.relative_to(ROOT)}")
    return path


def uniform_length_data(n: int = 64) -> Path:
    """One demo record, ``n`` times: every batch has the same shape and token count, whatever the
    sampler picks. The engine orders batches from (seed, epoch), the stock Trainer from the global
    generator; on varied lengths the two sides trained different batches (other lengths, other
    padding), which over a few steps of the default model says more about the batches than about
    the engine."""
    from lora_studio.core.paths import resource_path

    out = WORK / "uniform.jsonl"
    if not out.exists():
        first = resource_path("datasets", "identity.jsonl").read_text().splitlines()[0]
        out.write_text("\n".join([first] * n) + "\n")
    return out


def identity_like_data(n: int = 64) -> Path:
    """Short chat examples of varied length (the demo set), copied so runs never touch resources/."""
    from lora_studio.core.paths import resource_path

    out = WORK / "identity.jsonl"
    if not out.exists():
        lines = resource_path("datasets", "identity.jsonl").read_text().splitlines()
        out.write_text("\n".join((lines * (n // len(lines) + 1))[:n]) + "\n")
    return out
