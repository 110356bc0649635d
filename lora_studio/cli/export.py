"""``lora-studio export``: adapter, merged model, GGUF, GGUF adapter and Ollama Modelfile, each verified.

Progress goes to stderr, the summary (or ``--json``) to stdout. Exit codes: 0 when everything was
written (and verified, unless ``--no-verify``), 1 on an error or a failed verification (the files
are kept), 130 when cancelled with Ctrl-C (nothing half-written is left). ``--list-quants`` only
prints what each GGUF type would cost for the source's base model (read from tensor shapes alone).
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from pathlib import Path
from typing import Any

from lora_studio.cli import install_sigint
from lora_studio.core.export.types import DEFAULT_QUANT, QUANTS, VERIFIERS

FORMAT_HELP = "adapter, merged, gguf, gguf-adapter, modelfile (repeat the flag or give a comma list)"
QUANT_HELP = (
    f"GGUF file type: {', '.join(QUANTS)} (default {DEFAULT_QUANT}, what Ollama and LM Studio run; "
    "q5_k_m/q6_k/q8_0 are larger and closer to the original, f16/bf16 unquantized for further "
    "conversion, q5_0/q4_0 for runtimes without K-quants); repeat or give a comma list for several, "
    "the Modelfile uses the first; --list-quants shows their sizes"
)


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "export",
        help="export a run or adapter: PEFT adapter, merged model, GGUF, Ollama Modelfile",
        description="Export a fine-tune and verify each file by loading it back.",
    )
    parser.add_argument(
        "source", type=Path, help="a run folder, one of its checkpoints, or a PEFT adapter folder"
    )
    parser.add_argument("--format", "-f", action="append", metavar="FORMAT", help=FORMAT_HELP)
    parser.add_argument(
        "--out",
        "-o",
        type=Path,
        metavar="DIR",
        help="output folder (default: export/ in the run folder, or <adapter folder>-export beside it)",
    )
    parser.add_argument(
        "--dtype",
        choices=["auto", "bf16", "fp16", "fp32"],
        default="auto",
        help="weights of the merged model (auto: the base model's own dtype)",
    )
    parser.add_argument("--quant", action="append", metavar="TYPE", help=QUANT_HELP)
    parser.add_argument(
        "--list-quants",
        action="store_true",
        help="list every GGUF type with its size on disk, memory to run and bits per weight; export nothing",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace existing exports in the output folder"
    )
    parser.add_argument("--no-verify", action="store_true", help="skip loading each export back to check it")
    parser.add_argument(
        "--verifier",
        choices=VERIFIERS,
        default="auto",
        help="who checks GGUF files: llama.cpp itself when installed (auto, the default; 'make llamacpp'), "
        "or transformers' GGUF loader; 'llama.cpp' fails the check when it is not installed",
    )
    parser.add_argument(
        "--model", help="base model, when the run or adapter does not record it (or it moved)"
    )
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object")
    parser.set_defaults(func=run, usage_error=parser.error)


def run(args: argparse.Namespace) -> int:
    from lora_studio.core.export import export, resolve_source

    if args.list_quants:
        return list_quants(args)
    if not args.format:
        args.usage_error("the following arguments are required: --format/-f (or --list-quants)")
    out = args.out
    if out is None:  # the Export page's default too
        src = resolve_source(args.source, model=args.model)
        out = (
            src.run_dir / "export"
            if src.run_dir
            else src.adapter_dir.with_name(f"{src.adapter_dir.name}-export")
        )
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
            out,
            model=args.model,
            dtype=args.dtype,
            quant=args.quant or DEFAULT_QUANT,
            overwrite=args.overwrite,
            verify=not args.no_verify,
            verifier=args.verifier,
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


def list_quants(args: argparse.Namespace) -> int:
    """One row per GGUF type: what it costs on disk and to run, for the source's base model."""
    from lora_studio.core.export import gguf, resolve_source, size_text
    from lora_studio.core.export.plan import gguf_choices_for
    from lora_studio.core.models import load_config, resolve_model

    src = resolve_source(args.source, model=args.model)
    base = resolve_model(src.base_model)
    config = load_config(base.path, trust_remote_code=src.trust_remote_code)
    gguf.check_gguf_support(config)  # an architecture llama.cpp cannot run: the writer's own reason
    choices = gguf_choices_for(src)
    if args.json:
        print(json.dumps({"base_model": base.name, "quants": [c.to_dict() for c in choices]}))
        return 0
    context = choices[0].context if choices else 0
    print(f"GGUF types for {base.name} (memory to run: llama.cpp with a {context}-token context)")
    print(f"  {'type':<8} {'on disk':>10} {'to run':>10} {'bits/weight':>12}")
    for choice in choices:
        mark = "  (default)" if choice.quant == DEFAULT_QUANT else ""
        print(
            f"  {choice.quant:<8} {size_text(choice.file_bytes):>10} {size_text(choice.run_bytes):>10} "
            f"{choice.bits_per_weight:>12.2f}{mark}"
        )
    noted = [c for c in choices if c.note]
    if noted:
        print()
    for choice in noted:
        print(f"  {choice.quant}: {choice.note}")
    return 0


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
        if check is not None and check.method:
            print(f"  {'':<13} checked with {check.method}")
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
