"""The work of one export, after planning: load once, write each format atomically, verify each.

``export`` plans and runs in one call (the CLI); ``run_export`` carries out a plan the GUI has
already shown. Kept apart from ``plan.py`` (what would be written, where, at what cost) so each
reads in one sitting. Every
format is written into a staging folder inside the output folder and renamed into place only when
complete; ``tick`` — called between files, shards and tensors — is where a cancel request stops
the work and where the ``export_fail`` fault strikes. The staging folder is always removed.
"""

from __future__ import annotations

import errno
import gc
import json
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from lora_studio.core.atomic import honour_umask
from lora_studio.core.errors import CancelledError, LoraStudioError
from lora_studio.core.export import plan as ex
from lora_studio.core.export.plan import plan_export, size_text
from lora_studio.core.export.types import (
    DEFAULT_QUANT,
    DEFAULT_SHARD_BYTES,
    STAGING_PREFIX,
    VERIFIERS,
    ExportError,
    ExportPlan,
    ExportProgress,
    ExportReport,
    ExportSource,
    FormatResult,
)
from lora_studio.core.export.verify import Reference, Verification
from lora_studio.core.faults import Fault, FaultSpec, parse_faults

DEFAULT_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"  # where the bundled default model comes from


class ExportJob:
    def __init__(
        self,
        plan: ExportPlan,
        *,
        verify: bool,
        cancel: threading.Event,
        emit: Callable[[ExportProgress], None],
        faults: dict[str, Fault],
        max_shard_bytes: int,
        verifier: str = "auto",
    ) -> None:
        self.plan = plan
        self.verifier = verifier
        self.src = plan.source
        self.verify = verify
        self.cancel = cancel
        self.emit = emit
        self.faults = faults
        self.max_shard_bytes = max_shard_bytes
        self.results: list[FormatResult] = []
        self.warnings: list[str] = []
        self.model: Any = None
        self.merged = False
        self.reference: Reference | None = None
        self.tokenizer: Any = None
        self.config: Any = None
        self._written = 0  # files/folders started, for the export_fail fault
        self._format = ""
        self._ticked = False
        self._facts: Any = None

    # -- the recipe -------------------------------------------------------------------------

    def run(self) -> tuple[str, list[FormatResult]]:
        out = self.plan.out_dir
        out.mkdir(parents=True, exist_ok=True)
        _clean_stale_staging(out)
        staging = _make_staging(out)
        status = "completed"
        try:
            self._load()
            for fmt in self.plan.formats:
                self._write(fmt, staging)
        except CancelledError:
            status = "cancelled"
        except Exception as exc:
            finished = [Path(r.path).name for r in self.results]
            raise _failure(self._format or "the export", exc, out, finished) from exc
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            self.model = None
            gc.collect()
        if status == "completed" and self.verify:
            status = self._verify_all()
        return status, self.results

    def _load(self) -> None:
        from lora_studio.core.export import verify as ver
        from lora_studio.core.models import load_config, quiet_library_defaults

        quiet_library_defaults()
        self.config = load_config(self.plan.base_path, trust_remote_code=self.src.trust_remote_code)
        self.tokenizer = ex.run_tokenizer(self.src, self.plan.base_path)
        if not (self.verify or {"merged", "gguf"} & set(self.plan.formats)):
            return
        self.emit(ExportProgress("load", f"loading {self.plan.base_name} (fp32) and the adapter"))
        base = ver.load_base(self.plan.base_path, trust_remote_code=self.src.trust_remote_code)
        self.model = ver.load_peft(base, self.src.adapter_dir)
        self.check_cancel()
        if self.verify:
            ids = ver.probe_ids(self.tokenizer)
            greedy, margins = (
                ver.greedy_tokens(self.model, ids)
                if {"gguf", "gguf-adapter"} & set(self.plan.formats)
                else ([], [])
            )
            self.reference = Reference(
                self.plan.base_path,
                self.src.adapter_dir,
                self.tokenizer,
                ids,
                ver.logits(self.model, ids),
                self.src.trust_remote_code,
                greedy,
                margins,
            )

    # -- writing ----------------------------------------------------------------------------

    def _write(self, fmt: str, staging: Path) -> None:
        from lora_studio.core.export import files
        from lora_studio.core.export import gguf as gg
        from lora_studio.core.export.modelfile import modelfile_text

        targets = self.plan.targets[fmt]
        if fmt == "adapter":
            card = files.model_card(self._card_facts(), "adapter")
            self._stage(
                fmt,
                targets[0],
                staging,
                lambda p, t: files.copy_adapter(
                    self.src.adapter_dir, p, card, t, tokenizer_dir=self.plan.base_path
                ),
            )
        elif fmt == "gguf-adapter":
            self._stage(
                fmt,
                targets[0],
                staging,
                lambda p, t: gg.write_adapter_gguf(
                    p, self.src.adapter_dir, self.config, name=self.src.name, tick=t
                ),
            )
        elif fmt == "merged":
            self._merge()
            card = files.model_card(self._card_facts(), "merged")
            self._stage(
                fmt,
                targets[0],
                staging,
                lambda p, t: files.write_merged(
                    p,
                    self.model,
                    self.tokenizer,
                    dtype=self.plan.dtype,
                    max_shard_bytes=self.max_shard_bytes,
                    tick=t,
                    card=card,
                ),
            )
        elif fmt == "gguf":
            self._merge()
            state = files.unique_state(self.model)
            for quant, target in zip(self.plan.quants, targets, strict=True):
                self._stage(
                    fmt,
                    target,
                    staging,
                    lambda p, t, q=quant: gg.write_model_gguf(
                        p,
                        state,
                        self.model.config,
                        self.tokenizer,
                        quant=q,
                        name=self.src.name,
                        tick=t,
                        source_gguf=self._source_gguf(),
                    ),
                )
            del state
        elif fmt == "modelfile":
            gguf_name = ex.gguf_name(self.src.name, self.plan.quants[0])
            text, notes = modelfile_text(gguf_name, self.src.name, self.tokenizer, self._system_prompt())

            def write(path: Path, tick: Callable[[int, int], None]) -> list[str]:
                path.write_text(text, encoding="utf-8")
                tick(1, 1)
                return notes

            self._stage(fmt, targets[0], staging, write)

    def _stage(
        self,
        fmt: str,
        target: Path,
        staging: Path,
        write: Callable[[Path, Callable[[int, int], None]], list[str]],
    ) -> None:
        """Write into staging, then rename into place; an older target is replaced only now."""
        from lora_studio.core.runs import replace_dir

        started = time.monotonic()
        self._written += 1
        self._format, self._ticked = fmt, False
        self.emit(ExportProgress("write", f"writing {target.name}", fmt))
        staged = staging / target.name
        notes = write(staged, self._tick) or []
        self.check_cancel()
        if target.exists() and not self.plan.overwrite:
            raise ExportError(f"{target}: appeared while exporting", hint="export again with --overwrite")
        if staged.is_dir():
            replace_dir(staged, target)
        else:
            honour_umask(staged)
            os.replace(staged, target)
        size = _size_of(target)
        self.results.append(FormatResult(fmt, str(target), size, time.monotonic() - started, notes))
        self.emit(ExportProgress("write", f"wrote {target.name} ({ex.size_text(size)})", fmt))

    def _tick(self, done: int, total: int) -> None:
        self.check_cancel()
        if not self._ticked and _injected(self.faults, self._written):
            raise OSError(5, f"Input/output error (injected fault while writing {self._format})")
        self._ticked = True
        self.emit(ExportProgress("write", f"{self._format}: {done}/{total}", self._format, done, total))

    def _merge(self) -> None:
        if self.merged:
            return
        self.emit(ExportProgress("merge", "merging the adapter into the base weights (fp32)"))
        self.model = self.model.merge_and_unload()
        self.merged = True
        self.check_cancel()

    def check_cancel(self) -> None:
        if self.cancel.is_set():
            raise CancelledError("Export cancelled")

    # -- verification -----------------------------------------------------------------------

    def _verify_all(self) -> str:
        from lora_studio.core.export import verify as ver
        from lora_studio.core.export.modelfile import verify_modelfile

        assert self.reference is not None
        quants = dict(zip(map(str, self.plan.targets.get("gguf", [])), self.plan.quants, strict=False))
        for result in self.results:
            if self.cancel.is_set():
                return "cancelled"
            path = Path(result.path)
            self.emit(ExportProgress("verify", f"verifying {path.name}", result.format))
            try:
                if result.format == "adapter":
                    check = ver.verify_adapter(path, self.reference)
                elif result.format == "merged":
                    check = ver.verify_merged(path, self.reference, self.plan.dtype)
                elif result.format == "gguf":
                    check = ver.verify_gguf(path, self.reference, quants[result.path], self.verifier)
                elif result.format == "gguf-adapter":
                    check = self._verify_adapter_gguf(path)
                else:
                    check = verify_modelfile(path, self.tokenizer)
            except LoraStudioError as exc:
                check = Verification(False, "reload", {}, [f"could not be reloaded: {exc}"])
            except Exception as exc:
                check = Verification(
                    False, "reload", {}, [f"could not be reloaded: {type(exc).__name__}: {exc}"]
                )
            result.verification = check
            gc.collect()
            verdict = "passed" if check.passed else "FAILED: " + "; ".join(check.problems)
            self.emit(ExportProgress("verify", f"{path.name}: {verdict}", result.format))
        return "completed"

    def _verify_adapter_gguf(self, path: Path) -> Verification:
        """llama.cpp applies the adapter to a base GGUF — the one the base model came from, else an
        F16 GGUF of the base written for the check — and must answer like the merged model."""
        from lora_studio.core.export import verify as ver

        reference = self.reference
        assert reference is not None
        return ver.choose_verifier(
            self.verifier,
            lambda: self._adapter_in_llama_cpp(path),
            lambda: ver.verify_adapter_gguf(path, reference, self.config),
        )

    def _adapter_in_llama_cpp(self, path: Path) -> Verification:
        from lora_studio.core.export import files
        from lora_studio.core.export import gguf as gg
        from lora_studio.core.export import verify as ver

        assert self.reference is not None
        source = self._source_gguf()
        if source is not None and source.is_file():
            # the base weights were dequantized from this file, so only llama.cpp's 8-bit rounding
            # of the activations differs from the reference
            return ver.verify_gguf_llamacpp(
                source, self.reference, "quantized-base", lora=path, what=f"adapter applied to {source.name}"
            )
        scratch = _make_staging(self.plan.out_dir)
        try:
            base = ver.load_base(self.plan.base_path, trust_remote_code=self.src.trust_remote_code)
            base_gguf = scratch / "base-f16.gguf"
            gg.write_model_gguf(
                base_gguf,
                files.unique_state(base),
                base.config,
                self.tokenizer,
                quant="f16",
                name="base",
                tick=lambda *_: self.check_cancel(),
            )
            del base
            gc.collect()
            return ver.verify_gguf_llamacpp(
                base_gguf, self.reference, "f16", lora=path, what="adapter applied to an F16 GGUF of the base"
            )
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    # -- facts ------------------------------------------------------------------------------

    def _source_gguf(self) -> Path | None:
        marker = self.plan.base_path / "lora_studio_source.json"
        try:
            return Path(json.loads(marker.read_text(encoding="utf-8"))["gguf"])
        except (OSError, KeyError, ValueError):
            return None

    def _run_config(self) -> Any:
        from lora_studio.core.config import RunConfig

        run = self.src.run_dir
        return RunConfig.load(run / "config.toml") if run is not None else None

    def _system_prompt(self) -> str | None:
        config = self._run_config()
        return config.data.system_prompt if config is not None else None

    def _card_facts(self) -> Any:
        if self._facts is None:
            self._facts = self._gather_facts()
        return self._facts

    def _gather_facts(self) -> Any:
        from lora_studio.core.export.files import CardFacts, method_summary
        from lora_studio.core.runs import RunFolder

        settings = ex.adapter_settings(self.src.adapter_dir)
        params = sum(ex.numel(s) for s in ex.weight_shapes(self.plan.base_path).values())
        facts = CardFacts(
            name=self.src.name,
            base_model=self.src.base_model,
            base_name=self.plan.base_name,
            base_path=str(self.plan.base_path),
            architecture=(getattr(self.config, "architectures", None) or ["?"])[0],
            parameters=params,
            adapter_settings=settings,
            checkpoint_step=self.src.checkpoint_step,
        )
        facts.adapted_layers = sorted(
            {k.split(".lora_")[0] for k in ex.weight_shapes(self.src.adapter_dir) if ".lora_A" in k}
        )
        if self.plan.base_kind == "default":
            facts.hub_id = DEFAULT_HUB_ID
        source_gguf = self._source_gguf()
        if source_gguf is not None:
            facts.base_note = (
                f"the base weights were dequantized from {source_gguf.name}; for identical results load "
                "this adapter on those weights (LoRA Studio caches them as a safetensors folder)"
            )
        if self.src.run_dir is None:
            return facts
        run = RunFolder(self.src.run_dir)
        config = run.config()
        metrics = run.metrics()
        if self.src.checkpoint_step is not None:
            metrics = [m for m in metrics if int(m.get("step", 0)) <= self.src.checkpoint_step]
        facts.run_id = run.run_id
        facts.status = run.status()
        facts.config_toml = run.config_path.read_text(encoding="utf-8")
        facts.dataset = config.data.path
        facts.method = method_summary(config)
        facts.final_loss = next((m["loss"] for m in reversed(metrics) if m.get("loss") is not None), None)
        facts.final_eval_loss = next(
            (m["eval_loss"] for m in reversed(metrics) if m.get("eval_loss") is not None), None
        )
        facts.samples = run.samples() if self.src.checkpoint_step is None else []
        facts.dataset_records = _record_count(config.data)
        return facts


def _record_count(data: Any) -> int | None:
    """Records in the training data, read the way training read them; None when it cannot be read now."""
    try:
        from lora_studio.core.data import scan_conversations

        _, report = scan_conversations(data)
        return int(report.records)
    except Exception:  # the dataset may have moved since training; the card says "size unknown"
        return None


def _size_of(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _failure(fmt: str, exc: BaseException, out: Path, finished: list[str]) -> LoraStudioError:
    """A write failure as one clear message: what failed, why, and what is (not) on disk."""
    if isinstance(exc, LoraStudioError):
        return exc
    done = f"; finished before it: {', '.join(finished)}" if finished else ""
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return ExportError(
            f"Disk full while writing {fmt} to {out}",
            hint=f"free some space and export again; nothing of {fmt} was left behind{done}",
        )
    if isinstance(exc, MemoryError):
        return ExportError(f"Out of memory while writing {fmt}", hint="close other programs and try again")
    return ExportError(
        f"Export of {fmt} failed: {type(exc).__name__}: {exc}",
        hint=f"check that {out} can be written to, then export again (nothing of {fmt} was left there{done})",
    )


def _injected(faults: dict[str, Fault], index: int) -> bool:
    """Whether the ``export_fail`` fault is set for the ``index``-th file or folder being written."""
    fault = faults.get("export_fail")
    return fault is not None and fault.step == index


def _clean_stale_staging(out: Path) -> None:
    """Remove staging folders left by export processes that died (their PID is in the name)."""
    import psutil

    for folder in out.glob(f"{STAGING_PREFIX}*.partial"):
        match = re.match(rf"{re.escape(STAGING_PREFIX)}(\d+)-", folder.name)
        if match and not psutil.pid_exists(int(match.group(1))):
            shutil.rmtree(folder, ignore_errors=True)


def _make_staging(out: Path) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-", suffix=".partial", dir=out))


# -- the export ---------------------------------------------------------------------------------


def export(
    source: str | os.PathLike[str] | ExportSource,
    formats: str | Iterable[str],
    out_dir: str | os.PathLike[str],
    *,
    model: str | None = None,
    dtype: str = "auto",
    quant: str | Iterable[str] = DEFAULT_QUANT,
    overwrite: bool = False,
    verify: bool = True,
    verifier: str = "auto",
    cancel: threading.Event | None = None,
    progress: Callable[[ExportProgress], None] | None = None,
    faults: FaultSpec = None,
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
) -> ExportReport:
    """Plan, write every format atomically, then verify each by reloading it (unless ``verify=False``).

    Returns a report with status "completed" or "cancelled" (formats finished before the cancel are
    listed and complete). Raises :class:`ExportError` (or another project error) when the export
    cannot start or a write fails; a failed verification is reported, not raised — the files stay.
    ``verifier`` chooses who checks GGUF files: "auto" (llama.cpp when installed and working, else
    transformers' GGUF loader), "llama.cpp" (fail the check without it) or "transformers".
    ``faults`` is a test seam only (``core/faults.py``: ``export_fail``, ``low_disk``).
    """
    started = time.monotonic()
    _safe(progress)(ExportProgress("plan", "checking the source, targets, disk space and memory"))
    plan = plan_export(
        source,
        formats,
        out_dir,
        model=model,
        dtype=dtype,
        quant=quant,
        overwrite=overwrite,
        verify=verify,
        faults=faults,
        max_shard_bytes=max_shard_bytes,
    )
    return run_export(
        plan,
        verify=verify,
        verifier=verifier,
        cancel=cancel,
        progress=progress,
        faults=faults,
        max_shard_bytes=max_shard_bytes,
        started=started,
    )


def run_export(
    plan: ExportPlan,
    *,
    verify: bool = True,
    verifier: str = "auto",
    cancel: threading.Event | None = None,
    progress: Callable[[ExportProgress], None] | None = None,
    faults: FaultSpec = None,
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
    started: float | None = None,
) -> ExportReport:
    """Carry out a plan from :func:`plan_export` — for a GUI that shows the plan (sizes, memory,
    what would be replaced) and asks before starting."""
    started = time.monotonic() if started is None else started
    if verifier not in VERIFIERS:
        raise ExportError(f"unknown verifier '{verifier}'", hint=f"choose {', '.join(VERIFIERS)}")
    emit = _safe(progress)
    memory = f", peak memory about {size_text(plan.peak_memory)}" if plan.peak_memory else ""
    disk = f"needs {size_text(plan.disk_needed)} of disk ({size_text(plan.disk_free)} free)"
    emit(ExportProgress("plan", f"{', '.join(plan.formats)} → {plan.out_dir}: {disk}{memory}"))
    job = ExportJob(
        plan,
        verify=verify,
        cancel=cancel or threading.Event(),
        emit=emit,
        faults=parse_faults(faults),
        max_shard_bytes=max_shard_bytes,
        verifier=verifier,
    )
    status, results = job.run()
    report = ExportReport(status, plan, results, time.monotonic() - started, plan.warnings + job.warnings)
    emit(ExportProgress("done", f"export {status} in {report.seconds:.0f} s"))
    return report


def _safe(progress: Callable[[ExportProgress], None] | None) -> Callable[[ExportProgress], None]:
    """A listener that raises must not lose the user's export."""

    def emit(event: ExportProgress) -> None:
        if progress is None:
            return
        try:
            progress(event)
        except Exception:  # pragma: no cover - a broken listener
            import logging

            logging.getLogger(__name__).exception("export progress listener failed")

    return emit
