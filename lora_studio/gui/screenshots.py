"""Render every page of the app to PNG files: ``python -m lora_studio.gui.screenshots OUTDIR``.

Used for the README and for review: it trains a short run first (a tiny random model by default, in
seconds; ``--model default --steps 30`` for the real bundled model, minutes on a CPU; or ``--run
RUN_DIR`` shows an existing run), loads that run into the Train page, waits until every background
task has answered, and saves ``<page>.png`` for each page at 1400×900. Settings and new runs go to a
temporary folder, so the user's own are never touched.
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


def tiny_model(out: Path) -> Path:
    """A 2-layer random llama with the bundled model's tokenizer (the tests' model, for speed)."""
    from lora_studio.core.models import resolve_model
    from lora_studio.tiny_models import make_tiny_model

    return make_tiny_model(out, resolve_model("default").path)


def train_run(model: str, steps: int, runs: Path) -> tuple[str, str]:
    """Train ``steps`` steps on the demo data; returns (run folder, model source)."""
    from lora_studio.core.config import RunConfig
    from lora_studio.core.engine import train

    config = RunConfig().with_overrides({
        "model.source": model, "data.path": "demo", "data.max_seq_len": 256, "data.eval_fraction": 0.1,
        "training.max_steps": steps, "training.batch_size": 8, "training.learning_rate": 5e-4 if model == "default"
        else 3e-3, "training.save_steps": max(2, steps // 3), "training.logging_steps": 1,
        "training.sample_max_new_tokens": 24, "output.runs_dir": str(runs), "output.run_name": "demo",
    })  # fmt: skip
    result = train(config)
    return str(result.run_dir), model


def comparison_runs(runs: Path, steps: int = 60) -> list[str]:
    """Three finished runs that differ in learning rate and LoRA rank, with plausible curves (for
    the Runs page's comparison; written directly, no training)."""
    import math
    import random

    from lora_studio.core.config import RunConfig
    from lora_studio.core.runs import RunFolder

    rng = random.Random(7)
    ids = []
    for name, lr, rank, floor, mem_gb in (
        ("lr1e-4-r8", 1e-4, 8, 1.35, 5.1),
        ("lr2e-4-r16", 2e-4, 16, 1.12, 5.4),
        ("lr5e-4-r32", 5e-4, 32, 0.98, 6.0),
    ):
        config = RunConfig().with_overrides({
            "output.runs_dir": str(runs), "output.run_name": name, "training.learning_rate": lr,
            "lora.r": rank, "lora.alpha": 2 * rank, "training.max_steps": steps,
        })  # fmt: skip
        run = RunFolder.create(config, runs)
        tau = 18 * 1e-4 / lr + 6
        for step in range(1, steps + 1):
            loss = floor + 1.6 * math.exp(-step / tau) + rng.gauss(0, 0.05)
            mem = {
                "cuda_allocated": mem_gb * 0.8 * 2**30,
                "cuda_peak": (mem_gb - 0.4 * math.exp(-step / 3)) * 2**30,
            }
            run.append_metrics({"step": step, "loss": round(loss, 4), "tokens_seen": step * 4096, "mem": mem})
            if step % 15 == 0:
                run.append_metrics(
                    {"step": step, "eval_loss": round(floor + 0.12 + 1.6 * math.exp(-step / tau), 4)}
                )
        for prompt, answers in (
            ("What is LoRA?", ("A way to train.", "Low-rank adapters added to a frozen model.", "Low-rank adapter matrices trained beside frozen weights.")),
            ("Name a planet.", ("Planet.", "Mars.", "Mars, the red planet.")),
        ):  # fmt: skip
            answer = answers[[8, 16, 32].index(rank)]
            run.append_sample({"step": steps, "stage": "after", "prompt": prompt, "answer": answer})
        started = run.status()["started_at"]
        run.write_status(
            "completed", step=steps, total_steps=steps, finished_at=started + 240 + 60 * rank / 8
        )
        ids.append(run.run_id)
    return ids


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
    for fmt, box in export.format_boxes.items():
        box.setChecked(fmt in ("adapter", "merged", "gguf", "modelfile"))
    wait_idle(app, window)
    export.start()
    wait_idle(app, window, timeout_s=900)


def render(outdir: Path, run_dir: str | None, model: str, theme: str) -> list[Path]:
    from lora_studio.core.config import RunConfig
    from lora_studio.gui.app import MainWindow, create_app, settings

    app = create_app()
    window = MainWindow(store=settings())
    window.set_theme_mode(theme)
    config = RunConfig.load(Path(run_dir) / "config.toml") if run_dir else RunConfig()
    window.state.replace(config.with_overrides({"model.source": model}))
    window.resize(*SIZE)
    window.show()
    wait_idle(app, window)
    if run_dir:
        window.pages["train"].show_run(run_dir)  # type: ignore[attr-defined]
        if "chat" in window.pages and "export" in window.pages:
            chat_and_export(app, window, run_dir)
    if "runs" in window.pages:
        runs_page = window.pages["runs"]
        shots_runs = Path(os.environ["LORA_STUDIO_RUNS_DIR"])  # main()'s temporary folder, never the user's
        window.state.replace(window.state.config.with_overrides({"output.runs_dir": str(shots_runs)}))
        compared = comparison_runs(shots_runs)
        runs_page.refresh()  # type: ignore[attr-defined]
        wait_idle(app, window)
        runs_page.select(compared)  # type: ignore[attr-defined]
        wait_idle(app, window)
    outdir.mkdir(parents=True, exist_ok=True)
    written = []
    for key in window.pages:
        window.show_page(key)
        for _ in range(5):
            app.processEvents()
            time.sleep(0.05)
        path = outdir / f"{key}.png"
        window.grab().save(str(path))
        written.append(path)
    window.save_settings = lambda: None  # type: ignore[method-assign]
    window.close()
    from lora_studio.gui import workers

    workers.wait_all(30_000)  # a last background read (e.g. of the runs folder) must not outlive the app
    return written


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
    args = parser.parse_args(argv)
    if "DISPLAY" not in os.environ and "WAYLAND_DISPLAY" not in os.environ:
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    work = Path(tempfile.mkdtemp(prefix="lora-studio-shots-"))
    os.environ["LORA_STUDIO_SETTINGS"] = str(work / "settings.ini")
    os.environ["LORA_STUDIO_RUNS_DIR"] = str(work / "runs")
    try:
        model = args.model
        run_dir = None
        if args.run:
            from lora_studio.core.config import RunConfig

            run_dir, model = str(args.run), RunConfig.load(args.run / "config.toml").model.source
        elif model == "tiny":
            model = str(tiny_model(work / "tiny-llama"))
        if not args.no_run and not args.run:
            run_dir, model = train_run(model, args.steps, work / "runs")
        for path in render(args.outdir, run_dir, model, args.theme):
            print(path)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
