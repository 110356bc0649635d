"""Render every page of the app to PNG files: ``python -m lora_studio.gui.screenshots OUTDIR``.

Used for the README and for review: it trains a short run first (a tiny random model by default, in
seconds; ``--model default --steps 30`` for the real bundled model, minutes on a CPU; or ``--run
RUN_DIR`` shows an existing run), loads that run into the Train page, selects the ``--compare`` runs
on the Runs page, waits until every background task has answered, and saves ``<page>.png`` for each
page at 1400×900. Settings and new runs go to a
temporary folder, so the user's own are never touched.

The pictures are of real windows: the app runs on a virtual X server (Xvfb + openbox, started here)
and each picture is read from the server's framebuffer — what a screen shows — not rendered with
``grab()``, which draws widgets into an image and never shows what reaches a screen. Without
Xvfb it says so and falls back to offscreen rendering (``--offscreen`` asks for that).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

SIZE = (1400, 900)
_size = SIZE  # --size: the app's own default window is 1360×860
#: The virtual display the pictures are taken from (None: offscreen rendering).
_display: object | None = None


def capture(app: object, window: object, path: Path) -> Path:
    """Save what ``window`` shows on screen (its client area) as PNG."""
    if _display is not None:  # the pointer off the window: the framebuffer holds the cursor and its hover
        _display.xdotool("mousemove", str(_display.width - 1), str(_display.height - 1))  # type: ignore[attr-defined]
    for _ in range(10):
        app.processEvents()  # type: ignore[attr-defined]
        time.sleep(0.05)
    if _display is None:
        window.grab().save(str(path))  # type: ignore[attr-defined]
        return path
    from PySide6.QtCore import QPoint

    from lora_studio.gui import xserver

    corner = window.mapToGlobal(QPoint(0, 0))  # type: ignore[attr-defined]
    rect = (corner.x(), corner.y(), window.width(), window.height())  # type: ignore[attr-defined]
    return xserver.write_png(path, xserver.crop(_display.screenshot(), rect))  # type: ignore[attr-defined]


def tiny_model(out: Path) -> Path:
    """A 2-layer random llama with the bundled model's tokenizer (the tests' model, for speed)."""
    from lora_studio.core.models import resolve_model
    from lora_studio.tiny_models import make_tiny_model

    return make_tiny_model(out, resolve_model("default").path)


def train_run(model: str, steps: int, runs: Path) -> tuple[str, str]:
    """Train ``steps`` steps on the demo data; returns (run folder, model source)."""
    from lora_studio.core.config import RunConfig
    from lora_studio.core.estimate import decide_savers
    from lora_studio.core.train import train

    config = RunConfig().with_overrides({
        "model.source": model, "data.path": "demo", "data.max_seq_len": 256,
        "training.max_steps": steps, "training.batch_size": 8, "training.learning_rate": 5e-4 if model == "default"
        else 3e-3, "training.save_steps": max(2, steps // 3), "training.logging_steps": 1,
        "training.sample_max_new_tokens": 24, "output.runs_dir": str(runs), "output.run_name": "demo",
    })  # fmt: skip
    result = train(config, decide_savers=decide_savers)
    return str(result.run_dir), model


def wait_idle(app: object, window: object, timeout_s: float = 180) -> None:
    """Process events until no background task is busy and no worker thread is alive."""
    from lora_studio.gui import workers
    from lora_studio.gui.workers import BackgroundTask

    deadline = time.monotonic() + timeout_s
    quiet_since = None
    while time.monotonic() < deadline:
        app.processEvents()  # type: ignore[attr-defined]
        busy = workers.live_count() or any(t.busy for t in window.findChildren(BackgroundTask))  # type: ignore[attr-defined]
        if busy:
            quiet_since = None
        elif quiet_since is None:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since > 0.6:
            return
        time.sleep(0.02)
    print("warning: background tasks still busy; screenshots may be incomplete", file=sys.stderr)


def chat_and_export(app: object, window: object, run_dir: str) -> None:
    """A finished side-by-side exchange on the Chat page and a verified export of the run's adapter."""
    chat, export = window.pages["chat"], window.pages["export"]  # type: ignore[attr-defined]
    chat.greedy.setChecked(True)
    chat.max_tokens.setValue(40)
    chat.picker.select("folder", run_dir)
    wait_idle(app, window)
    chat.side_by_side.setChecked(True)
    chat.prompt.setPlainText("Who are you?")
    chat.send()
    wait_idle(app, window)
    export.picker.select("folder", run_dir)
    export.out_dir.setText(str(Path(os.environ["LORA_STUDIO_RUNS_DIR"]).parent / "export"))
    export._auto_out = False  # as if typed: showing the page again must not move it back
    for fmt, box in export.format_boxes.items():
        box.setChecked(fmt in ("adapter", "merged", "gguf", "modelfile"))
    wait_idle(app, window)
    export.start()
    wait_idle(app, window, timeout_s=900)


def chat_prompt_set(app: object, window: object, outdir: Path) -> Path:
    """``chat-prompt-set.png``: the Chat page's Prompt set tab with the run's sample prompts answered
    by base and fine-tuned (after ``chat_and_export`` loaded the adapter); back to Conversation after."""
    chat = window.pages["chat"]  # type: ignore[attr-defined]
    window.show_page("chat")  # type: ignore[attr-defined]
    chat.tabs.setCurrentIndex(1)
    chat.run_prompt_set()
    wait_idle(app, window, timeout_s=1800)
    outdir.mkdir(parents=True, exist_ok=True)
    path = capture(app, window, outdir / "chat-prompt-set.png")
    chat.tabs.setCurrentIndex(0)
    return path


def show_evaluation(app: object, window: object, run_dir: str) -> bool:
    """The Evaluate page on ``run_dir`` and its newest saved evaluation (nothing is re-run: the numbers
    are the saved ones); False when the run has no saved evaluation."""
    from lora_studio.core.evaluate import list_evaluations

    page = window.pages["evaluate"]  # type: ignore[attr-defined]
    page.evaluate_run(run_dir)
    wait_idle(app, window)
    saved = list_evaluations(run_dir)
    if saved:
        page.show_saved(saved[-1])
    return bool(saved)


def render(
    outdir: Path, run_dir: str | None, model: str, theme: str, compare: list[str] | None = None
) -> list[Path]:
    from lora_studio.core.config import RunConfig
    from lora_studio.gui.app import MainWindow, create_app, settings

    app = create_app()
    window = MainWindow(store=settings())
    window.set_theme_mode(theme)
    config = RunConfig.load(Path(run_dir) / "config.toml") if run_dir else RunConfig()
    window.state.replace(config.with_overrides({"model.source": model}))
    window.resize(*_size)
    window.show()
    wait_idle(app, window)
    extra: list[Path] = []  # shots beyond one per page
    if run_dir:
        window.pages["train"].show_run(run_dir)  # type: ignore[attr-defined]
        if "chat" in window.pages and "export" in window.pages:
            chat_and_export(app, window, run_dir)
            extra.append(chat_prompt_set(app, window, outdir))
        if "evaluate" in window.pages:
            show_evaluation(app, window, run_dir)
    if "runs" in window.pages:
        # The Runs page lists main()'s temporary folder (never the user's), or — with ``--compare`` —
        # the folder holding the real runs to compare, which it only reads.
        runs_page = window.pages["runs"]
        root = Path(compare[0]).parent if compare else Path(os.environ["LORA_STUDIO_RUNS_DIR"])
        window.state.replace(window.state.config.with_overrides({"output.runs_dir": str(root)}))
        runs_page.refresh()  # type: ignore[attr-defined]
        wait_idle(app, window)
        if compare:
            runs_page.select([Path(run).name for run in compare])  # type: ignore[attr-defined]
            wait_idle(app, window)
    outdir.mkdir(parents=True, exist_ok=True)
    written = list(extra)
    for key in window.pages:
        window.show_page(key)
        wait_idle(app, window)  # a page may start reading when shown (the Data page's statistics)
        written.append(capture(app, window, outdir / f"{key}.png"))
    window.save_settings = lambda: None  # type: ignore[method-assign]
    window.close()
    from lora_studio.gui import workers

    workers.wait_all(30_000)  # a last background read (e.g. of the runs folder) must not outlive the app
    return written


def render_long_context(outdir: Path, seq: int, theme: str, gpu: str = "RTX 3060") -> Path:
    """The Model page estimating Llama-3.1-8B QLoRA r32 at ``seq`` tokens against a 12 GB card
    (docs/memory.md): the long-context savers that "auto" turns on, and the longest length."""
    from lora_studio.core.config import RunConfig
    from lora_studio.gui.app import MainWindow, create_app, settings
    from lora_studio.gui.widgets.memory_panel import MemoryPanel

    app = create_app()
    window = MainWindow(store=settings())
    window.set_theme_mode(theme)
    config = RunConfig().with_overrides({
        "model.quantization": "nf4", "lora.r": 32, "lora.alpha": 32, "data.max_seq_len": seq,
        "training.batch_size": 1, "training.gradient_checkpointing": True,
    })  # fmt: skip
    window.state.replace(config)
    window.resize(*_size)
    window.show()
    wait_idle(app, window)
    window.show_page("model")
    panel = window.findChildren(MemoryPanel)[0]
    panel.select_gpu(gpu)
    panel.model.setCurrentIndex(panel.model.findData("catalog:Llama-3.1-8B"))
    wait_idle(app, window)
    outdir.mkdir(parents=True, exist_ok=True)
    path = capture(app, window, outdir / "memory-long-context.png")
    window.save_settings = lambda: None  # type: ignore[method-assign]
    window.close()
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("outdir", type=Path)
    parser.add_argument(
        "--model", default="tiny", help="'tiny' (default, seconds), 'default', or a model path"
    )
    parser.add_argument("--steps", type=int, default=24, help="training steps of the run shown")
    parser.add_argument("--theme", default="light", choices=["light", "dark"])
    parser.add_argument("--no-run", action="store_true", help="skip training (the Train page stays empty)")
    parser.add_argument(
        "--run", type=Path, metavar="RUN_DIR", help="show this existing run instead of training"
    )
    parser.add_argument(
        "--compare",
        nargs="+",
        metavar="RUN_DIR",
        help="run folders (in one runs folder) to select together on the Runs page",
    )
    parser.add_argument(
        "--offscreen", action="store_true", help="render with grab() instead of real windows (no Xvfb needed)"
    )
    parser.add_argument(
        "--long-context",
        type=int,
        metavar="TOKENS",
        help="only memory-long-context.png: the Model page estimating Llama-3.1-8B QLoRA at TOKENS on 12 GB",
    )
    parser.add_argument(
        "--size",
        default=f"{SIZE[0]}x{SIZE[1]}",
        metavar="WxH",
        help="window size (the app opens at 1360x860)",
    )
    args = parser.parse_args(argv)
    global _display, _size
    width, _, height = args.size.partition("x")
    _size = (int(width), int(height))
    from lora_studio.gui import xserver

    if not args.offscreen and not xserver.missing_tools():
        _display = xserver.VirtualDisplay()
        _display.start()  # type: ignore[attr-defined]
        os.environ.update(_display.env())  # type: ignore[attr-defined]
        os.environ.pop("QT_QPA_PLATFORM", None)
    else:
        if not args.offscreen:
            print(f"no real display ({xserver.install_line()}): rendering offscreen", file=sys.stderr)
        os.environ["QT_QPA_PLATFORM"] = "offscreen"
    os.environ["LORA_STUDIO_NO_FIRST_RUN"] = "1"
    work = Path(tempfile.mkdtemp(prefix="lora-studio-shots-"))
    os.environ["LORA_STUDIO_SETTINGS"] = str(work / "settings.ini")
    os.environ["LORA_STUDIO_RUNS_DIR"] = str(work / "runs")
    try:
        if args.long_context:
            print(render_long_context(args.outdir, args.long_context, args.theme))
            return 0
        model = args.model
        run_dir = None
        if args.run:
            from lora_studio.core.config import RunConfig

            run_dir, model = str(args.run), RunConfig.load(args.run / "config.toml").model.source
        elif model == "tiny":
            model = str(tiny_model(work / "tiny-llama"))
        if not args.no_run and not args.run:
            run_dir, model = train_run(model, args.steps, work / "runs")
        for path in render(args.outdir, run_dir, model, args.theme, args.compare):
            print(path)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if _display is not None:
            _display.stop()  # type: ignore[attr-defined]
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
