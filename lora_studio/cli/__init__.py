"""The ``lora-studio`` command.

Each sub-command lives in its own module in this package and exposes ``register(subparsers)``,
which adds its parser and sets ``func``; adding a command means adding a module and one line in
``COMMANDS``. Errors of the project's own types are printed as one line (no traceback).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

from lora_studio import __version__
from lora_studio.cli.gui import STARTUP_HELP
from lora_studio.core.errors import CancelledError, ConfigError, LoraStudioError

COMMANDS = [
    "info",
    "estimate",
    "train",
    "chat",
    "inspect-data",
    "export",
    "runs",
    "doctor",
    "gui",
    "evaluate",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lora-studio",
        description="Fine-tune language models with LoRA and QLoRA on your own machine.",
    )
    parser.add_argument("--version", action="version", version=f"lora-studio {__version__}")
    parser.add_argument(
        "--print-startup-time", action="store_true", help=f"with no command (the app): {STARTUP_HELP}"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"lora_studio.cli.{name.replace('-', '_')}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.print_startup_time and args.command not in (None, "gui"):
        parser.error(f"--print-startup-time is for the app (no command, or gui), not {args.command!r}")
    if not getattr(args, "func", None):  # no command: open the app
        from lora_studio.cli import gui

        args.func = gui.run
    try:
        return int(args.func(args) or 0)
    except CancelledError as exc:
        print_error(exc, json_mode=getattr(args, "json", False))
        return 130
    except ConfigError as exc:
        print_error(exc, json_mode=getattr(args, "json", False))
        return 2
    except LoraStudioError as exc:
        print_error(exc, json_mode=getattr(args, "json", False))
        return 1
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        return 0


def print_error(exc: LoraStudioError, *, json_mode: bool = False) -> None:
    """One line for a person; a JSON object on stdout for ``--json`` callers."""
    if json_mode:
        payload = {"error": type(exc).__name__, "message": exc.message, "hint": exc.hint}
        print(json.dumps(payload))
    print(f"error: {exc}", file=sys.stderr)


def install_sigint(cancel: threading.Event, note: Callable[[str], None], message: str) -> Callable[[], Any]:
    """First Ctrl-C asks the work to stop cleanly (``cancel``); a second one aborts at once.

    Returns a function that restores the previous handler. A no-op off the main thread.
    """
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handler(signum: int, frame: Any) -> None:
        if cancel.is_set():
            raise KeyboardInterrupt
        cancel.set()
        note(message)

    previous = signal.signal(signal.SIGINT, handler)
    return lambda: signal.signal(signal.SIGINT, previous)


def use_color(stream: object = sys.stdout) -> bool:
    return bool(getattr(stream, "isatty", lambda: False)()) and "NO_COLOR" not in os.environ
