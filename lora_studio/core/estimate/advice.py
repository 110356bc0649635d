"""The estimate with its verdict and advice: what to change when a run does not fit.

Advice answers the two questions a user has in front of a memory bar: "how far can I push batch
size and sequence length?" and "which one change gets me under the limit, and by how much?".
Each candidate change is re-estimated (arithmetic only), so the savings shown are the estimator's own.

For the preference methods the batch counts pairs (DPO, ORPO, SimPO: two sequences each) or KTO's
answers (at least 2: its KL term pairs each prompt with another row's answer); the chunked loss is
the SFT loss only (TRL computes the preference losses); and the method itself is a lever: DPO's
log-probabilities come from a fused head in tiles, while ORPO and SimPO skip the reference forward
but build full fp32 logits.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from lora_studio.core.config import PAIR_METHODS
from lora_studio.core.estimate.analytic import estimate_plan
from lora_studio.core.estimate.request import (
    METHOD_NAMES,
    SAVER_NAMES,
    SAVERS,
    EstimateRequest,
    MemoryEstimate,
    Plan,
    gb,
    with_savers,
)
from lora_studio.core.estimate.savers import plan_for

MAX_BATCH = 4096


def estimate_memory(req: EstimateRequest) -> MemoryEstimate:
    """The analytic estimate with verdict and advice (advice only when the device memory is known)."""
    plan = plan_for(req)
    estimate = estimate_plan(plan, req.vram_bytes)
    if estimate.device_bytes is None:
        return estimate
    return replace(estimate, advice=advise(req, plan, estimate))


def advise(req: EstimateRequest, plan: Plan, estimate: MemoryEstimate) -> list[str]:
    """The largest batch size and sequence length that fit, and the single changes that help.

    The verdict itself is ``estimate.fits`` (the CLI and the GUI word it themselves).
    """
    limit = estimate.device_bytes or 0
    total = estimate.total_bytes

    def total_for(candidate: Plan) -> int:
        return estimate_plan(candidate).total_bytes

    lines: list[str] = []
    low = _smallest_batch(plan)

    # a larger batch or a longer sequence turns on the savers set to "auto" as it needs them
    # (re-decided for each candidate: padded rows make chunked attention apply)
    def with_auto(candidate: Plan) -> Plan:
        return with_savers(candidate, plan.auto_settings)

    auto = with_auto(plan)
    batch = _largest(
        lambda b: total_for(with_auto(replace(plan, batch_size=b))) <= limit, MAX_BATCH, lowest=low
    )
    pairs = plan.method in PAIR_METHODS
    if batch:
        counted = f"{batch} pair{'s' if batch > 1 else ''} ({2 * batch} sequences)" if pairs else f"{batch}"
        needed = _auto_needed(replace(plan, batch_size=batch), limit)
        how = f" ('auto' turns on {', '.join(needed)})" if needed else ""
        lines.append(f"Largest batch size that fits at sequence length {plan.seq_len:,}: {counted}{how}.")
    else:
        lines.append(f"Even batch size {low} does not fit at sequence length {plan.seq_len:,}.")
    max_seq = plan.shape.context_length or 131072
    seq = _largest(lambda s: total_for(with_auto(replace(plan, seq_len=s))) <= limit, max_seq)
    what = "answer (chosen and rejected each)" if pairs else "sequence"
    if seq:
        needed = _auto_needed(replace(plan, seq_len=seq), limit)
        how = f" ('auto' turns on {', '.join(needed)})" if needed else ""
        lines.append(f"Longest {what} that fits at batch size {plan.batch_size}: {_tokens(seq)} tokens{how}.")
    else:
        lines.append(f"No sequence length fits at batch size {plan.batch_size}.")
    every = with_savers(plan, SAVERS)
    if every != auto:
        longest = _largest(
            lambda s: total_for(with_savers(replace(plan, seq_len=s), SAVERS)) <= limit, max_seq
        )
        if longest > seq:
            off = [SAVER_NAMES[n] for n in SAVERS if getattr(every, n) and not getattr(auto, n)]
            lines.append(
                f"With {', '.join(off)} on as well (set to 'off' now): {_tokens(longest)} tokens fit "
                f"({', '.join(f'training.{n}' for n in SAVERS if getattr(every, n) and not getattr(auto, n))})."
            )
    if total > limit:
        changes = _single_changes(plan)
        for text, candidate in changes:
            new = total_for(candidate)
            verdict = "fits" if new <= limit else "still too big"
            lines.append(f"{text}: saves {gb(total - new)} → {gb(new)} ({verdict}).")
        for text, candidate in _method_changes(plan):
            new = total_for(candidate)
            if new < total:
                verdict = "fits" if new <= limit else "still too big"
                lines.append(f"{text}: saves {gb(total - new)} → {gb(new)} ({verdict}).")
        reference = _reference_line(plan, estimate)
        if reference:
            lines.append(reference)
        combined = _all_savers(plan)
        if combined is not None:
            new = total_for(combined)
            if new > limit:
                loss = "chunked loss, " if plan.method == "sft" else ""
                lines.append(
                    f"All memory savers together (4-bit, lean preparation, {loss}"
                    f"{'offloaded ' if combined.offload else ''}checkpointing, 8-bit optimizer, "
                    f"batch {combined.batch_size}) still need "
                    f"{gb(new)}" + _smallest_gpu(new)
                )
        fsdp = _fsdp_line(estimate_plan(combined or plan).bytes, limit, with_savers=combined is not None)
        if fsdp:
            lines.append(fsdp)
    return lines


#: What FSDP shards across GPUs; activations, logits and overheads stay whole on each GPU.
_SHARDED = ("weights_quantized", "weights_unquantized", "lora_weights", "gradients", "optimizer")


def _fsdp_line(parts: dict[str, int], limit: int, *, with_savers: bool) -> str | None:
    """When one GPU is too small: the fewest GPUs of this size that fit with FSDP, if any do."""
    if limit <= 0:
        return None
    sharded = sum(parts.get(key, 0) for key in _SHARDED)
    whole = parts["total"] - sharded
    for gpus in (2, 3, 4, 6, 8, 16, 32, 64):
        per_gpu = whole + sharded // gpus
        if per_gpu <= limit:
            savers = " with all memory savers" if with_savers else ""
            return (
                f"With FSDP over {gpus} GPUs of this size{savers} (each holds 1/{gpus} of the weights, "
                f"gradients and optimizer state): about {gb(per_gpu)} per GPU — see docs/multi-gpu.md."
            )
    return None


def _all_savers(plan: Plan) -> Plan | None:
    """Every saver at once, or None when the plan already uses them all."""
    combined = replace(
        plan,
        tiled_mlp=True,
        norm_recompute=True,
        quantization="nf4" if plan.quantization in ("none", "int8") else plan.quantization,
        double_quant=True,
        gradient_checkpointing=True,
        checkpoint_offload=plan.device == "cuda",
        lean_kbit_prep=True,
        chunked_loss=True,
        optimizer="paged_adamw_8bit",
        batch_size=_smallest_batch(plan),
    )
    return None if combined == plan else combined


def _smallest_batch(plan: Plan) -> int:
    """KTO's KL term pairs each prompt with another row's answer: TRL refuses a batch of 1."""
    return 2 if plan.method == "kto" else 1


def _smallest_gpu(needed: int) -> str:
    from lora_studio.core.estimate.catalog import load_gpu_catalog

    fitting = sorted(
        (g for g in load_gpu_catalog() if g.memory_bytes >= needed), key=lambda g: g.memory_bytes
    )
    if not fitting:
        return "; no single GPU in the catalog has that much — consider several GPUs (docs/multi-gpu.md)."
    return f"; the smallest catalog GPU with that much memory is the {fitting[0].name} ({fitting[0].memory_gib:g} GB)."


def _single_changes(plan: Plan) -> list[tuple[str, Plan]]:
    changes: list[tuple[str, Plan]] = []
    if plan.quantization in ("none", "int8"):
        changes.append(
            (
                "Quantize to 4-bit (--quant nf4 --double-quant)",
                replace(plan, quantization="nf4", double_quant=True),
            )
        )
    elif not plan.double_quant:
        changes.append(("Add double quantization (--double-quant)", replace(plan, double_quant=True)))
    changes += _saver_changes(plan)
    if plan.optimizer in ("adamw_torch", "paged_adamw_32bit"):
        changes.append(
            (
                "Use an 8-bit optimizer (--optimizer paged_adamw_8bit)",
                replace(plan, optimizer="paged_adamw_8bit"),
            )
        )
    if plan.lora_r > 4:
        r = max(4, plan.lora_r // 2)
        changes.append((f"Halve the LoRA rank (--lora-r {r})", replace(plan, lora_r=r)))
    low = _smallest_batch(plan)
    if plan.batch_size > low:
        examples = plan.grad_accum * plan.batch_size
        accum = -(-examples // low)
        same = "same" if accum * low == examples else "about the same"
        size = {
            1: "Batch size 1"
            + (" pair (its chosen and rejected answer: 2 sequences)" if plan.method in PAIR_METHODS else ""),
            2: "Batch size 2 (KTO's smallest: its KL term needs another row's answer)",
        }[low]
        changes.append(
            (
                f"{size} with gradient accumulation {accum} ({same} effective batch)",
                replace(plan, batch_size=low),
            )
        )
    if plan.seq_len > 128:
        changes.append(
            (
                f"Halve the sequence length (--seq-len {plan.seq_len // 2})",
                replace(plan, seq_len=plan.seq_len // 2),
            )
        )
    return changes


def _saver_changes(plan: Plan) -> list[tuple[str, Plan]]:
    """The exact memory savers that are off: lean k-bit preparation, chunked loss, checkpointing, offload."""
    changes: list[tuple[str, Plan]] = []
    if plan.upcast:
        changes.append(
            (
                f"Keep embeddings and lm_head in {plan.dtype_name} (lean k-bit preparation, "
                "model.lean_kbit_prep)",
                replace(plan, lean_kbit_prep=True),
            )
        )
    if not plan.chunked_loss and plan.method == "sft":  # TRL computes the preference losses
        changes.append(
            (
                "Compute the loss in chunks (training.chunked_loss)",
                replace(plan, chunked_loss=True),
            )
        )
    if not plan.gradient_checkpointing:
        changes.append(
            (
                "Turn on gradient checkpointing (--grad-checkpointing)",
                replace(plan, gradient_checkpointing=True),
            )
        )
    offloaded = replace(plan, gradient_checkpointing=True, checkpoint_offload=True)
    if offloaded.offload and not plan.offload:
        what = (
            "Offload checkpointed activations to CPU memory"
            if plan.gradient_checkpointing
            else ("Turn on offloaded gradient checkpointing")
        )
        changes.append((f"{what} (training.checkpoint_offload; --offload)", offloaded))
    for name, text in (
        ("norm_recompute", "Recompute the norms in backward (training.norm_recompute; exact)"),
        ("tiled_mlp", "Run the MLP over tiles of the sequence (training.tiled_mlp; exact, ~10% slower)"),
    ):
        if not getattr(plan, name):
            changes.append((text, with_savers(plan, [name])))
    return changes


def _tokens(seq: int) -> str:
    """A longest length as shown: a multiple of 64 from 64 tokens on, with thousands separators."""
    return f"{seq if seq < 64 else seq - seq % 64:,}"


def _auto_needed(plan: Plan, limit: int) -> list[str]:
    """The "auto" savers that turn on for ``plan`` (re-decided at its sequence length)."""
    base = with_savers(plan, plan.auto_settings, on=False)
    needed: list[str] = []
    for name in SAVERS:
        if name not in plan.auto_settings or not getattr(with_savers(base, [name]), name):
            continue
        if estimate_plan(base).total_bytes <= limit:
            break
        base = with_savers(base, [name])
        needed.append(SAVER_NAMES[name])
    return needed


def _largest(ok: Callable[[int], bool], upper: int, *, lowest: int = 1) -> int:
    """The largest n in [lowest, upper] with ok(n) true, assuming ok is monotone (0 if none)."""
    if not ok(lowest):
        return 0
    low, high = lowest, 2 * lowest
    while high <= upper and ok(high):
        low, high = high, high * 2
    high = min(high, upper + 1)
    while high - low > 1:
        mid = (low + high) // 2
        if ok(mid):
            low = mid
        else:
            high = mid
    return low


#: Why one pair method costs what it does, for the advice that offers another.
_HOW = {
    "dpo": "log-probabilities from a fused head in tiles, plus a reference forward without a graph",
    "orpo": "no reference forward, but full fp32 logits and a cross-entropy on the chosen half",
    "simpo": "no reference forward, but full fp32 logits",
}


def _method_changes(plan: Plan) -> list[tuple[str, Plan]]:
    """The other pair methods on the same pairs (offered only where they need less)."""
    if plan.method not in PAIR_METHODS:
        return []
    return [
        (
            f"Train with {METHOD_NAMES[other]} instead ({_HOW[other]}; --method {other})",
            replace(plan, method=other),
        )
        for other in PAIR_METHODS
        if other != plan.method
    ]


def _reference_line(plan: Plan, estimate: MemoryEstimate) -> str | None:
    """What DPO's and KTO's reference forward costs: compute, and a little working memory."""
    if not plan.reference:
        return None
    what = (
        f"{METHOD_NAMES[plan.method]}'s reference forward (the adapter switched off: no second copy of "
        "the model, no graph)"
    )
    working = gb(estimate.details.get("reference_forward", 0))
    if estimate.peak_moment == "reference":
        return f"{what} is this step's peak: {working} of working memory on top of the saved activations."
    return (
        f"{what} costs a forward of compute per step but only {working} of working memory while it "
        "runs, less than the rest of the step needs: it is not what makes this run too big."
    )
