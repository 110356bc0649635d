"""The training engine: one recipe, read top to bottom, that the GUI, the CLI and the tests all run.

``train(config, listener)`` resolves the model, prepares the data (so dataset errors arrive before
any slow model load), creates the run folder, loads the model with the chosen quantization, wraps
it with LoRA, records "before" samples, trains with ``transformers.Trainer`` and finishes with the
adapter, "after" samples and a truthful ``status.json``. ``resume(run_dir, listener)`` continues a
run from its last complete checkpoint. Everything the outside world learns arrives as events
(``core/train/events.py``); cancellation is a ``threading.Event`` checked at step boundaries.
"""

from __future__ import annotations

import dataclasses
import errno
import gc
import logging
import shutil
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lora_studio.core.config import RunConfig
from lora_studio.core.errors import (
    CancelledError,
    ConfigError,
    LoraStudioError,
    OutOfMemoryError,
    TrainingError,
)
from lora_studio.core.faults import FaultSpec, hold, parse_faults
from lora_studio.core.runs import LIVE_STATES, RunFolder, replace_dir
from lora_studio.core.train import events as ev
from lora_studio.core.train.clock import RunClock
from lora_studio.core.train.distributed import World
from lora_studio.core.train.long_context import SaverDecider
from lora_studio.core.train.shared import SharedModel

log = logging.getLogger(__name__)

#: Sample answers report their progress at most this often (the first token of each always).
SAMPLE_PROGRESS_EVERY_S = 0.25

OOM_HINT = (
    "reduce memory: lower training.batch_size (raise grad_accum to keep the effective batch), lower "
    "data.max_seq_len, use 4-bit quantization (model.quantization = 'nf4'), or turn on "
    "training.gradient_checkpointing"
)
FAILED_HINT = (
    "start the run again, or resume it from its last checkpoint (Runs page, or `lora-studio train "
    "--resume`); if it fails the same way again, report it with the run folder's error.log"
)
MODEL_FAILED_HINT = (
    "check the model (model.source): its files may be incomplete or unreadable — load it again on the "
    "Model page or copy it again — then start the run again"
)


@dataclass(frozen=True)
class RunResult:
    status: str  # "completed" | "cancelled"
    run_dir: Path
    adapter_path: Path | None
    step: int
    final_loss: float | None
    final_eval_loss: float | None


def train(
    config: RunConfig,
    listener: ev.Listener | None = None,
    *,
    cancel: threading.Event | None = None,
    pause: threading.Event | None = None,
    runs_root: Path | None = None,
    faults: FaultSpec = None,
    shared_model: SharedModel | None = None,
    decide_savers: SaverDecider | None = None,
) -> RunResult:
    """Train a new run. Raises the project's own errors; the run folder (if any) records them too.

    ``pause``, while set, holds training at the next step boundary (the model is then lent to chat
    through ``shared_model``); clearing it continues with no step lost. ``decide_savers``
    (``estimate.decide_savers``, which the engine cannot import: the estimate sits above it)
    decides the config's "auto" memory savers; without it they stay off and the run's log says so.
    ``faults`` is a test seam only (``core/faults.py``): it makes the run fail where real runs
    fail; users never set it.
    """
    return _run_and_release(
        TrainingRun(
            config,
            listener,
            cancel=cancel,
            pause=pause,
            runs_root=runs_root,
            faults=faults,
            shared_model=shared_model,
            decide_savers=decide_savers,
        )
    )


def resume(
    run_dir: str | Path,
    listener: ev.Listener | None = None,
    *,
    cancel: threading.Event | None = None,
    pause: threading.Event | None = None,
    faults: FaultSpec = None,
    shared_model: SharedModel | None = None,
    decide_savers: SaverDecider | None = None,
) -> RunResult:
    """Continue a cancelled, failed or interrupted run from its last complete checkpoint
    (``decide_savers`` as for :func:`train`: decided again, for the device it continues on)."""
    folder = RunFolder.open(run_dir)
    state = folder.status().get("state")
    if state in LIVE_STATES:
        raise TrainingError(f"{folder.path}: this run is still {state} in another process")
    if state == "completed":
        raise TrainingError(f"{folder.path}: this run already completed; start a new run to train more")
    if folder.latest_checkpoint() is None:
        raise TrainingError(
            f"{folder.path}: no complete checkpoint to resume from",
            hint="start the run again; checkpoints are written every training.save_steps",
        )
    return _run_and_release(
        TrainingRun(
            folder.config(),
            listener,
            cancel=cancel,
            pause=pause,
            faults=faults,
            resume_folder=folder,
            shared_model=shared_model,
            decide_savers=decide_savers,
        )
    )


def _run_and_release(run: TrainingRun) -> RunResult:
    """Run, then let go of the model, optimizer and data whatever the outcome.

    A long-lived caller (the GUI trains many runs in one process) must get its memory back after
    each one: the failure's traceback would otherwise keep the trainer, model and optimizer alive
    through its frames for as long as the exception is kept, and CUDA's cache would keep the
    freed blocks reserved.
    """
    try:
        return run.run()
    except BaseException as exc:
        error: BaseException | None = exc
        while error is not None:  # the frames' variables go; file, line and message stay for the log
            traceback.clear_frames(error.__traceback__)
            error = error.__cause__ or error.__context__
        raise
    finally:
        run.release()


class TrainingRun:
    """One run: setup → samples → train → finish. State lives here, not in module globals."""

    def __init__(
        self,
        config: RunConfig,
        listener: ev.Listener | None,
        *,
        cancel: threading.Event | None = None,
        pause: threading.Event | None = None,
        runs_root: Path | None = None,
        faults: FaultSpec = None,
        resume_folder: RunFolder | None = None,
        shared_model: SharedModel | None = None,
        decide_savers: SaverDecider | None = None,
    ) -> None:
        self.config = config
        self.decide_savers = decide_savers
        self._listener = listener
        self.cancel = cancel or threading.Event()
        self.pause = pause or threading.Event()
        self.runs_root = runs_root
        self.faults = parse_faults(faults)
        self.folder: RunFolder | None = resume_folder
        self.resuming = resume_folder is not None
        self.shared_model = shared_model if shared_model is not None else SharedModel()
        self.step = 0
        self.phase = "starting"  # what the run is doing, in words: failures name it
        self.current_step = 0  # the training step being computed (self.step: the last one done)
        self.world = World(0, 1, 0)
        self.model: Any = None
        self.four_bit: Any = None  # FourBitLayout: 4-bit weights put back in training layout each step
        self.savers: Any = None  # long_context.Savers: resolved from the config's auto/on/off
        self.tokenizer: Any = None
        self.initial_adapter: Path | None = None  # preference.init_adapter, found and checked
        self.lock = threading.Lock()  # held while the model trains a step; chat takes it to generate
        self.clock = RunClock()  # the run's working time: every duration shown reads it

    # -- the recipe -------------------------------------------------------------------------

    def run(self) -> RunResult:
        self.clock = RunClock(self._elapsed_before())
        try:
            from lora_studio.core.models import pick_device
            from lora_studio.core.train import distributed

            self.device = pick_device("auto")
            self.world = distributed.init(self.device)
            self._setup_data()
            self._setup_folder()
            self._setup_model()
            if not self.resuming:
                self._record_samples("before")
            from lora_studio.core.train.trainer import fit

            method = self.config.training.method
            self.emit(ev.Phase("starting training", "SFT" if method == "sft" else f"{method.upper()} (TRL)"))
            outcome = fit(self)
            return self._finish(outcome)
        except CancelledError:
            if self.folder is None:
                raise
            self._save_adapter()
            return self._finish_cancelled()
        except LoraStudioError as exc:
            self._fail(exc)
            raise
        except Exception as exc:
            error = self._translate(exc)
            self._keep_traceback(exc)
            self._fail(error)
            raise error from exc

    # -- setup ------------------------------------------------------------------------------

    def _setup_data(self) -> None:
        from lora_studio.core.data import prepare_dataset
        from lora_studio.core.models import load_tokenizer, model_info, quiet_library_defaults, resolve_model

        quiet_library_defaults()
        cfg = self.config
        self.emit(ev.Phase("resolving model", cfg.model.source))
        self.resolved = resolve_model(cfg.model.source, allow_pickle=cfg.model.allow_pickle)
        self.info = model_info(
            cfg.model.source,
            trust_remote_code=cfg.model.trust_remote_code,
            allow_pickle=cfg.model.allow_pickle,
        )
        cfg.check_against_model(self.info.context_length)
        self.check_cancel()
        self.emit(ev.Phase("preparing data", cfg.data.path))
        self.tokenizer = load_tokenizer(self.resolved.path, trust_remote_code=cfg.model.trust_remote_code)
        if self.faults.get("data_error"):
            raise ValueError("injected fault while tokenizing the dataset")
        self.initial_adapter = find_initial_adapter(cfg)
        if cfg.training.method == "sft":
            self.data = prepare_dataset(cfg.data, self.tokenizer, seed=cfg.training.seed, cancel=self.cancel)
        else:
            from lora_studio.core.data import prepare_preferences

            self.data = prepare_preferences(
                cfg.data, self.tokenizer, cfg.training.method, seed=cfg.training.seed, cancel=self.cancel
            )
        self.check_cancel()

    def _setup_folder(self) -> None:
        from lora_studio.core.train import distributed

        if self.folder is None:
            # only rank 0 creates and writes the run folder; the other ranks learn its path
            created = RunFolder.create(self.config, self.runs_root) if self.world.is_main else None
            path = distributed.broadcast(str(created.path) if created else None)
            self.folder = created or RunFolder(Path(path), writer=False)
        else:
            self.folder.writer = self.world.is_main
            self.write_status("running", error=None)

    def _setup_model(self) -> None:
        from lora_studio.core.models import FourBitLayout, load_model, pick_dtype

        cfg = self.config
        self.dtype = pick_dtype(cfg.model.compute_dtype, self.device)
        self.emit(ev.Phase("loading model", f"{self.info.name} ({cfg.model.quantization})"))
        if self.faults.get("load_error"):
            raise OSError(errno.EIO, "Input/output error (injected fault while reading the weights)")
        model, _ = load_model(
            str(self.resolved.path),
            cfg.model.quantization,
            cfg.model.compute_dtype,
            self.device,
            double_quant=cfg.model.double_quant,
            trust_remote_code=cfg.model.trust_remote_code,
            allow_pickle=cfg.model.allow_pickle,
        )
        self.check_cancel()
        from transformers import set_seed

        set_seed(cfg.training.seed)  # adapter initialisation is part of the run: same seed, same run
        self.model = wrap_with_lora(model, cfg, initial_adapter=self.initial_adapter)
        if self._converts_initial_weights and self.world.is_main and not self._initial_adapter.exists():
            # PiSSA/OLoRA change the base weights; keep the starting adapter so the final one can be
            # converted back into a plain LoRA for the unmodified base (export, chat, sharing)
            self.model.save_pretrained(self._initial_adapter)
        self.model.config.use_cache = False  # a KV cache breaks padding-free packing (DESIGN.md §2)
        from lora_studio.core.train.long_context import apply_savers, fixed_savers

        self.savers, line = (self.decide_savers or fixed_savers)(cfg, self.device)
        apply_savers(self.model, self.savers)
        self.emit(ev.Phase("memory savers", line))
        # after wrapping: PiSSA/OLoRA replace 4-bit base weights; samples and paused-run chat repack them
        self.four_bit = FourBitLayout(self.model)
        self.shared_model.lend(self.model, self.tokenizer, self.lock)

    # -- samples ----------------------------------------------------------------------------

    def _record_samples(self, stage: str) -> None:
        prompts = self.config.training.sample_prompts
        if not prompts or not self.world.is_main:
            return
        self.emit(ev.Phase("sampling", f"answering {len(prompts)} prompts ({stage} training)"))
        last = [0.0]

        fault = self.faults.get("sample_pause") if stage == "before" else None

        def progress(index: int, tokens: int, text: str, done: bool = False) -> None:
            if fault is not None and index == 0 and tokens == fault.step:
                last[0] = 0.0  # reported before it holds
            # at most a few events a second: a JSON-lines listener (the CLI's --json) writes each
            now = time.monotonic()
            if tokens and not done and now - last[0] < SAMPLE_PROGRESS_EVERY_S:
                return
            last[0] = now
            self.emit(
                ev.SampleProgress(
                    stage, index, len(prompts), prompts[index], tokens,
                    self.config.training.sample_max_new_tokens, text, done,
                )
            )  # fmt: skip
            if fault is not None and index == 0 and tokens == fault.step:
                hold(fault, f"at token {tokens} of the first sample answer",
                     until=lambda: self.cancel.is_set() or self.pause.is_set())  # fmt: skip

        with self.lock:  # a chat with the run's model (Pause pressed meanwhile) waits for them
            answers = generate_samples(
                self.model, self.tokenizer, prompts, self.config, progress=progress, cancel=self.cancel
            )
        if stage == "before":
            self.check_cancel()  # stopped before the first step; after training, Stop only skips the rest
        if not answers:
            return
        assert self.folder is not None
        for prompt, answer in answers:
            self.folder.append_sample(
                {"step": self.step, "stage": stage, "prompt": prompt, "answer": answer, "t": time.time()}
            )
        self.emit(ev.Samples(step=self.step, stage=stage, samples=tuple(answers)))

    # -- finishing --------------------------------------------------------------------------

    @property
    def _converts_initial_weights(self) -> bool:
        # a run that continues an earlier adapter starts from that adapter, not from PiSSA/OLoRA's
        return self.config.lora.init in ("pissa", "olora") and not self.config.preference.init_adapter

    @property
    def _initial_adapter(self) -> Path:
        assert self.folder is not None
        return self.folder.path / "initial_adapter"

    def _save_adapter(self) -> Path | None:
        if self.model is None or self.folder is None:
            return None
        if not self.world.is_main:
            return self.folder.adapter_dir
        self.emit(ev.Phase("saving adapter", str(self.folder.adapter_dir)))
        staging = self.folder.path / ".adapter.staging"
        shutil.rmtree(staging, ignore_errors=True)
        if self._converts_initial_weights and self._initial_adapter.exists():
            work = self.folder.path / "initial_adapter_conversion"  # peft loads it by folder name
            shutil.rmtree(work, ignore_errors=True)
            shutil.copytree(self._initial_adapter, work)
            self.model.save_pretrained(
                staging, path_initial_model_for_weight_conversion=str(work), selected_adapters=["default"]
            )
            shutil.rmtree(work, ignore_errors=True)
        else:  # not a preference run's frozen reference copy ("ref"): the adapter people use
            self.model.save_pretrained(staging, selected_adapters=["default"])
        self.tokenizer.save_pretrained(staging)
        replace_dir(staging, self.folder.adapter_dir)
        return self.folder.adapter_dir

    def _finish(self, outcome: dict[str, Any]) -> RunResult:
        assert self.folder is not None
        if outcome["cancelled"]:
            self._save_adapter()
            return self._finish_cancelled()
        adapter = self._save_adapter()
        self._record_samples("after")
        metrics = self.folder.metrics()
        final_loss = next((m["loss"] for m in reversed(metrics) if m.get("loss") is not None), None)
        final_eval = next((m["eval_loss"] for m in reversed(metrics) if m.get("eval_loss") is not None), None)
        self.write_status(
            "completed",
            step=self.step,
            final_loss=final_loss,
            final_eval_loss=final_eval,
            finished_at=time.time(),
        )
        self.emit(
            ev.Finished(
                "completed",
                self.step,
                str(self.folder.path),
                str(adapter),
                final_loss,
                final_eval,
                self.clock.elapsed(),
            )
        )
        return RunResult("completed", self.folder.path, adapter, self.step, final_loss, final_eval)

    def _finish_cancelled(self) -> RunResult:
        assert self.folder is not None
        adapter = self.folder.adapter_dir if self.folder.adapter_dir.is_dir() else None
        self.write_status("cancelled", step=self.step, finished_at=time.time())
        self.emit(
            ev.Finished(
                "cancelled",
                self.step,
                str(self.folder.path),
                str(adapter) if adapter else None,
                None,
                None,
                self.clock.elapsed(),
            )
        )
        return RunResult("cancelled", self.folder.path, adapter, self.step, None, None)

    def _keep_traceback(self, exc: Exception) -> None:
        """An unexpected failure's traceback goes to the log and to ``error.log`` in the run folder:
        the message a user sees is short, and the report the hint asks for needs the details."""
        log.error("run failed", exc_info=exc)
        if self.folder is not None:
            try:
                text = "".join(traceback.format_exception(exc))
                (self.folder.path / "error.log").write_text(text, encoding="utf-8")
            except OSError:
                pass  # e.g. the disk is full: the status still records the failure

    def _fail(self, error: LoraStudioError) -> None:
        if self.folder is not None:
            self.write_status(
                "failed",
                step=self.step,
                error=str(error),
                error_type=type(error).__name__,
                finished_at=time.time(),
            )
        self.emit(
            ev.Failed(
                type(error).__name__,
                error.message,
                error.hint,
                self.step,
                str(self.folder.path) if self.folder else None,
            )
        )

    def _translate(self, exc: Exception) -> LoraStudioError:
        """Turn library failures into messages a user can act on."""
        import torch

        step = max(self.step, self.current_step)  # the step that failed, not the last one done
        if isinstance(exc, torch.OutOfMemoryError | MemoryError):
            where = "GPU" if isinstance(exc, torch.OutOfMemoryError) else "system"
            return OutOfMemoryError(f"Out of {where} memory at step {step}", hint=OOM_HINT)
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            target = self.folder.path if self.folder else "the runs folder"
            return TrainingError(
                f"Disk full while writing to {target} at step {step}",
                hint="free disk space (or lower training.save_total_limit) and resume the run",
            )
        where = f"at step {step}" if self.phase == "training" else f"while {self.phase}"
        hints = {
            "resolving model": MODEL_FAILED_HINT,
            "loading model": MODEL_FAILED_HINT,
            "preparing data": "check the dataset (data.path) on the Data page or with `lora-studio "
            "inspect-data`, then start the run again",
        }
        return TrainingError(
            f"Training failed {where}: {type(exc).__name__}: {exc}", hint=hints.get(self.phase, FAILED_HINT)
        )

    # -- plumbing ---------------------------------------------------------------------------

    def emit(self, event: ev.Event) -> None:
        if getattr(event, "elapsed_s", 0.0) is None:  # stamped with the run's one clock
            event = dataclasses.replace(event, elapsed_s=round(self.clock.elapsed(), 3))  # type: ignore[type-var]
        if isinstance(event, ev.Phase | ev.RunStarted):
            self.phase = event.name if isinstance(event, ev.Phase) else "training"
        if self._listener is None or not self.world.is_main:
            return
        try:
            self._listener(event)
        except Exception:  # a broken listener must not lose the user's run
            log.exception("event listener failed on %s", event.kind)

    def wait_while_paused(self) -> None:
        """Hold at a step boundary while paused; the model is idle and free for chat meanwhile. The
        run's clock stands still meanwhile, so rates measured on it (tokens per second, the ETA)
        leave the pause out."""
        if not self.pause.is_set() or self.cancel.is_set():
            return
        self.clock.pause()
        if self.folder is not None:  # the Runs page and `lora-studio runs` say so too
            self.write_status("paused", step=self.step)
        self.emit(ev.Paused(step=self.step, paused=True))
        while self.pause.is_set() and not self.cancel.is_set():
            time.sleep(0.05)
        self.clock.resume()
        if self.folder is not None:
            self.write_status("running", step=self.step)
        self.emit(ev.Paused(step=self.step, paused=False))

    def write_status(self, state: str, **fields: Any) -> None:
        """status.json, with the run's clock: the Runs page and `lora-studio runs` read its duration."""
        if self.folder is not None:
            self.folder.write_status(state, elapsed_s=round(self.clock.elapsed(), 3), **fields)

    def _elapsed_before(self) -> float:
        """A resumed run's working time up to the checkpoint it continues from (0 for a new run)."""
        if self.folder is None:
            return 0.0
        found = self.folder.latest_checkpoint()
        if found is None:
            return 0.0
        times = [
            m["elapsed_s"] for m in self.folder.metrics() if m.get("step", 0) <= found[0] and "elapsed_s" in m
        ]
        return float(times[-1]) if times else 0.0

    def check_cancel(self) -> None:
        if self.cancel.is_set():
            raise CancelledError("Cancelled by the user")

    def release(self) -> None:
        """Drop the model, tokenizer and data (also from ``shared_model``) and return freed memory."""
        self.shared_model.take_back(self.model)
        self.model = self.tokenizer = self.data = None
        self.four_bit = None
        gc.collect()  # the Trainer, its callbacks and peft's hooks form cycles that hold the model
        import sys

        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available():
            torch.cuda.empty_cache()  # back to the pre-run reserved level, visible to other programs


def find_initial_adapter(config: RunConfig) -> Path | None:
    """The adapter ``preference.init_adapter`` names (a run folder or an adapter folder), checked
    before any model loads: an adapter for another model would fail late or train nonsense."""
    given = config.preference.init_adapter
    if not given:
        return None
    path = Path(given).expanduser()
    candidates = [path / "adapter", path]
    adapter = next((c for c in candidates if (c / "adapter_config.json").is_file()), None)
    if adapter is None:
        raise ConfigError(
            {
                "preference.init_adapter": f"{path} is neither a run folder with a saved adapter nor an "
                "adapter folder (no adapter_config.json)"
            }
        )
    if (path / "config.toml").is_file():
        try:
            source = RunFolder.open(path).config().model.source
        except LoraStudioError:
            source = None
        if source is not None and source != config.model.source:
            raise ConfigError(
                {
                    "preference.init_adapter": f"{path.name} trained model {source!r}, this run uses "
                    f"{config.model.source!r}; an adapter only fits the model it was trained on"
                }
            )
    return adapter


def wrap_with_lora(model: Any, config: RunConfig, *, initial_adapter: Path | None = None) -> Any:
    """peft wrapping exactly as the estimator assumes: k-bit preparation, then LoRA adapters.

    With ``initial_adapter`` the run continues training that adapter (its rank and layers, not the
    ``lora`` settings), as the usual SFT → DPO pipeline does.
    """
    from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training

    from lora_studio.core.models import model_construction

    gc = config.training.gradient_checkpointing
    if config.model.quantization != "none" and config.model.lean_kbit_prep:
        from lora_studio.core.train.memory_saving import lean_kbit_preparation

        model = lean_kbit_preparation(model, gradient_checkpointing=gc)
    elif config.model.quantization != "none":
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=gc, gradient_checkpointing_kwargs={"use_reentrant": False}
        )
    elif gc:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    if initial_adapter is not None:
        with model_construction():
            return PeftModel.from_pretrained(model, str(initial_adapter), is_trainable=True)
    lora = config.lora
    init: Any = {"default": True, "gaussian": "gaussian", "pissa": "pissa", "olora": "olora"}[lora.init]
    peft_config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        use_dora=lora.use_dora,
        use_rslora=lora.use_rslora,
        init_lora_weights=init,
        task_type="CAUSAL_LM",
    )
    try:
        with model_construction():
            return get_peft_model(model, peft_config)
    except ValueError as exc:
        if "not found in the base model" in str(exc) or "Target modules" in str(exc):
            names = sorted(linear_module_names(model))
            raise TrainingError(
                f"lora.target_modules: {lora.target_modules} does not match this model's layers",
                hint=f"choose from {', '.join(names)} or use 'all-linear'",
            ) from None
        raise


def linear_module_names(model: Any) -> set[str]:
    """The short names of the model's linear layers (what ``lora.target_modules`` may list)."""
    import torch

    names = set()
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) or type(module).__name__ in ("Linear4bit", "Linear8bitLt"):
            short = name.rsplit(".", 1)[-1]
            if short != "lm_head":
                names.add(short)
    return names


def generate_samples(
    model: Any,
    tokenizer: Any,
    prompts: list[str],
    config: RunConfig,
    *,
    progress: Any = None,
    cancel: threading.Event | None = None,
) -> list[tuple[str, str]]:
    """Greedy answers, rendered with the same template (or fallback template) as the training data.

    ``progress(index, tokens, text, done)`` hears each prompt start, each token and each finished
    answer: answering takes seconds on a GPU but minutes for a 4-bit model on a CPU, before the
    first step. Setting ``cancel`` ends the answer being written at its next token (the caller then
    stops the run); an answer cut short is left out."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class Watch(StoppingCriteria):
        def __init__(self, index: int, start: int) -> None:
            self.index, self.start = index, start

        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            if progress is not None:
                new = input_ids[0, self.start :]
                progress(self.index, int(new.shape[0]), tokenizer.decode(new, skip_special_tokens=True))
            stop = cancel is not None and cancel.is_set()
            return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)

    from lora_studio.core.data import chat_template_for

    template, _ = chat_template_for(tokenizer)
    was_training = model.training
    model.eval()
    answers = []
    try:
        for index, prompt in enumerate(prompts):
            if cancel is not None and cancel.is_set():
                break
            if progress is not None:
                progress(index, 0, "")
            messages = []
            if config.data.system_prompt:
                messages.append({"role": "system", "content": config.data.system_prompt})
            messages.append({"role": "user", "content": prompt})
            inputs = tokenizer.apply_chat_template(
                messages,
                chat_template=template,
                add_generation_prompt=True,
                return_tensors="pt",
                return_dict=True,
            )
            inputs = {k: v.to(model.device) for k, v in inputs.items()}
            with torch.no_grad():
                out = model.generate(
                    **inputs,
                    max_new_tokens=config.training.sample_max_new_tokens,
                    do_sample=False,
                    use_cache=True,
                    pad_token_id=tokenizer.pad_token_id,
                    stopping_criteria=StoppingCriteriaList([Watch(index, inputs["input_ids"].shape[1])]),
                )
            if cancel is not None and cancel.is_set():
                break  # an answer cut short is not the model's answer
            new_tokens = out[0][inputs["input_ids"].shape[1] :]
            answer = tokenizer.decode(new_tokens, skip_special_tokens=True).strip()
            answers.append((prompt, answer))
            if progress is not None:
                progress(index, int(new_tokens.shape[0]), answer, True)
    finally:
        model.train(was_training)
    return answers
