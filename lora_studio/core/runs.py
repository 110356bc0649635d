"""The run folder: the one record of a run that the GUI, the CLI and later sessions all read.

Layout (DESIGN.md §4)::

    <runs dir>/<YYYYmmdd-HHMMSS-name>/
      config.toml  status.json  metrics.jsonl  samples.jsonl  checkpoints/checkpoint-N/  adapter/

``status.json`` is replaced atomically and carries the writer's PID, host and process start time,
so a reader can tell a live run from one whose process died (shown as ``interrupted``).
``metrics.jsonl`` is appended one whole line at a time and flushed; a torn last line (the process
was killed mid-write) is ignored by readers and removed on resume.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from lora_studio.core.atomic import atomic_write_text, honour_umask, pause_before_rename
from lora_studio.core.config import RunConfig, default
from lora_studio.core.errors import LoraStudioError
from lora_studio.core.paths import runs_dir as default_runs_dir

STATES = ("running", "paused", "completed", "cancelled", "failed", "interrupted")
#: States of a run whose process is alive (or should be: a dead one reads as "interrupted").
LIVE_STATES = ("running", "paused")
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


class RunFolderError(LoraStudioError):
    """A run folder is missing or unreadable."""


def describe(config: RunConfig) -> str:
    """A run's default name: what tells it from its neighbours — model, weights, rank, learning rate.

    Every run used to be called "run", so the Runs page's legends ("run loss", "run loss") and
    compare columns could not be told apart. ``smollm2-135m-instruct-nf4-r16-lr5e-4``.
    """
    source = config.model.source.rstrip("/\\")
    model = re.sub(r"\.(gguf|json)$", "", Path(source).name or source, flags=re.IGNORECASE)
    model = re.sub(r"\.(q\d\w*|f16|bf16|f32)$", "", model, flags=re.IGNORECASE)  # GGUF quant suffix
    if source == "default":
        model = "smollm2-135m"
    model = re.sub(r"[^a-z0-9.]+", "-", model.lower()).strip("-")[:32] or "model"
    weights = "lora" if config.model.quantization == "none" else config.model.quantization
    lr = f"{config.training.learning_rate:.1e}".replace(".0e", "e").replace("e-0", "e-").replace("e+0", "e")
    return f"{model}-{weights}-r{config.lora.r}-lr{lr}"


@dataclass
class RunFolder:
    path: Path
    #: False on the non-main ranks of a multi-process run: they read the folder but never write it.
    writer: bool = True

    # -- creation and opening ---------------------------------------------------------------

    @classmethod
    def create(cls, config: RunConfig, runs_root: Path | None = None) -> RunFolder:
        root = Path(runs_root or config.output.runs_dir or default_runs_dir()).expanduser()
        root.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        if config.output.run_name == default("output.run_name"):
            config = config.with_overrides({"output.run_name": describe(config)})
        base = f"{stamp}-{config.output.run_name}"
        for suffix in range(1000):
            candidate = root / (base if suffix == 0 else f"{base}-{suffix}")
            try:
                candidate.mkdir()
                break
            except FileExistsError:
                continue
        else:  # pragma: no cover - a thousand runs in one second
            raise RunFolderError(f"{root}: cannot create a new run folder")
        run = cls(candidate)
        config.save(run.config_path)
        run.write_status("running", step=0)
        return run

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> RunFolder:
        folder = Path(path).expanduser()
        if not folder.is_dir():
            raise RunFolderError(f"{folder}: no such run folder", hint="list runs with `lora-studio runs`")
        if not (folder / "config.toml").is_file():
            raise RunFolderError(f"{folder}: not a run folder (no config.toml)")
        return cls(folder)

    # -- paths ------------------------------------------------------------------------------

    @property
    def run_id(self) -> str:
        return self.path.name

    @property
    def config_path(self) -> Path:
        return self.path / "config.toml"

    @property
    def status_path(self) -> Path:
        return self.path / "status.json"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def samples_path(self) -> Path:
        return self.path / "samples.jsonl"

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / "checkpoints"

    @property
    def adapter_dir(self) -> Path:
        return self.path / "adapter"

    def config(self) -> RunConfig:
        return RunConfig.load(self.config_path)

    def config_with_notes(self) -> tuple[RunConfig, list[str]]:
        """The config even when an older app version wrote it, with a note for each difference."""
        return RunConfig.load_lenient(self.config_path)

    # -- status -----------------------------------------------------------------------------

    def write_status(self, state: str, **fields: Any) -> dict[str, Any]:
        """Replace status.json atomically; keeps earlier fields (e.g. ``started_at``) not given."""
        assert state in STATES, state
        if not self.writer:
            return {}
        previous = self._read_status_raw() or {}
        now = time.time()
        status = {**previous, **fields, "state": state, "updated_at": now}
        status.setdefault("started_at", now)
        if state in LIVE_STATES:
            status.update(_process_identity())
        atomic_write_text(self.status_path, json.dumps(status, indent=2))
        return status

    def _read_status_raw(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.status_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return None

    def status(self) -> dict[str, Any]:
        """The run's state, with a dead writer's ``running`` or ``paused`` corrected to ``interrupted``."""
        status = self._read_status_raw()
        if status is None:
            return {"state": "interrupted", "error": "status.json is missing or unreadable", "step": 0}
        if status.get("state") in LIVE_STATES and not _writer_alive(status):
            status = {
                **status,
                "state": "interrupted",
                "error": status.get("error") or "the training process stopped without finishing",
            }
        return status

    # -- metrics and samples ----------------------------------------------------------------

    def append_metrics(self, record: dict[str, Any]) -> None:
        if self.writer:
            _append_line(self.metrics_path, record)

    def append_sample(self, record: dict[str, Any]) -> None:
        if self.writer:
            _append_line(self.samples_path, record)

    def metrics(self) -> list[dict[str, Any]]:
        return read_jsonl(self.metrics_path)

    def samples(self) -> list[dict[str, Any]]:
        return read_jsonl(self.samples_path)

    def truncate_metrics(self, last_step: int) -> None:
        """On resume: keep only records up to the checkpoint's step (and drop a torn last line)."""
        if not self.writer or not self.metrics_path.exists():
            return
        kept = [r for r in self.metrics() if int(r.get("step", 0)) <= last_step]
        atomic_write_text(self.metrics_path, "".join(json.dumps(r) + "\n" for r in kept))

    # -- checkpoints ------------------------------------------------------------------------

    def checkpoints(self) -> list[tuple[int, Path]]:
        """Complete checkpoints, oldest first (a checkpoint is complete once it has been renamed in)."""
        found = []
        if self.checkpoints_dir.is_dir():
            for child in self.checkpoints_dir.iterdir():
                match = _CHECKPOINT.match(child.name)
                if match and child.is_dir() and (child / "trainer_state.json").is_file():
                    found.append((int(match.group(1)), child))
        return sorted(found)

    def latest_checkpoint(self) -> tuple[int, Path] | None:
        found = self.checkpoints()
        return found[-1] if found else None

    def summary(self) -> dict[str, Any]:
        """One row of the runs table."""
        status = self.status()
        metrics = self.metrics()
        losses = [m for m in metrics if m.get("loss") is not None]
        evals = [m for m in metrics if m.get("eval_loss") is not None]
        config, notes = self.config_with_notes()
        model, quant, data = config.model.source, config.model.quantization, config.data.path
        peaks = [
            m["mem"].get("cuda_peak", m["mem"].get("rss", 0))
            for m in metrics
            if isinstance(m.get("mem"), dict)
        ]
        started, ended = status.get("started_at"), status.get("finished_at") or status.get("updated_at")
        return {
            "run_id": self.run_id,
            "path": str(self.path),
            "state": status.get("state"),
            "step": status.get("step", 0),
            "total_steps": status.get("total_steps"),
            "model": model,
            "quantization": quant,
            "data": data,
            "final_loss": losses[-1]["loss"] if losses else None,
            "final_eval_loss": evals[-1]["eval_loss"] if evals else None,
            "started_at": started,
            "updated_at": status.get("updated_at"),
            # the run's clock (core/train/clock.py): working time, pauses and idle gaps left out;
            # runs from before it existed: their folder's first to last write
            "duration_s": status.get("elapsed_s") or ((ended - started) if started and ended else None),
            "peak_memory": max(peaks) if peaks else None,
            "error": status.get("error"),
            "notes": notes,
        }


def list_runs(runs_root: Path | None = None) -> list[RunFolder]:
    root = Path(runs_root or default_runs_dir())
    if not root.is_dir():
        return []
    return sorted(
        (RunFolder(p) for p in root.iterdir() if p.is_dir() and (p / "config.toml").is_file()),
        key=lambda r: r.path.name,
    )


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Whole lines only: a torn final line from a killed writer is skipped, never a crash."""
    records: list[dict[str, Any]] = []
    try:
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                if not line.endswith("\n"):
                    break
                try:
                    value = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(value, dict):
                    records.append(value)
    except FileNotFoundError:
        pass
    return records


def _append_line(path: Path, record: dict[str, Any]) -> None:
    line = json.dumps(record, allow_nan=False) + "\n"
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(line)
        handle.flush()
        os.fsync(handle.fileno())


def replace_dir(staging: Path, target: Path) -> None:
    """Move a fully written folder into place, replacing an older one of the same name."""
    honour_umask(staging)
    pause_before_rename()  # fault injection only: where a kill would tear a non-atomic save
    if target.exists():
        old = target.with_name(f".{target.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
        os.replace(staging, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, target)
    fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _process_identity() -> dict[str, Any]:
    import psutil

    pid = os.getpid()
    return {"pid": pid, "host": socket.gethostname(), "pid_started": psutil.Process(pid).create_time()}


def _writer_alive(status: dict[str, Any]) -> bool:
    pid, host = status.get("pid"), status.get("host")
    if pid is None or host != socket.gethostname():
        # Another machine (e.g. a shared drive): trust a recent heartbeat.
        return time.time() - float(status.get("updated_at", 0)) < 15 * 60
    import psutil

    try:
        proc = psutil.Process(int(pid))
        started = status.get("pid_started")
        return started is None or abs(proc.create_time() - float(started)) < 1.0
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return False


def config_diff(runs: list[RunFolder], *, only_different: bool = True) -> dict[str, list[Any]]:
    """Dotted setting → each run's value, for the settings that differ (what a comparison shows),
    or for every setting (what one run's details show)."""
    flats = []
    for run in runs:
        config, _ = run.config_with_notes()
        flat = {}
        for section, values in config.to_dict().items():
            if isinstance(values, dict):
                flat.update({f"{section}.{key}": value for key, value in values.items()})
        flats.append(flat)
    keys = sorted({key for flat in flats for key in flat})
    return {
        key: [flat.get(key) for flat in flats]
        for key in keys
        if not only_different or len({json.dumps(flat.get(key), sort_keys=True) for flat in flats}) > 1
    }


def find_run(name: str, runs_root: Path | None = None) -> RunFolder:
    """A run by folder path, full id, or a unique part of its id (as the CLI accepts)."""
    path = Path(name).expanduser()
    if path.is_dir():
        return RunFolder.open(path)
    matches = [r for r in list_runs(runs_root) if name == r.run_id or name in r.run_id]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise RunFolderError(f"no run matches '{name}'", hint="list runs with `lora-studio runs`")
    raise RunFolderError(
        f"'{name}' matches {len(matches)} runs: " + ", ".join(r.run_id for r in matches[:5]),
        hint="give more of the run id",
    )
