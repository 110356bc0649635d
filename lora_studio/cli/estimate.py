"""``lora-studio estimate``: will this run fit my GPU? — without loading the model.

Prints the memory breakdown as an aligned table (GB = 2^30 bytes, as GPU specs and nvidia-smi
count), the verdict and advice; ``--json`` prints the estimate as one JSON object; ``--precise``
also simulates a training step on fake tensors (seconds to minutes, see ``core/estimate_precise``).
"""

from __future__ import annotations

import argparse
import json

from lora_studio.core.config import PAIR_METHODS, default
from lora_studio.core.estimate import (
    COMPUTE_DTYPES,
    DEVICES,
    METHOD_NAMES,
    METHODS,
    OPTIMIZERS,
    QUANTIZATIONS,
    EstimateRequest,
    MemoryEstimate,
    estimate_memory,
)

GIB = 2**30
ROWS = (
    ("weights_quantized", "Quantized weights"),
    ("weights_unquantized", "Other weights"),
    ("lora_weights", "LoRA weights"),
    ("gradients", "Gradients"),
    ("optimizer", "Optimizer states"),
    ("activations", "Activations"),
    ("logits", "Logits and loss"),
    ("temporaries", "Temporaries"),
    ("overhead", "Overhead"),
)

#: On/off flags: (flag, the RunConfig setting it mirrors, whether "on" means the setting is off, help).
SWITCHES = (
    ("--double-quant", "model.double_quant", False, "4-bit only: quantize the quantization scales"),
    ("--dora", "lora.use_dora", False, "DoRA adapters"),
    ("--grad-checkpointing", "training.gradient_checkpointing", False, "recompute activations in backward"),
    ("--packing", "data.packing", False, "packed rows (builds an attention mask)"),
    (
        "--offload",
        "training.checkpoint_offload",
        False,
        "with --grad-checkpointing: keep layer inputs in CPU memory (neither flag: 'auto', on only "
        "when the run would not fit otherwise)",
    ),
    (
        "--peft-prep",
        "model.lean_kbit_prep",
        True,
        "quantized models: peft's prepare_model_for_kbit_training (fp32 embeddings and lm_head) "
        "instead of the lean preparation",
    ),
    (
        "--full-loss",
        "training.chunked_loss",
        True,
        "the standard loss over all logits instead of the chunked one",
    ),
    ("--trust-remote-code", "model.trust_remote_code", False, "allow code shipped with the model"),
)


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "estimate",
        help="estimate the GPU memory of a LoRA/QLoRA run, with advice when it does not fit",
        description="Estimate training memory from the model's config alone (no weights are read). "
        "Models: 'default', a model folder, a config.json, a cached hub id, or catalog:<name> "
        "(see --list-models).",
    )
    parser.add_argument("--model", required=False, default=None, help="model string or catalog:<name>")
    # every default is the run configuration's, so an estimate with no flags is the default run's
    parser.add_argument(
        "--quant",
        default=default("model.quantization"),
        help=f"base weights: {', '.join(QUANTIZATIONS)} (default %(default)s)",
    )
    parser.add_argument(
        "--dtype",
        default=default("model.compute_dtype"),
        help=f"compute dtype: {', '.join(COMPUTE_DTYPES)} (default %(default)s)",
    )
    parser.add_argument(
        "--lora-r", type=int, default=default("lora.r"), help="LoRA rank (default %(default)s)"
    )
    parser.add_argument(
        "--targets",
        default=default("lora.target_modules"),
        help="'all-linear' or comma-separated module names, e.g. q_proj,v_proj (default %(default)s)",
    )
    parser.add_argument(
        "--lora-dropout",
        type=float,
        default=default("lora.dropout"),
        help="LoRA dropout (default %(default)s)",
    )
    parser.add_argument(
        "--method",
        default=default("training.method"),
        choices=METHODS,
        help="what the run learns from: sft, or the preference methods dpo, kto, orpo, simpo "
        "(dpo/orpo/simpo run each pair's chosen and rejected answer; dpo/kto also a reference "
        "forward without a graph; default %(default)s)",
    )
    parser.add_argument(
        "--reference-adapter",
        action="store_true",
        help="dpo/kto: the run starts from an adapter (preference.init_adapter, or PiSSA/OLoRA), "
        "whose frozen copy is the reference",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=default("training.batch_size"),
        help="examples per step (pairs for dpo/orpo/simpo; default %(default)s)",
    )
    parser.add_argument(
        "--seq-len",
        type=int,
        default=default("data.max_seq_len"),
        help="tokens per example (per answer for dpo/orpo/simpo; default %(default)s)",
    )
    parser.add_argument(
        "--grad-accum",
        type=int,
        default=default("training.grad_accum"),
        help="gradient accumulation steps (no memory cost; default %(default)s)",
    )
    parser.add_argument(
        "--optimizer",
        default=default("training.optimizer"),
        help=f"{', '.join(OPTIMIZERS)} (default %(default)s)",
    )
    parser.add_argument("--device", default="cuda", help=f"{', '.join(DEVICES)} (default cuda)")
    limit = parser.add_mutually_exclusive_group()
    limit.add_argument("--gpu", help="a GPU from the catalog, e.g. 'RTX 3060' (see --list-gpus)")
    limit.add_argument("--vram", type=float, help="device memory in GB (2^30 bytes)")
    parser.add_argument("--precise", action="store_true", help="also simulate one training step (slower)")
    parser.add_argument("--layers", type=int, default=None, help="--precise: decoder layers to simulate")
    for flag, dotted, inverted, text in SWITCHES:
        on = default(dotted)
        parser.add_argument(
            flag, action=argparse.BooleanOptionalAction, default=not on if inverted else on, help=text
        )
    for flag, name in (
        ("--tiled-mlp", "tiled_mlp"),
        ("--norm-recompute", "norm_recompute"),
        ("--chunked-attention", "chunked_attention"),
    ):
        parser.add_argument(
            flag,
            choices=("auto", "on", "off"),
            default=default(f"training.{name}"),
            help=f"long-context saver training.{name} (default auto: on only when the run would not fit)",
        )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--list-gpus", action="store_true", help="list the GPU catalog and exit")
    parser.add_argument("--list-models", action="store_true", help="list the model catalog and exit")
    parser.set_defaults(func=run)


def request_from_args(args: argparse.Namespace) -> EstimateRequest:
    """The request the flags describe; unknown GPU names raise a ConfigError listing the catalog."""
    from lora_studio.core.estimate import find_gpu

    vram = None
    gpu_name = None
    if args.gpu:
        gpu = find_gpu(args.gpu)
        vram, gpu_name = gpu.memory_bytes, gpu.name
    elif args.vram is not None:
        vram = int(args.vram * GIB)
    targets: str | list[str] = args.targets
    if isinstance(targets, str) and targets != "all-linear":
        targets = [t.strip() for t in targets.split(",") if t.strip()]
    return EstimateRequest(
        model=args.model,
        quantization=args.quant,
        double_quant=args.double_quant,
        compute_dtype=args.dtype,
        lora_r=args.lora_r,
        targets=targets,
        use_dora=args.dora,
        batch_size=args.batch_size,
        seq_len=args.seq_len,
        grad_accum=args.grad_accum,
        optimizer=args.optimizer,
        gradient_checkpointing=args.grad_checkpointing,
        packing=args.packing,
        device=args.device,
        vram_bytes=vram,
        lora_dropout=args.lora_dropout,
        gpu=gpu_name,
        trust_remote_code=args.trust_remote_code,
        lean_kbit_prep=not args.peft_prep,
        chunked_loss=not args.full_loss,
        checkpoint_offload=args.offload,
        tiled_mlp=args.tiled_mlp,
        norm_recompute=args.norm_recompute,
        chunked_attention=args.chunked_attention,
        method=args.method,
        reference_adapter=args.reference_adapter,
    )


def run(args: argparse.Namespace) -> int:
    if args.list_gpus or args.list_models:
        return _list(args)
    if not args.model:
        from lora_studio.core.errors import ConfigError

        raise ConfigError({"model": "is required (a model string or catalog:<name>; see --list-models)"})
    req = request_from_args(args)
    estimate = estimate_memory(req)
    precise = None
    if args.precise:
        from lora_studio.core.estimate import estimate_precise

        precise = estimate_precise(req, layers=args.layers)
    if args.json:
        payload = estimate.to_dict()
        if precise is not None:
            payload["precise"] = {k: v for k, v in precise.to_dict().items() if k != "analytic"}
        print(json.dumps(payload, indent=2))
        return 0
    print(render(req, estimate))
    if precise is not None:
        print()
        print(render_precise(precise))
    return 0


def gb(value: int) -> str:
    return f"{value / GIB:.2f}"


def _savers_text(req: EstimateRequest) -> str:
    """The long-context savers the estimate uses, and which of them 'auto' chose."""
    from lora_studio.core.estimate import plan_for
    from lora_studio.core.estimate.request import SAVER_NAMES

    plan = plan_for(req)
    if not plan.savers:
        return ""
    chosen = {SAVER_NAMES[n] for n in plan.auto_savers}
    return ", " + ", ".join(f"{name} (auto)" if name in chosen else name for name in plan.savers)


def _count(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return str(n)


def render(req: EstimateRequest, estimate: MemoryEstimate) -> str:
    """The human report: header, parameter counts, the aligned table, verdict and advice."""
    targets = req.targets if isinstance(req.targets, str) else ",".join(req.targets)
    quant = req.quantization + (" + double quant" if req.double_quant else "")
    where = req.gpu or (f"{gb(estimate.device_bytes)} GB" if estimate.device_bytes else req.device)
    method = "" if req.method == "sft" else f"{METHOD_NAMES[req.method]}, "
    if req.method in PAIR_METHODS:
        rows = 2 * req.batch_size
        batch = f"batch {req.batch_size} pairs (chosen + rejected: {rows} sequences) × {req.seq_len:,} tokens"
    else:
        batch = f"batch {req.batch_size} × {req.seq_len:,} tokens"
    lines = [
        f"Memory estimate: {estimate.model} — {method}{quant}, {estimate.dtype}, LoRA r={req.lora_r} ({targets})"
        + (" DoRA" if req.use_dora else ""),
        f"  {batch}, {req.optimizer}"
        + (", gradient checkpointing" if req.gradient_checkpointing else "")
        + _savers_text(req)
        + (", peft fp32 preparation" if req.quantization != "none" and not req.lean_kbit_prep else "")
        + ("" if req.chunked_loss or req.method != "sft" else ", full loss")
        + f", on {where}",
        "",
    ]
    p = estimate.parameters
    share = p["trainable"] / p["total"] if p["total"] else 0.0
    lines.append(
        f"Parameters: {_count(p['total'])} total, {_count(p['quantized'])} quantized, "
        f"{_count(p['unquantized'])} kept in 16/32-bit, {_count(p['trainable'])} trainable ({share:.2%})"
    )
    lines.append("")
    width = max(len(label) for _, label in ROWS)
    lines.append(f"{'Component':<{width}}  {'GB':>8}  What")
    for key, label in ROWS:
        lines.append(f"{label:<{width}}  {gb(estimate.bytes[key]):>8}  {estimate.explanations.get(key, '')}")
    lines.append(f"{'Total':<{width}}  {gb(estimate.bytes['total']):>8}")
    lines.append("")
    total, limit = estimate.bytes["total"], estimate.device_bytes or 0
    if estimate.fits is None:
        lines.append(
            "Verdict: no device memory given (use --gpu NAME or --vram GB for a verdict and advice)."
        )
    elif estimate.fits:
        lines.append(
            f"Verdict: fits — needs {gb(total)} GB of {gb(limit)} GB ({gb(limit - total)} GB to spare)."
        )
    else:
        lines.append(
            f"Verdict: does NOT fit — needs {gb(total)} GB, the device has {gb(limit)} GB "
            f"(short by {gb(total - limit)} GB)."
        )
    for line in estimate.advice:
        lines.append(f"  - {line}")
    for note in estimate.notes:
        lines.append(f"Note: {note}")
    return "\n".join(lines)


def render_precise(precise: object) -> str:
    """The simulated step's peak by category, next to the analytic total."""
    from lora_studio.core.estimate import CATEGORIES, PreciseEstimate

    assert isinstance(precise, PreciseEstimate)
    width = max(len(c) for c in CATEGORIES)
    lines = [f"Precise mode (simulated training step, {precise.seconds:.0f} s):"]
    for name in CATEGORIES:
        lines.append(f"  {name.capitalize():<{width}}  {gb(precise.peak[name]):>8}")
    lines.append(f"  {'Overhead':<{width}}  {gb(precise.overhead_bytes):>8}")
    lines.append(
        f"  {'Total':<{width}}  {gb(precise.total_bytes):>8}   (analytic {gb(precise.analytic.total_bytes)} GB, "
        f"ratio {precise.ratio_analytic:.3f})"
    )
    for note in precise.notes:
        lines.append(f"  Note: {note}")
    return "\n".join(lines)


def _list(args: argparse.Namespace) -> int:
    from lora_studio.core.estimate import load_gpu_catalog, load_model_catalog

    if args.list_gpus:
        gpus = load_gpu_catalog()
        if args.json:
            print(
                json.dumps(
                    [{"name": g.name, "memory_gib": g.memory_gib, "bf16": g.bf16} for g in gpus], indent=2
                )
            )
        else:
            for gpu in gpus:
                print(
                    f"{gpu.name:<20} {gpu.memory_gib:>6.0f} GB  {gpu.kind}{'' if gpu.bf16 else ', no bf16'}"
                )
    if args.list_models:
        models = load_model_catalog()
        if args.json:
            print(
                json.dumps(
                    [{"name": m.name, "hub_id": m.hub_id, "source": m.source} for m in models], indent=2
                )
            )
        else:
            for model in models:
                print(f"catalog:{model.name:<22} {model.hub_id}")
    return 0
