"""``lora-studio export``: adapter, merged model, GGUF, GGUF adapter and Ollama Modelfile, each verified.

Progress goes to stderr, the summary (or ``--json``) to stdout. Exit codes: 0 when everything was
written (and verified, unless ``--no-verify``), 1 on an error or a failed verification (the files
are kept), 130 when cancelled with Ctrl-C (nothing half-written is left).
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from pathlib import Path
from typing import Any

from lora_studio.cli import install_sigint

FORMAT_HELP = "adapter, merged, gguf, gguf-adapter, modelfile (repeat the flag or give a comma list)"


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "export",
        help="export a run or adapter: PEFT adapter, merged model, GGUF, Ollama Modelfile",
        description="Export a fine-tune and verify each file by loading it back.",
    )
    parser.add_argument(
        "source", type=Path, help="a run folder, one of its checkpoints, or a PEFT adapter folder"
    )
    parser.add_argument("--format", "-f", action="append", required=True, metavar="FORMAT", help=FORMAT_HELP)
    parser.add_argument("--out", "-o", type=Path, required=True, metavar="DIR", help="output folder")
    parser.add_argument(
        "--dtype",
        choices=["auto", "bf16", "fp16", "fp32"],
        default="auto",
        help="weights of the merged model (auto: the base model's own dtype)",
    )
    parser.add_argument(
        "--quant",
        action="append",
        metavar="TYPE",
        help="GGUF storage: f16 (default), bf16, q8_0 (about half the size); repeat or comma list for several",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace existing exports in the output folder"
    )
    parser.add_argument("--no-verify", action="store_true", help="skip loading each export back to check it")
    parser.add_argument(
        "--model", help="base model, when the run or adapter does not record it (or it moved)"
    )
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lora_studio.core.export import export

    cancel = threading.Event()
    printer = _Progress(quiet=args.json)
    restore = install_sigint(
        cancel,
        printer.note,
        "Cancelling; unfinished files will be removed (Ctrl-C again to abort at once)...",
    )
    try:
        report = export(
            args.source,
            args.format,
            args.out,
            model=args.model,
            dtype=args.dtype,
            quant=args.quant or "f16",
            overwrite=args.overwrite,
            verify=not args.no_verify,
            cancel=cancel,
            progress=printer,
        )
    finally:
        restore()
        printer.end_line()
    if args.json:
        print(json.dumps(report.to_dict()))
    else:
        _summary(report)
    if report.status == "cancelled":
        return 130
    return 1 if report.verified is False else 0


class _Progress:
    """One line per step; tensor-by-tensor progress rewrites a single line on a terminal."""

    def __init__(self, *, quiet: bool) -> None:
        self.quiet = quiet
        self.tty = sys.stderr.isatty()
        self.open_line = False

    def __call__(self, event: Any) -> None:
        if self.quiet:
            return
        if event.total:  # tensor by tensor: one rewritten line on a terminal, nothing in a log
            if self.tty:
                percent = 100 * event.done // event.total
                print(f"\r  {event.message} ({percent}%)", end="", file=sys.stderr, flush=True)
                self.open_line = True
            return
        self.end_line()
        print(f"[{event.stage}] {event.message}", file=sys.stderr, flush=True)

    def note(self, text: str) -> None:
        self.end_line()
        print(text, file=sys.stderr, flush=True)

    def end_line(self) -> None:
        if self.open_line:
            print("\r\033[K", end="", file=sys.stderr, flush=True)
            self.open_line = False


def _summary(report: Any) -> None:
    from lora_studio.core.export import size_text

    plan = report.plan
    print(f"Export {report.status}: {plan.source.name} → {plan.out_dir}  ({report.seconds:.0f} s)")
    for result in report.results:
        check = result.verification
        if check is None:
            verdict = "not verified"
        elif check.passed:
            verdict = "verified: " + (check.summary() or check.method)
        else:
            verdict = "VERIFICATION FAILED: " + "; ".join(check.problems)
        name = Path(result.path).name + ("/" if Path(result.path).is_dir() else "")
        print(f"  {result.format:<13} {name:<34} {size_text(result.size_bytes):>10}  {verdict}")
        for note in result.notes:
            print(f"  {'':<13} note: {note}")
    for warning in report.warnings:
        print(f"  warning: {warning}")
    if report.verified is False:
        failed = [Path(r.path).name for r in report.results if r.verification and not r.verification.passed]
        print(f"error: verification failed for {', '.join(failed)}; the files were kept", file=sys.stderr)
    elif report.status == "cancelled":
        print(
            "Cancelled; the exports listed above are complete, nothing unfinished was left.", file=sys.stderr
        )
