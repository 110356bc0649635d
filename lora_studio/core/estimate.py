"""How much GPU memory a LoRA/QLoRA run needs, before anything is loaded — and what to change if it won't fit.

The estimate mirrors the engine's real choices (``core/models.load_model`` quantization,
``prepare_model_for_kbit_training``, peft fp32 adapters, the Trainer's optimizers, sdpa, the
causal-LM loss with its fp32 upcast). Parameter counts and weight bytes are exact (tested against
loaded models); activations follow an enumeration of the tensors autograd saves, checked against
precise mode (``estimate_precise.py``) and measured saved tensors (``bench/estimate_accuracy.py``).
After the first call for a model (which builds it on the meta device) an estimate is arithmetic,
so the GUI can recompute on every edit. Formulas and sources: ``docs/memory.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from lora_studio.core.errors import ConfigError
from lora_studio.core.estimate_model import ModelShape, Module, lora_modules, model_shape
from lora_studio.core.estimate_terms import (
    dora_forward_temp_bytes,
    dora_weight_copies,
    layer_backward_temp_bytes,
    layer_saved_per_token,
    logits_peak_bytes,
    lora_tensor_sizes,
    optimizer_bytes,
    optimizer_step_temp_bytes,
    outside_saved_bytes,
    quantized_weight_bytes,
    unquantized_weight_bytes,
)
from lora_studio.core.memory_saving import loss_chunk_tokens

if TYPE_CHECKING:
    from collections.abc import Iterable

    import torch

    from lora_studio.core.config import RunConfig

GIB = 2**30
#: CUDA context + cuBLAS handles/workspaces: 0.3-1.3 GB depending on driver and lazy module
#: loading (transformers' "model memory anatomy" measured 1.34 GB with eager loading).
CUDA_CONTEXT_BYTES = 600 * 2**20
#: The caching allocator's rounding and fragmentation, as a fraction of the tensors' peak.
ALLOCATOR_SLACK = 0.05

QUANTIZATIONS = ("none", "int8", "nf4", "fp4")
COMPUTE_DTYPES = ("auto", "bf16", "fp16", "fp32")
OPTIMIZERS = ("adamw_torch", "adamw_bnb_8bit", "paged_adamw_8bit", "paged_adamw_32bit")
DEVICES = ("cuda", "cpu")


@dataclass(frozen=True)
class EstimateRequest:
    """Everything that decides training memory; defaults match ``RunConfig``'s."""

    model: str
    quantization: str = "none"
    double_quant: bool = False
    compute_dtype: str = "auto"
    lora_r: int = 16
    targets: str | list[str] = "all-linear"
    use_dora: bool = False
    batch_size: int = 1
    seq_len: int = 512
    grad_accum: int = 1
    optimizer: str = "adamw_torch"
    gradient_checkpointing: bool = False
    packing: bool = False
    device: str = "cuda"
    vram_bytes: int | None = None
    lora_dropout: float = 0.05
    gpu: str | None = None
    trust_remote_code: bool = False
    lean_kbit_prep: bool = True
    chunked_loss: bool = True
    checkpoint_offload: bool = False

    @classmethod
    def from_config(cls, config: RunConfig, *, device: str, vram_bytes: int | None) -> EstimateRequest:
        """The request for a run configuration, as the engine would train it on ``device``."""
        return cls(
            model=config.model.source,
            quantization=config.model.quantization,
            double_quant=config.model.double_quant,
            compute_dtype=config.model.compute_dtype,
            lora_r=config.lora.r,
            targets=config.lora.target_modules,
            use_dora=config.lora.use_dora,
            batch_size=config.training.batch_size,
            seq_len=config.data.max_seq_len,
            grad_accum=config.training.grad_accum,
            optimizer=config.training.optimizer,
            gradient_checkpointing=config.training.gradient_checkpointing,
            packing=config.data.packing,
            device=device,
            vram_bytes=vram_bytes,
            lora_dropout=config.lora.dropout,
            trust_remote_code=config.model.trust_remote_code,
            lean_kbit_prep=config.model.lean_kbit_prep,
            chunked_loss=config.training.chunked_loss,
            checkpoint_offload=config.training.checkpoint_offload,
        )


@dataclass(frozen=True)
class Plan:
    """A validated request with the engine's choices resolved (dtype, LoRA modules, stream dtype)."""

    shape: ModelShape
    quantization: str
    double_quant: bool
    dtype_name: str
    compute_bytes: int
    lora_r: int
    targets: str | list[str]
    lora: tuple[Module, ...]
    use_dora: bool
    lora_dropout: float
    batch_size: int
    seq_len: int
    grad_accum: int
    optimizer: str
    gradient_checkpointing: bool
    packing: bool
    device: str
    lean_kbit_prep: bool = True
    chunked_loss: bool = True
    checkpoint_offload: bool = False

    @property
    def tokens(self) -> int:
        return self.batch_size * self.seq_len

    @property
    def upcast(self) -> bool:
        """peft's ``prepare_model_for_kbit_training`` (not the engine's lean variant) casts every
        non-quantized 16-bit weight of a quantized model to fp32."""
        return self.quantization != "none" and not self.lean_kbit_prep

    @property
    def stream_bytes(self) -> int:
        """The residual stream: fp32 when computing in fp32 or after peft's fp32 upcast, else 16-bit."""
        return 4 if self.compute_bytes == 4 or self.upcast else 2

    @property
    def autocast(self) -> bool:
        """The Trainer runs ``model.forward`` under bf16/fp16 autocast on CUDA, and the engine's
        chunked loss runs the decoder and the head under the same autocast (``accelerator.autocast``):
        matmul inputs are saved as 16-bit copies instead of peft's fp32 adapter inputs."""
        return self.device == "cuda" and self.compute_bytes == 2

    @property
    def offload(self) -> bool:
        return self.checkpoint_offload and self.gradient_checkpointing and self.device == "cuda"

    @property
    def torch_dtype(self) -> torch.dtype:
        import torch

        return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[self.dtype_name]


@dataclass(frozen=True)
class MemoryEstimate:
    """The estimate: parameter counts, bytes per component, the verdict and advice."""

    parameters: dict[str, int]
    bytes: dict[str, int]
    device_bytes: int | None
    fits: bool | None
    advice: list[str]
    explanations: dict[str, str] = field(default_factory=dict)
    model: str = ""
    dtype: str = ""
    device: str = "cuda"
    notes: list[str] = field(default_factory=list)
    details: dict[str, int] = field(default_factory=dict)

    @property
    def total_bytes(self) -> int:
        return self.bytes["total"]

    def to_dict(self) -> dict[str, Any]:
        """The ``--json`` shape of issue 5 (extra keys: explanations, model, dtype, device, notes, details)."""
        return {
            "parameters": dict(self.parameters),
            "bytes": dict(self.bytes),
            "device_bytes": self.device_bytes,
            "fits": self.fits,
            "advice": list(self.advice),
            "explanations": dict(self.explanations),
            "model": self.model,
            "dtype": self.dtype,
            "device": self.device,
            "notes": list(self.notes),
            "details": dict(self.details),
        }


def _choice(field_name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError({field_name: f"must be one of {', '.join(choices)}, not {value!r}"})


def plan_for(req: EstimateRequest) -> Plan:
    """Validate a request and resolve what the engine would do (raises ConfigError / ModelSourceError)."""
    _choice("quantization", req.quantization, QUANTIZATIONS)
    _choice("compute_dtype", req.compute_dtype, COMPUTE_DTYPES)
    _choice("optimizer", req.optimizer, OPTIMIZERS)
    if req.device.startswith("cuda:"):  # a device index does not change the estimate
        req = replace(req, device="cuda")
    _choice("device", req.device, DEVICES)
    problems = {}
    for name in ("lora_r", "batch_size", "seq_len", "grad_accum"):
        if int(getattr(req, name)) < 1:
            problems[name] = "must be at least 1"
    if req.double_quant and req.quantization not in ("nf4", "fp4"):
        problems["double_quant"] = "only applies to 4-bit quantization (nf4 or fp4)"
    if not 0.0 <= req.lora_dropout < 1.0:
        problems["lora_dropout"] = "must be in [0, 1)"
    if req.vram_bytes is not None and req.vram_bytes <= 0:
        problems["vram"] = "must be a positive amount of memory"
    if problems:
        raise ConfigError(problems)
    shape = model_shape(req.model, trust_remote_code=req.trust_remote_code)
    dtype_name = _dtype_name(req)
    return Plan(
        shape=shape,
        quantization=req.quantization,
        double_quant=req.double_quant,
        dtype_name=dtype_name,
        compute_bytes=4 if dtype_name == "fp32" else 2,
        lora_r=req.lora_r,
        targets=req.targets,
        lora=tuple(lora_modules(shape, req.targets)),
        use_dora=req.use_dora,
        lora_dropout=req.lora_dropout,
        batch_size=req.batch_size,
        seq_len=req.seq_len,
        grad_accum=req.grad_accum,
        optimizer=req.optimizer,
        gradient_checkpointing=req.gradient_checkpointing,
        packing=req.packing,
        device=req.device,
        lean_kbit_prep=req.lean_kbit_prep,
        chunked_loss=req.chunked_loss,
        checkpoint_offload=req.checkpoint_offload,
    )


def _dtype_name(req: EstimateRequest) -> str:
    """``pick_dtype`` without touching CUDA: auto → bf16 on GPUs (fp16 on pre-Ampere cards), fp32 on CPU."""
    if req.compute_dtype != "auto":
        return req.compute_dtype
    if req.device == "cpu":
        return "fp32"
    if req.gpu:
        from lora_studio.core.catalog import find_gpu

        return "bf16" if find_gpu(req.gpu).bf16 else "fp16"
    return "bf16"


def estimate_memory(req: EstimateRequest) -> MemoryEstimate:
    """The analytic estimate with verdict and advice (advice only when the device memory is known)."""
    plan = plan_for(req)
    estimate = _estimate(plan, req.vram_bytes)
    if estimate.device_bytes is None:
        return estimate
    from lora_studio.core.estimate_advice import advise

    return replace(estimate, advice=advise(req, plan, estimate))


def estimate_plan(plan: Plan, device_bytes: int | None = None) -> MemoryEstimate:
    """The estimate for an already-resolved plan, without advice (used by the advice search)."""
    return _estimate(plan, device_bytes)


def _estimate(plan: Plan, device_bytes: int | None) -> MemoryEstimate:
    shape = plan.shape
    quantized_n = 0 if plan.quantization == "none" else shape.quantizable_params
    sizes = lora_tensor_sizes(plan.lora, plan.lora_r, plan.use_dora)
    trainable = sum(sizes)
    weights_q = quantized_weight_bytes(shape.modules, plan.quantization, plan.double_quant)
    weights_u = unquantized_weight_bytes(shape, plan.quantization, plan.compute_bytes, prepared=plan.upcast)
    weights_loaded = weights_q + unquantized_weight_bytes(
        shape, plan.quantization, plan.compute_bytes, prepared=False
    )
    lora_bytes = 4 * trainable
    grads = 4 * trainable
    optim = optimizer_bytes(sizes, plan.optimizer)

    activations, logits, temporaries, per_layer = _activation_terms(plan, grads=grads, trainable=trainable)
    tensors = weights_q + weights_u + lora_bytes + grads + optim + activations + logits + temporaries
    overhead = CUDA_CONTEXT_BYTES + round(ALLOCATOR_SLACK * tensors) if plan.device == "cuda" else 0
    total = tensors + overhead
    parameters = {
        "total": shape.total_params,
        "quantized": quantized_n,
        "unquantized": shape.total_params - quantized_n,
        "trainable": trainable,
    }
    sizes_out = {
        "weights_quantized": weights_q,
        "weights_unquantized": weights_u,
        "lora_weights": lora_bytes,
        "gradients": grads,
        "optimizer": optim,
        "activations": activations,
        "logits": logits,
        "temporaries": temporaries,
        "overhead": overhead,
        "total": total,
    }
    from lora_studio.core.estimate_advice import explain

    return MemoryEstimate(
        parameters=parameters,
        bytes=sizes_out,
        device_bytes=device_bytes,
        fits=None if device_bytes is None else total <= device_bytes,
        advice=[],
        explanations=explain(plan, per_layer_token=per_layer, masked=_masked(plan)),
        model=shape.name,
        dtype=plan.dtype_name,
        device=plan.device,
        notes=_notes(plan),
        details={
            "weights_as_loaded": weights_loaded,
            "activations_per_token_per_layer": per_layer,
            "logits_per_token": logits // plan.tokens,
            "tokens": plan.tokens,
        },
    )


def _masked(plan: Plan) -> bool:
    """Whether transformers builds an attention mask: padded batches, packing, long sliding windows."""
    window = plan.shape.sliding_window
    return plan.batch_size > 1 or plan.packing or bool(window and plan.seq_len > window)


def _activation_terms(plan: Plan, *, grads: int, trainable: int) -> tuple[int, int, int, int]:
    """(activations, logits, temporaries, saved bytes per token of the largest layer).

    A step's peak is the largest of four moments, all on top of the static bytes: the loss (saved
    activations + logits), the start of the last layer's backward (+ its recomputation under
    checkpointing + gradient buffers), DoRA's weight-sized forward work (under checkpointing it
    reruns in a layer's recomputation, with the gradients already there), and the optimizer step.
    ``temporaries`` is what the largest moment needs beyond the loss phase, so the parts add up
    to the total.
    """
    shape = plan.shape
    tokens, stream = plan.tokens, plan.stream_bytes
    masked = _masked(plan)
    eager = shape.attention == "eager"
    needs_mask = masked or eager
    mask_kinds = (1 if needs_mask else 0) + (1 if shape.sliding_window and needs_mask else 0)
    mask_bytes = stream if eager else 1  # eager adds a float mask; sdpa takes a boolean one
    masks = mask_kinds * mask_bytes * plan.batch_size * plan.seq_len**2
    per_layer = _per_layer_tokens(plan, masked=masked)
    outside = outside_saved_bytes(shape, tokens=tokens, seq_len=plan.seq_len, stream=stream, masks=masks)
    dora_copies = _dora_copies(plan, plan.lora)
    head_bytes = 4 if plan.compute_bytes == 4 or plan.upcast else 2
    loss_tokens = min(tokens, loss_chunk_tokens(shape.vocab)) if plan.chunked_loss else tokens
    logits = logits_peak_bytes(
        shape, tokens=loss_tokens, head_bytes=head_bytes, softcap=not plan.chunked_loss
    )
    if plan.chunked_loss:
        outside += tokens * shape.hidden * stream  # the final hidden states, input of every loss chunk
    layer_temp = layer_backward_temp_bytes(shape, tokens=tokens)
    if plan.gradient_checkpointing:
        # each layer keeps only its input; bitsandbytes' int8 matmul also keeps its own input as a
        # ctx attribute, outside autograd's saved tensors, so checkpointing cannot drop it
        kept = 0 if plan.offload else shape.hidden
        if plan.quantization == "int8":
            kept += sum(width for _, width, _ in shape.layer.groups)
        activations = shape.layers * tokens * stream * kept + (masks if plan.offload else outside)
        recompute = max(per_layer) * tokens + dora_copies // max(shape.layers, 1)
        layer_phase = activations + recompute + layer_temp + grads
    else:
        activations = sum(per_layer) * tokens + outside + dora_copies - _first_layer_discount(plan)
        recompute = 0
        layer_phase = activations + layer_temp + grads
    loss_phase = activations + logits + grads
    step_phase = grads + optimizer_step_temp_bytes(trainable, plan.optimizer)
    dora_phase = 0
    if plan.use_dora:  # under checkpointing DoRA's work reruns in the backward's recomputation
        dora_phase = activations + _dora_forward_temp(plan)
        if plan.gradient_checkpointing:
            dora_phase += recompute + grads
    temporaries = max(0, max(layer_phase, step_phase, dora_phase) - loss_phase)
    return activations, logits, temporaries, max(per_layer, default=0)


def _dora_copies(plan: Plan, modules: Iterable[Module]) -> int:
    """DoRA's weight copies kept for backward, for these modules (0 without DoRA)."""
    if not plan.use_dora:
        return 0
    return dora_weight_copies(
        modules, dropout=plan.lora_dropout > 0, base_fp32=_base_fp32(plan), autocast=plan.autocast
    )


def _dora_forward_temp(plan: Plan) -> int:
    return dora_forward_temp_bytes(
        plan.lora,
        dropout=plan.lora_dropout > 0,
        base_fp32=_base_fp32(plan),
        autocast=plan.autocast,
    )


def _base_fp32(plan: Plan) -> bool:
    """Whether the adapted weights are fp32 as stored (DoRA's ``.to(float32)`` copies nothing)."""
    return plan.quantization == "none" and plan.compute_bytes == 4


def _first_layer_discount(plan: Plan) -> int:
    """Without checkpointing nothing upstream of the first layer needs a gradient, so its first norm
    and its attention inputs' dropout masks (and int8 inputs) are not saved, nor DoRA's weight
    copies for those inputs: the matmul that reads a copy keeps it only for its input's gradient."""
    shape = plan.shape
    discount = 4 * shape.hidden + 4
    first_modules = [m for m in plan.lora if ".layers.0." in f".{m.name}"]
    first = {m.leaf for m in first_modules}
    copies = 0
    for key, width, leaves in shape.layer.groups:
        if key != "attn_in":
            continue
        adapters = sum(1 for leaf in leaves if leaf in first)
        copies += _dora_copies(plan, [m for m in first_modules if m.leaf in leaves])
        if plan.lora_dropout > 0:
            discount += adapters * width  # the 1-byte dropout masks
        if plan.quantization == "int8" and not (
            adapters and plan.stream_bytes == 4 and plan.lora_dropout == 0
        ):
            discount += plan.stream_bytes * width
    return discount * plan.tokens + copies


@lru_cache(maxsize=4096)
def _layer_index(name: str) -> int | None:
    """The decoder layer a module belongs to (cached: the fit advice re-estimates ~30 times per edit)."""
    parts = name.split(".")
    return int(parts[parts.index("layers") + 1]) if "layers" in parts else None


def _per_layer_tokens(plan: Plan, *, masked: bool) -> list[int]:
    """Saved bytes per token for each decoder layer (layers differ only if targets name layers)."""
    shape = plan.shape
    targeted_by_layer: dict[int, set[str]] = {}
    for module in plan.lora:
        index = _layer_index(module.name)
        if index is not None:
            targeted_by_layer.setdefault(index, set()).add(module.leaf)
    cache: dict[frozenset[str], int] = {}
    out = []
    for index in range(shape.layers):
        targeted = frozenset(targeted_by_layer.get(index, set()))
        if targeted not in cache:
            cache[targeted] = layer_saved_per_token(
                shape,
                set(targeted),
                stream=plan.stream_bytes,
                r=plan.lora_r,
                dropout=plan.lora_dropout > 0,
                use_dora=plan.use_dora,
                masked=masked,
                int8=plan.quantization == "int8",
                seq_len=plan.seq_len,
                autocast=plan.autocast,
            )
        out.append(cache[targeted])
    return out


def _notes(plan: Plan) -> list[str]:
    notes = []
    if not plan.shape.layer.recognised:
        notes.append(
            f"{plan.shape.model_type}: decoder layers not of the llama/qwen/gemma/phi3 shape; activations "
            "are approximate (use --precise to simulate)"
        )
    if plan.optimizer.startswith("paged"):
        notes.append(
            "paged optimizer states are counted on the GPU; under pressure they can move to CPU memory"
        )
    return notes
