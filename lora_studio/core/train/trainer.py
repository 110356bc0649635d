"""The part of the engine that talks to ``transformers.Trainer``.

We do not write a training loop: the Trainer runs it. This module adds only what a desktop app
needs on top — events from its callbacks, cancellation at step boundaries, non-padding token
counts without device synchronisation, NaN detection, atomic checkpoints, and fault injection —
and is imported lazily because it imports torch and transformers.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_callback import PrinterCallback
from transformers.trainer_pt_utils import LengthGroupedSampler

from lora_studio.core.data import collate_preferences, make_collator
from lora_studio.core.errors import TrainingError
from lora_studio.core.faults import due, hold
from lora_studio.core.models import count_parameters
from lora_studio.core.runs import replace_dir
from lora_studio.core.train import events as ev
from lora_studio.core.train.distributed import any_rank, sum_ranks
from lora_studio.core.train.monitor import MemorySampler

if TYPE_CHECKING:
    import threading

    from lora_studio.core.config import RunConfig
    from lora_studio.core.data import PreparedDataset
    from lora_studio.core.faults import Fault
    from lora_studio.core.runs import RunFolder
    from lora_studio.core.train.distributed import World

NAN_HINT = (
    "lower training.learning_rate (e.g. divide it by 10), keep max_grad_norm at 1.0, and prefer "
    "bf16 or fp32 over fp16 (model.compute_dtype)"
)
_TOKENS_KEY = "_lora_studio_tokens"


class TrainingRun(Protocol):
    """What ``fit`` needs of the engine's run (``engine.TrainingRun`` is the one implementation).

    Written out here so that the loop depends on the engine's shape, not on its module: the engine
    imports this one, never the other way round.
    """

    config: RunConfig
    folder: RunFolder | None
    resuming: bool
    model: Any
    tokenizer: Any
    data: PreparedDataset
    info: Any
    device: Any
    dtype: Any
    four_bit: Any
    world: World
    faults: dict[str, Fault]
    cancel: threading.Event
    pause: threading.Event
    lock: threading.Lock
    step: int
    current_step: int

    def emit(self, event: ev.Event) -> None: ...

    def wait_while_paused(self) -> None: ...


def fit(run: TrainingRun) -> dict[str, Any]:
    """Train ``run.model`` on ``run.data``; returns ``{"cancelled": bool}``."""
    cfg = run.config
    assert run.folder is not None
    args = training_arguments(run)
    callback = _EngineCallback(run)
    method = cfg.training.method
    if method == "sft":
        collator = make_collator(run.tokenizer, packing=cfg.data.packing)
    else:
        collator = collate_preferences(method, run.tokenizer.pad_token_id, cfg.data.max_seq_len)
    trainer = trainer_class(method)(
        run=run,
        model=run.model,
        args=args,
        train_dataset=run.data.train,
        eval_dataset=run.data.eval,
        data_collator=_CountingCollator(collator),
        processing_class=run.tokenizer,
        callbacks=[callback],
    )
    callback.step_tokens = trainer.step_tokens
    trainer.remove_callback(PrinterCallback)  # our events replace its printed dicts
    resume_from = None
    if run.resuming:
        step, checkpoint = run.folder.latest_checkpoint()  # type: ignore[misc]
        run.folder.truncate_metrics(step)
        previous = [m for m in run.folder.metrics() if m.get("tokens_seen") is not None]
        callback.tokens_seen = int(previous[-1]["tokens_seen"]) if previous else 0
        callback.resumed_from = step
        run.step = step
        resume_from = str(checkpoint)
    trainer.train(resume_from_checkpoint=resume_from)
    if callback.nan_step is not None:
        raise TrainingError(
            f"The loss became {callback.nan_value} at step {callback.nan_step}; training stopped",
            hint=NAN_HINT,
        )
    cancelled = any_rank(run.cancel.is_set())
    if cancelled:
        run.cancel.set()  # the other ranks stopped because rank 0 did: they end the same way
    if run.data.eval is not None and not cancelled and callback.last_eval_step != run.step:
        trainer.evaluate()
    return {"cancelled": cancelled}


def training_arguments(run: TrainingRun) -> TrainingArguments:
    cfg, t = run.config, run.config.training
    assert run.folder is not None
    has_eval = run.data.eval is not None
    eval_steps = t.eval_steps or t.save_steps
    on_cuda = run.device.startswith("cuda")
    arguments_class, method_settings = method_arguments(cfg)
    return arguments_class(
        **method_settings,
        output_dir=str(run.folder.checkpoints_dir),
        num_train_epochs=t.epochs,
        max_steps=t.max_steps or -1,
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.scheduler,
        warmup_steps=t.warmup_steps if t.warmup_steps > 0 else t.warmup_ratio,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.grad_accum,
        optim=t.optimizer,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        gradient_checkpointing=False,  # enabled by wrap_with_lora, the way peft needs it
        # what TRL re-enables it with after a reference forward: the same kind wrap_with_lora chose
        gradient_checkpointing_kwargs={"use_reentrant": False},
        seed=t.seed,
        data_seed=t.seed,
        logging_steps=t.logging_steps,
        logging_nan_inf_filter=False,  # a NaN must reach us, not be averaged away
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=eval_steps if has_eval else None,
        report_to="none",
        disable_tqdm=True,
        remove_unused_columns=False,
        train_sampling_strategy="group_by_length"
        if cfg.data.group_by_length and not cfg.data.packing
        else "random",
        length_column_name="length",
        dataloader_num_workers=0,
        use_cpu=not on_cuda,
        ddp_find_unused_parameters=False,  # every trainable (LoRA) parameter is used in each step
        bf16=on_cuda and run.dtype == torch.bfloat16,
        fp16=on_cuda and run.dtype == torch.float16,
    )


def method_arguments(cfg: RunConfig) -> tuple[type[TrainingArguments], dict[str, Any]]:
    """The arguments class of the method's TRL trainer and the method's own settings.

    ``max_length`` is left unset: the data are already cut to ``data.max_seq_len`` (each side of a
    pair on its own), so TRL never cuts again. Dropout is turned off for the preference methods, as
    TRL does by default: the policy and the reference must score the same answer the same way.
    """
    method, p = cfg.training.method, cfg.preference
    if method == "sft":
        return TrainingArguments, {}
    if method == "dpo":
        from trl import DPOConfig

        return DPOConfig, {
            "beta": p.beta,
            # RPO: the supervised loss on the chosen answers beside the preference loss
            "loss_type": [p.loss_type, "sft"] if p.sft_weight > 0 else [p.loss_type],
            "loss_weights": [1.0, p.sft_weight] if p.sft_weight > 0 else None,
            "label_smoothing": p.label_smoothing,
            "max_length": None,
            "disable_dropout": True,
            "precompute_ref_log_probs": False,
        }
    if method == "kto":
        from trl import KTOConfig

        return KTOConfig, {
            "beta": p.beta,
            "desirable_weight": p.desirable_weight,
            "undesirable_weight": p.undesirable_weight,
            "max_length": None,
            "disable_dropout": True,
        }
    if method == "orpo":
        from trl.experimental.orpo import ORPOConfig

        return ORPOConfig, {"beta": p.beta, "max_length": cfg.data.max_seq_len, "disable_dropout": True}
    if method == "simpo":
        from trl.experimental.cpo import CPOConfig

        return CPOConfig, {
            "loss_type": "simpo",
            "cpo_alpha": 0.0,
            "beta": p.beta,
            "simpo_gamma": p.simpo_gamma,
            "max_length": cfg.data.max_seq_len,
            "disable_dropout": True,
        }
    raise ValueError(f"unknown training.method {method!r}")


def trainer_class(method: str) -> type[Trainer]:
    """Our trainer for a method: the app's additions (:class:`_StudioMixin`) on the method's trainer."""
    if method == "sft":
        return _StudioTrainer
    if method == "dpo":
        from trl import DPOTrainer as base
    elif method == "kto":
        from trl import KTOTrainer as base
    elif method == "orpo":
        from trl.experimental.orpo import ORPOTrainer as base
    else:
        from trl.experimental.cpo import CPOTrainer as base
    return type(f"_Studio{base.__name__}", (_PreferenceMixin, _StudioMixin, base), {})


class _CountingCollator:
    """Counts each batch's real (non-padding) tokens while it is still a Python list: no sync."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        tokens = sum(f["length"] if "length" in f else len(f["input_ids"]) for f in features)
        stripped = [{k: v for k, v in f.items() if k != "length"} for f in features]
        batch = self.inner(stripped)
        batch[_TOKENS_KEY] = tokens
        return batch


class SeededLengthGroupedSampler(LengthGroupedSampler):
    """transformers' length-grouped order, as a function of (seed, epoch) alone.

    The stock sampler draws each epoch's order from torch's global generator as the epoch starts.
    A run resumed mid-epoch builds that epoch's order in a fresh process, before the checkpoint's
    generator state is restored (that happens after the skipped batches), so from the second epoch
    on it trained on other batches than the run it continues: the resumed loss curve left the
    uninterrupted one (by 0.017 in a loss of 10 at the first step after resuming from step 8 of
    6-step epochs).
    Seeded per epoch, the order is the same in every process, resumed or not, and on every rank.
    """

    def __init__(self, *args: Any, seed: int, **kwargs: Any) -> None:
        super().__init__(*args, generator=torch.Generator(), **kwargs)
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:  # called by accelerate's data loader each epoch
        self.epoch = int(epoch)

    def __iter__(self) -> Any:
        self.generator.manual_seed(self.seed + self.epoch)
        return super().__iter__()


class _StudioMixin:
    """What the app adds to whichever trainer runs the method: events, cancel, pause, atomic checkpoints."""

    def __init__(self, *args: Any, run: TrainingRun, **kwargs: Any) -> None:
        self._run = run
        self.step_tokens: deque[int] = deque()
        super().__init__(*args, **kwargs)

    def _get_train_sampler(self, train_dataset: Any = None) -> Any:
        sampler = super()._get_train_sampler(train_dataset)
        if type(sampler) is LengthGroupedSampler:
            seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
            sampler = SeededLengthGroupedSampler(sampler.batch_size, lengths=sampler.lengths, seed=seed)
        return sampler

    def training_step(self, model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None) -> Any:
        self.step_tokens.append(int(inputs.pop(_TOKENS_KEY, 0)))
        step = self.state.global_step + 1
        self._run.current_step = step
        if self._run.four_bit is not None:
            self._run.four_bit.restore()  # after samples or chat in eval mode
        faults = self._run.faults
        if due(faults, "oom", step):
            raise torch.OutOfMemoryError("CUDA out of memory (injected fault)")
        if due(faults, "error", step):
            raise RuntimeError("injected fault during a training step")
        with self._run.lock:
            loss = super().training_step(model, inputs, num_items_in_batch)
        if due(faults, "nan", step):
            loss = loss * float("nan")
        return loss

    def compute_loss(
        self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
    ) -> Any:
        """The chunked loss where it applies (exact), else the Trainer's own; optionally offloaded."""
        from lora_studio.core.train.memory_saving import chunked_forward_loss, offload_context

        t = self._run.config.training
        chunked = (
            t.chunked_loss and not return_outputs and not self._run.world.distributed and "labels" in inputs
        )
        savers = self._run.savers
        with offload_context(bool(savers and savers.offload) and model.training):
            if chunked:
                # The decoder is called directly, outside accelerate's autocast wrapper of
                # model.forward: apply the same mixed precision, as the standard loss gets it.
                # Without it peft's adapters run and save their inputs in fp32 (5 bytes per input
                # element with dropout instead of 3): +18 GB for an 8B model at 4k tokens without
                # checkpointing. The estimator models this (Plan.autocast).
                with self.accelerator.autocast():
                    return chunked_forward_loss(model, inputs, num_items_in_batch)
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    def prediction_step(self, model: Any, inputs: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        inputs.pop(_TOKENS_KEY, None)
        return super().prediction_step(model, inputs, *args, **kwargs)

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        """Write the checkpoint into a staging folder, then rename it in: never a half checkpoint.

        Every process writes into it (each its own RNG state), so under multi-process training only
        the main one clears and renames it, each time after all have arrived: a rank that cleared or
        renamed the folder while another still wrote to it failed the run ("No such file or
        directory" from safetensors, seen once in CI under ``accelerate launch``).
        """
        final_root = self.args.output_dir
        staging_root = os.path.join(final_root, ".staging")
        main = self._run.world.is_main
        if main:
            shutil.rmtree(staging_root, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        self.args.output_dir = staging_root
        step = self.state.global_step
        try:
            fault = due(self._run.faults, "checkpoint_pause", step)
            if due(self._run.faults, "disk_full", step):
                raise OSError(28, "No space left on device (injected fault)")
            super()._save_checkpoint(model, trial)
            if fault:
                hold(fault, f"inside the write of checkpoint {step}")  # a test kills it here, mid-write
        finally:
            self.args.output_dir = final_root
        self.accelerator.wait_for_everyone()
        if main:
            name = f"checkpoint-{step}"
            replace_dir(Path(staging_root) / name, Path(final_root) / name)
            shutil.rmtree(staging_root, ignore_errors=True)
            assert self._run.folder is not None
            for _, old in self._run.folder.checkpoints()[: -self.args.save_total_limit]:
                shutil.rmtree(old, ignore_errors=True)
        self.accelerator.wait_for_everyone()


class _StudioTrainer(_StudioMixin, Trainer):
    """Supervised fine-tuning: transformers' Trainer with the app's additions."""


class _PreferenceMixin:
    """Fits TRL's preference trainers to the app: our tokenized rows, our LoRA model, one base copy.

    TRL tokenizes raw rows itself; ours arrive tokenized with their loss masks (the Data page shows
    exactly those), so its dataset preparation is skipped. Given a PEFT model, TRL copies the
    adapter as a frozen "ref" adapter for the reference. That copy is what the reference must be
    when the run starts from an earlier adapter (``preference.init_adapter``) or when PiSSA/OLoRA
    moved part of the base weights into the adapter; otherwise a new adapter adds exactly zero, so
    the copy is dropped and the reference is the base with the adapter switched off — no copy at
    all. TRL also casts a quantized model's adapter to bf16; it is put back to the precision the
    supervised runs train in, which the estimator and run comparisons assume.
    """

    def __init__(self, *args: Any, run: TrainingRun, **kwargs: Any) -> None:
        model, arguments = kwargs["model"], kwargs["args"]
        dtypes = {n: p.dtype for n, p in model.named_parameters() if p.requires_grad}
        # KTO insists on file order because TRL pairs each prompt with its neighbour's answer when it
        # prepares the data; our collator pairs them within each batch, so any order keeps the pairing
        strategy = arguments.train_sampling_strategy
        if run.config.training.method == "kto":
            arguments.train_sampling_strategy = "sequential"
        super().__init__(*args, run=run, **kwargs)
        arguments.train_sampling_strategy = strategy
        self.use_dpo_data_collator = True  # ORPO/CPO: our batches have the keys theirs would have
        for name, param in model.named_parameters():
            if name in dtypes and param.dtype != dtypes[name]:
                param.data = param.data.to(dtypes[name])
        if "ref" in getattr(model, "peft_config", {}):
            if reference_needs_adapter(run.config):
                for name, param in model.named_parameters():
                    if ".ref." in name:
                        param.requires_grad_(False)
            else:
                model.delete_adapter("ref")
                model.set_adapter("default")

    def _prepare_dataset(self, dataset: Any, *args: Any, **kwargs: Any) -> Any:  # DPO, KTO
        return dataset

    def tokenize_row(self, feature: dict[str, Any], model: Any = None) -> dict[str, Any]:  # ORPO, CPO
        return feature


def reference_needs_adapter(config: RunConfig) -> bool:
    """Whether the reference is base + an adapter (an earlier run's, or PiSSA/OLoRA's start), not the base."""
    return bool(config.preference.init_adapter) or config.lora.init in ("pissa", "olora")


class _EngineCallback(TrainerCallback):
    def __init__(self, run: TrainingRun) -> None:
        self.run = run
        self.sampler = MemorySampler(run.device)
        self.tokens_seen = 0
        self._tokens_before = 0  # tokens already summed over ranks
        self.resumed_from = 0
        self.nan_step: int | None = None
        self.nan_value = ""
        self.last_eval_step = -1
        # times on the run's clock (run.clock), which stands still while paused: a paused minute is
        # neither a slow step in the Speed plot nor in the ETA
        self._t0 = 0.0  # when this session's first step began
        self._last_t = 0.0
        self._last_tokens = 0
        self._pause_after_log = False  # a pause asked for at a logged step waits until it is logged
        self.step_tokens: deque[int] = deque()  # replaced by the trainer's own queue

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        run = self.run
        assert run.folder is not None
        self._t0 = self._last_t = run.clock.elapsed()
        self._last_tokens = self._tokens_before = self.tokens_seen
        model = run.model
        trainable = count_parameters(model, trainable_only=True)
        total = count_parameters(model)  # 4-bit weights as the weights they stand for
        run.write_status("running", step=state.global_step, total_steps=state.max_steps)
        run.emit(
            ev.RunStarted(
                run_id=run.folder.run_id,
                run_dir=str(run.folder.path),
                config=run.config.to_dict(),
                model=run.info.to_dict(),
                dataset=run.data.stats.to_dict(),
                trainable_params=trainable,
                total_params=total,
                total_steps=state.max_steps,
                device=run.device,
                dtype=str(run.dtype).removeprefix("torch."),
                resumed_from_step=self.resumed_from,
                world_size=run.world.size,
                global_batch=args.per_device_train_batch_size
                * args.gradient_accumulation_steps
                * run.world.size,
            )
        )

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.run.step = state.global_step
        while self.step_tokens:
            self.tokens_seen += self.step_tokens.popleft()
        if control.should_log and not self.run.world.distributed:
            # hold after this step's point is logged: the plots, progress bar and status.json then
            # all say the step the run is paused at
            self._pause_after_log = True
        else:
            self.run.wait_while_paused()
        if any_rank(self.run.cancel.is_set()):  # rank 0's stop is every rank's stop
            control.should_training_stop = True
            control.should_save = True  # a cancelled run can be resumed from exactly here

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any
    ) -> None:
        run = self.run
        assert run.folder is not None
        logs = logs or {}
        now = time.time()
        if "eval_loss" in logs:
            self.last_eval_step = state.global_step
            held_out = preference_metrics(logs, "eval_")
            run.folder.append_metrics(
                {
                    "step": state.global_step,
                    "eval_loss": _finite(logs["eval_loss"]),
                    **{f"eval_{k}": v for k, v in held_out.items()},
                    "t": now,
                }
            )
            run.emit(ev.Evaluation(state.global_step, float(logs["eval_loss"]), held_out))
            return
        if "loss" not in logs:
            return
        loss = float(logs["loss"])
        if not math.isfinite(loss):
            self.nan_step, self.nan_value = state.global_step, str(loss)
            control.should_training_stop = True
            control.should_save = False
            return
        self.tokens_seen = self._tokens_before + sum_ranks(self.tokens_seen - self._tokens_before)
        self._tokens_before = self.tokens_seen
        now_s = run.clock.elapsed()
        interval = max(now_s - self._last_t, 1e-9)
        tokens_per_s = (self.tokens_seen - self._last_tokens) / interval
        self._last_t, self._last_tokens = now_s, self.tokens_seen
        done = state.global_step - self.resumed_from
        training = now_s - self._t0  # this session's steps: loading and sample answers are done
        remaining = state.max_steps - state.global_step
        eta = training / done * remaining if done > 0 else None
        mem = self.sampler.sample()
        grad_norm = logs.get("grad_norm")
        preference = preference_metrics(logs)
        record = {
            "step": state.global_step,
            "epoch": round(float(state.epoch or 0), 4),
            "loss": loss,
            "lr": float(logs.get("learning_rate", 0.0)),
            "grad_norm": _finite(grad_norm),
            "tokens_per_s": round(tokens_per_s, 2),
            "tokens_seen": self.tokens_seen,
            "elapsed_s": round(now_s, 3),
            "mem": mem,
            **preference,
            "t": now,
        }
        run.folder.append_metrics(record)
        run.write_status("running", step=state.global_step, total_steps=state.max_steps)
        run.emit(
            ev.Step(
                step=state.global_step,
                total_steps=state.max_steps,
                epoch=record["epoch"],
                loss=loss,
                learning_rate=record["lr"],
                grad_norm=record["grad_norm"],
                tokens_per_s=tokens_per_s,
                tokens_seen=self.tokens_seen,
                elapsed_s=now_s,
                eta_s=eta,
                mem=mem,
                preference=preference,
            )
        )
        fault = due(run.faults, "step_pause", state.global_step)
        if fault:  # a test kills, stops or pauses the run here: at this step, however fast it trains
            hold(
                fault,
                f"after step {state.global_step}",
                until=lambda: run.cancel.is_set() or run.pause.is_set(),
            )
        if self._pause_after_log:
            self._pause_after_log = False
            run.wait_while_paused()
        if run.cancel.is_set() and not run.world.distributed:  # stop before the next step starts
            control.should_training_stop = True
            control.should_save = True

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        run = self.run
        assert run.folder is not None
        path = run.folder.checkpoints_dir / f"checkpoint-{state.global_step}"
        run.emit(ev.CheckpointSaved(state.global_step, str(path)))


#: TRL's logged names → ours (metrics.jsonl, events, plots).
PREFERENCE_METRICS = {
    "rewards/chosen": "reward_chosen",
    "rewards/rejected": "reward_rejected",
    "rewards/margins": "reward_margin",
    "rewards/accuracies": "reward_accuracy",
    "kl": "kl",
}


def preference_metrics(logs: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The preference trainers' reward statistics in a log record, under our names (finite only)."""
    found = {}
    for theirs, ours in PREFERENCE_METRICS.items():
        value = _finite(logs.get(prefix + theirs))
        if value is not None:
            found[ours] = value
    return found


def _finite(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None
