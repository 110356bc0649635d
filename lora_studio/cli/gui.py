"""``lora-studio gui`` (also what plain ``lora-studio`` runs): open the desktop app.

Qt is imported only when the command runs, so ``lora-studio train`` and ``--help`` never load it.
"""

from __future__ import annotations

import argparse

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
    from lora_studio.gui.app import main

    return main(
        getattr(args, "config", None),
        open_path=getattr(args, "path", None),
        startup_check=getattr(args, "startup_check", False),
        print_startup_time=getattr(args, "print_startup_time", False),
    )
