"""``lora-studio gui`` (also what plain ``lora-studio`` runs): open the desktop app.

Qt is imported only when the command runs, so ``lora-studio train`` and ``--help`` never load it.
Before that, ``core.display_check`` makes sure Qt's platform plugin can load: where it cannot
(a display-less session, or system libraries missing on a minimal Linux desktop) Qt would abort
the process with SIGABRT and a misleading message, so the command prints one line with the fix and
exits 1 instead.
"""

from __future__ import annotations

import argparse
import os
import sys

STARTUP_HELP = (
    "print how long the window took to appear (from process start to its first paint), then keep running"
)


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "gui",
        help="open the desktop app (the default when no command is given)",
        description="Open LoRA Studio's window.",
    )
    add_arguments(parser)
    parser.set_defaults(func=run)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="open with the settings of this run.toml")
    parser.add_argument("path", nargs="?", help="a model folder, .gguf file or dataset file to open")
    parser.add_argument(
        "--print-startup-time",
        action="store_true",
        # SUPPRESS: `lora-studio --print-startup-time gui` keeps the top-level parser's value
        default=argparse.SUPPRESS,
        help=STARTUP_HELP,
    )
    parser.add_argument("--startup-check", action="store_true", help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    problem = display_problem()
    if problem:
        print(problem, file=sys.stderr)
        return 1
    from lora_studio.gui.app import main

    return main(
        getattr(args, "config", None),
        open_path=getattr(args, "path", None),
        startup_check=getattr(args, "startup_check", False),
        print_startup_time=getattr(args, "print_startup_time", False),
    )


def display_problem() -> str | None:
    """The one line saying why Qt could not open a window here, or None when it can (or may).

    Runs before PySide6 is imported. ``LORA_STUDIO_NO_DISPLAY_CHECK=1`` skips it (a false alarm
    must never lock anyone out); ``QT_QPA_PLATFORM=offscreen`` (tests) needs nothing checked.
    """
    from lora_studio.core.display_check import SKIP_ENV, check_display

    if os.environ.get(SKIP_ENV, "") not in ("", "0"):
        return None
    found = check_display()
    return None if found.ok else found.message
