"""``lora-studio runs``: the run history, read only from run folders (so CLI, GUI and launchers agree)."""

from __future__ import annotations

import argparse
import json
from datetime import datetime
from pathlib import Path
from typing import Any

from lora_studio.core.runs import config_diff, find_run, list_runs


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("runs", help="list, show and compare runs")
    parser.add_argument(
        "--runs-dir", type=Path, help="runs folder (default: $LORA_STUDIO_RUNS_DIR or the app's)"
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    show = actions.add_parser("show", help="summary, settings and sample answers of one run")
    show.add_argument("run", help="run folder, run id, or a unique part of it")
    show.add_argument("--json", action="store_true", help="machine-readable output")
    compare = actions.add_parser("compare", help="the settings that differ and the final metrics of runs")
    compare.add_argument("runs", nargs="+", help="two or more runs")
    compare.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.action == "show":
        return _show(args)
    if args.action == "compare":
        return _compare(args)
    rows = [r.summary() for r in list_runs(args.runs_dir)]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("No runs yet. Start one with `lora-studio train --demo` or from the app.")
        return 0
    table = [("RUN", "STATE", "STEP", "LOSS", "EVAL", "MODEL", "QUANT", "STARTED")]
    for row in rows:
        steps = f"{row['step']}/{row['total_steps']}" if row.get("total_steps") else str(row["step"])
        table.append(
            (
                row["run_id"],
                row["state"],
                steps,
                _num(row["final_loss"]),
                _num(row["final_eval_loss"]),
                _short(row["model"]),
                row["quantization"],
                _when(row["started_at"]),
            )
        )
    _print_table(table)
    return 0


def _show(args: argparse.Namespace) -> int:
    folder = find_run(args.run, args.runs_dir)
    summary = folder.summary()
    config, notes = folder.config_with_notes()
    samples = folder.samples()
    if args.json:
        print(json.dumps({"summary": summary, "config": config.to_dict(), "samples": samples}, indent=2))
        return 0
    print(f"Run {summary['run_id']}  ({summary['state']})")
    print(f"  folder:     {summary['path']}")
    print(f"  model:      {summary['model']} ({summary['quantization']})   data: {summary['data']}")
    print(
        f"  steps:      {summary['step']}/{summary.get('total_steps') or '?'}   final loss "
        f"{_num(summary['final_loss'])}   eval loss {_num(summary['final_eval_loss'])}"
    )
    if summary.get("duration_s"):
        print(
            f"  duration:   {summary['duration_s'] / 60:.1f} min   peak memory "
            f"{(summary.get('peak_memory') or 0) / 1024**3:.2f} GB"
        )
    if summary.get("error"):
        print(f"  error:      {summary['error']}")
    for note in notes:
        print(f"  note:       {note}")
    print("\nSettings:")
    print("  " + config.to_toml().replace("\n", "\n  ").rstrip())
    if samples:
        print("Samples:")
        for sample in samples:
            print(
                f"  [{sample.get('stage')}, step {sample.get('step')}] {sample.get('prompt')}\n"
                f"      → {sample.get('answer')}"
            )
    return 0


def _compare(args: argparse.Namespace) -> int:
    folders = [find_run(name, args.runs_dir) for name in args.runs]
    diff = config_diff(folders)
    summaries = [f.summary() for f in folders]
    if args.json:
        print(
            json.dumps(
                {
                    "runs": [s["run_id"] for s in summaries],
                    "differences": diff,
                    "final_loss": [s["final_loss"] for s in summaries],
                    "final_eval_loss": [s["final_eval_loss"] for s in summaries],
                },
                indent=2,
            )
        )
        return 0
    header = ("SETTING", *[s["run_id"] for s in summaries])
    rows: list[tuple[str, ...]] = [header]
    rows += [
        (key, *[json.dumps(v) if not isinstance(v, str) else v for v in values])
        for key, values in diff.items()
    ]
    if len(rows) == 1:
        rows.append(("(no settings differ)", *["" for _ in summaries]))
    rows.append(("final loss", *[_num(s["final_loss"]) for s in summaries]))
    rows.append(("final eval loss", *[_num(s["final_eval_loss"]) for s in summaries]))
    rows.append(("state", *[s["state"] for s in summaries]))
    _print_table(rows)
    return 0


def _print_table(rows: list[tuple[Any, ...]]) -> None:
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def _num(value: float | None) -> str:
    return f"{value:.4f}" if isinstance(value, int | float) else "-"


def _short(model: str) -> str:
    return model if len(model) <= 28 else "…" + model[-27:]


def _when(stamp: float | None) -> str:
    return datetime.fromtimestamp(stamp).strftime("%Y-%m-%d %H:%M") if stamp else "-"
