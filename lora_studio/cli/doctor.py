"""``lora-studio doctor``: the system check, one line per check, exit code 1 when training cannot work."""

from __future__ import annotations

import argparse
import json

from lora_studio.cli import use_color

_MARKS = {"ok": ("ok", "32"), "warning": ("warning", "33"), "problem": ("PROBLEM", "31")}


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "doctor", help="check that this machine can train (torch, GPU, bitsandbytes, disk)"
    )
    parser.add_argument("--json", action="store_true", help="print the checks as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lora_studio.core.doctor import can_train, run_checks

    color = use_color() and not args.json

    def show(check):  # printed as each check finishes: some take seconds
        if args.json:
            return
        word, code = _MARKS[check.status]
        mark = f"\033[{code}m{word:<8}\033[0m" if color else f"{word:<8}"
        print(f"{mark} {check.name:<18} {check.detail}", flush=True)
        if check.fix:
            print(f"{'':<8} {'':<18} → {check.fix}", flush=True)

    results = run_checks(progress=show)
    ok = can_train(results)
    if args.json:
        print(json.dumps({"can_train": ok, "checks": [r.to_dict() for r in results]}, indent=2))
    else:
        print(
            "\nThis machine can train."
            if ok
            else "\nTraining cannot work here until the problems above are fixed."
        )
    return 0 if ok else 1
