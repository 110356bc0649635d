"""Precise mode: simulate one real training step on fake tensors and track every allocation.

The preference methods' steps (DPO, KTO, ORPO, SimPO) are TRL's: ``preference`` builds them.

The analytic estimate (``estimate.py``) is arithmetic over an enumeration of what autograd keeps;
this module checks it by running the real code instead. It builds the model exactly as the engine
does (meta device → bitsandbytes layer replacement → ``prepare_model_for_kbit_training`` →
gradient checkpointing → peft ``LoraConfig``), gives every parameter a *fake* tensor
(``FakeTensorMode``: shapes, dtypes and storages, no bytes), and runs a step of forward,
backward, gradient clipping and the optimizer under torch's ``MemTracker``, which reports the peak
by category. No weights are read and no GPU is needed.

Fake CPU tensors are used because backward through fake CUDA tensors aborts on a CPU-only torch
build; memory per tensor is the same. Full-size models take minutes on a small CPU, so by default
2 and 4 decoder layers are simulated and the per-layer difference is extrapolated to the real
depth; the result says so.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from lora_studio.core.errors import ConfigError
from lora_studio.core.estimate.advice import estimate_memory
from lora_studio.core.estimate.fakes import cached_code_books, cuda_kernels, materialise, new_tracker
from lora_studio.core.estimate.request import (
    CHUNKED_ATTENTION,
    METHOD_NAMES,
    EstimateRequest,
    MemoryEstimate,
    Plan,
)
from lora_studio.core.estimate.savers import plan_for

if TYPE_CHECKING:
    import torch

CATEGORIES = ("parameters", "buffers", "gradients", "activations", "temporaries", "optimizer", "other")
_TRACKER_NAMES = {
    "Parameter": "parameters",
    "Buffer": "buffers",
    "Gradient": "gradients",
    "Activation": "activations",
    "Temp": "temporaries",
    "Optstate": "optimizer",
    "Other": "other",
}


@dataclass(frozen=True)
class PreciseEstimate:
    """Peak memory of a simulated step, by category, extrapolated to the model's real depth."""

    peak: dict[str, int]
    peak_bytes: int
    overhead_bytes: int
    total_bytes: int
    layers: int
    layers_simulated: tuple[int, ...]
    extrapolated: bool
    seconds: float
    analytic: MemoryEstimate
    notes: list[str] = field(default_factory=list)

    @property
    def ratio_analytic(self) -> float:
        """Analytic total ÷ precise total (1.0 is perfect agreement)."""
        return self.analytic.total_bytes / self.total_bytes if self.total_bytes else float("nan")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["analytic"] = self.analytic.to_dict()
        data["layers_simulated"] = list(self.layers_simulated)
        return data


def estimate_precise(
    req: EstimateRequest, *, layers: int | None = None, adapter_dtype: torch.dtype | None = None
) -> PreciseEstimate:
    """Simulate a training step; ``layers`` caps the simulated depth (default: 2 and 4, then extrapolate).

    Takes seconds for small models and up to a few minutes for 70B-class widths on a 2-core CPU.
    ``adapter_dtype`` is :func:`simulate_step`'s (the engine's adapters are fp32; the analytic
    estimate assumes so).
    """
    analytic = estimate_memory(req)
    plan = plan_for(req)
    if plan.use_dora and plan.quantization != "none":
        raise ConfigError(
            {
                "use_dora": "precise mode cannot simulate DoRA on a quantized model (peft reads the real weights "
                "to initialise it); the analytic estimate covers it"
            }
        )
    depth = plan.shape.layers
    cap = depth if layers is None else max(2, min(layers, depth))
    if cap == depth and (layers is not None or depth <= 4):
        points: tuple[int, ...] = (depth,)
    elif layers is None:
        points = (2, 4)
    else:
        points = (cap // 2, cap)
    start = time.perf_counter()
    runs = {n: simulate_step(plan, layers=n, adapter_dtype=adapter_dtype) for n in points}
    if len(points) == 1:
        peak = runs[points[0]]
    else:
        low, high = points
        peak = {
            k: round(runs[low][k] + (depth - low) * (runs[high][k] - runs[low][k]) / (high - low))
            for k in CATEGORIES
        }
    peak_bytes = sum(peak.values())
    notes = [
        "simulated on fake CPU tensors with torch MemTracker (no weights read, no GPU used)",
    ]
    if len(points) > 1:
        notes.append(
            f"simulated {points[0]} and {points[1]} of {depth} decoder layers; the per-layer difference "
            "was extrapolated to the full depth"
        )
    if plan.optimizer.startswith("paged"):
        notes.append(
            "paged optimizer simulated as its non-paged twin (same bytes; paged states can spill to CPU)"
        )
    if adapter_dtype is not None:
        notes.append(f"adapters simulated in {adapter_dtype} (the engine and the analytic estimate: fp32)")
    if plan.method != "sft":
        notes.append(
            f"{METHOD_NAMES[plan.method]}: simulated with TRL's own step code where fake tensors allow; "
            "every position counted as an answer token (an upper bound)"
        )
    if plan.quantization == "int8":
        notes.append(
            "int8 simulated without outlier decomposition (threshold 0): outliers depend on real weights"
        )
    overhead = analytic.bytes["overhead"]
    return PreciseEstimate(
        peak=peak,
        peak_bytes=peak_bytes,
        overhead_bytes=overhead,
        total_bytes=peak_bytes + overhead,
        layers=depth,
        layers_simulated=points,
        extrapolated=len(points) > 1,
        seconds=round(time.perf_counter() - start, 2),
        analytic=analytic,
        notes=notes,
    )


def simulate_step(
    plan: Plan,
    *,
    layers: int,
    adapter_dtype: torch.dtype | None = None,
    composition: dict[str, int] | None = None,
) -> dict[str, int]:
    """Peak bytes by category of a steady-state training step of ``plan`` with ``layers`` decoder layers.

    ``adapter_dtype`` casts the trainable adapter weights (and so their gradients and optimizer
    states) after they are built: the engine keeps them in fp32, as peft makes them, but TRL's own
    QLoRA path casts them to bf16 — ``bench/preference_memory.py`` simulates that path with it.
    ``composition``, when given, is filled with what is alive at the peak, by label (see
    ``fakes.CompositionTracker``): ``bench/memory.py --composition`` prints it.
    """
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode

    from lora_studio.core.models import quiet_libraries

    preference = plan.method != "sft"
    with quiet_libraries(), cached_code_books(), cuda_kernels(packing=plan.packing), _method_kernels(plan):
        model = build_training_model(plan, layers=layers)
        if preference:
            from lora_studio.core.estimate.preference import preference_batch, prepare_policy

            model = prepare_policy(model, plan)
            batch = preference_batch(plan, model.config.pad_token_id or 0)
            inputs = list(batch.values())
        else:
            mask = _padded_mask(plan)
        fake_mode = FakeTensorMode(allow_non_fake_inputs=True)
        with fake_mode:
            extra = materialise(model, plan)
            if adapter_dtype is not None:
                _cast_trainable(model, adapter_dtype)
            trainable = [p for p in model.parameters() if p.requires_grad]
            optimizer = _optimizer(plan, trainable)
            if not preference:
                ids = torch.zeros((plan.batch_size, plan.seq_len), dtype=torch.long)
                inputs = [ids]

            def step() -> None:
                if preference:
                    from lora_studio.core.estimate.preference import preference_loss

                    # the Trainer's compute_loss: autocast is on the model's forward only (accelerate)
                    with _offload(plan):
                        loss = preference_loss(model, batch, plan) / plan.grad_accum
                else:
                    with _autocast(plan), _offload(plan):
                        loss = _loss(model, ids, mask, plan) / plan.grad_accum
                loss.backward()
                del loss
                torch.nn.utils.clip_grad_norm_(trainable, 1.0)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)

            # The optimizer creates its states at its first step: take that step on zero gradients
            # (no forward needed), then track one full step in the steady state.
            for param in trainable:
                param.grad = torch.zeros_like(param)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            tracker = new_tracker(composition=composition is not None)
            tracker.track_external(model, optimizer, *inputs, *extra)
            with tracker, _free_dora_weight_graphs(model):
                step()
            snapshot = tracker.get_tracker_snapshot("peak")
            if composition is not None:
                composition.update(tracker.composition)
    per_device = next(iter(snapshot.values()))
    out = dict.fromkeys(CATEGORIES, 0)
    for key, value in per_device.items():
        name = _TRACKER_NAMES.get(getattr(key, "value", str(key)))
        if name:
            out[name] += int(value)
    return out


def _method_kernels(plan: Plan) -> contextlib.AbstractContextManager[Any]:
    """TRL's GPU kernels for the preference methods (their memory), none for supervised runs."""
    if plan.method == "sft":
        return contextlib.nullcontext()
    from lora_studio.core.estimate.fakes import trl_cuda_kernels

    return trl_cuda_kernels()


def _cast_trainable(model: Any, dtype: torch.dtype) -> None:
    """Replace each trainable parameter by one of ``dtype`` (fake tensors cannot be cast in place)."""
    import torch

    for module in model.modules():
        for name, param in list(module._parameters.items()):
            if param is not None and param.requires_grad and param.dtype != dtype:
                module._parameters[name] = torch.nn.Parameter(torch.empty(param.shape, dtype=dtype))


def build_training_model(plan: Plan, *, layers: int | None = None) -> Any:
    """The engine's model on the meta device: quantized layers, kbit preparation, checkpointing, LoRA."""
    import copy

    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM
    from transformers.integrations import replace_with_bnb_linear
    from transformers.quantizers.base import HfQuantizer

    from lora_studio.core.models import (
        import_bitsandbytes,
        model_construction,
        quantization_config,
        text_config,
    )

    config = copy.deepcopy(plan.shape.config)
    text = text_config(config)
    if layers is not None:
        text.num_hidden_layers = layers
        if getattr(text, "layer_types", None):
            text.layer_types = list(text.layer_types)[:layers]
    if plan.shape.attention == CHUNKED_ATTENTION:
        from lora_studio.core.train.attention import register_chunked_attention

        register_chunked_attention()
    config._attn_implementation = plan.shape.attention
    config.use_cache = False
    dtype = plan.torch_dtype
    with model_construction(), torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.tie_weights()
    quant = quantization_config(plan.quantization, dtype, double_quant=plan.double_quant)
    if quant is not None:
        import_bitsandbytes()
        skip = HfQuantizer.get_modules_to_not_convert(
            model, quant.llm_int8_skip_modules, model._keep_in_fp32_modules
        )
        quant.llm_int8_threshold = 0.0  # outlier columns depend on real weight values
        replace_with_bnb_linear(model, modules_to_not_convert=skip, quantization_config=quant)
        model.is_loaded_in_8bit = plan.quantization == "int8"
        model.is_loaded_in_4bit = plan.quantization != "int8"
        if plan.lean_kbit_prep:
            from lora_studio.core.train.memory_saving import lean_kbit_preparation

            model = lean_kbit_preparation(model, gradient_checkpointing=plan.gradient_checkpointing)
        else:
            model = prepare_model_for_kbit_training(
                model,
                use_gradient_checkpointing=plan.gradient_checkpointing,
                gradient_checkpointing_kwargs={"use_reentrant": False},
            )
    elif plan.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model.config.use_cache = False
    lora = LoraConfig(
        r=plan.lora_r,
        lora_alpha=2 * plan.lora_r,
        lora_dropout=plan.lora_dropout,
        target_modules=plan.targets,
        use_dora=plan.use_dora,
        task_type="CAUSAL_LM",
    )
    with model_construction():
        model = get_peft_model(model, lora)
        if plan.reference_adapter:  # TRL's frozen copy of the starting adapter, DPO's/KTO's reference
            model.add_adapter("ref", lora)
            model.set_adapter("default")
    from lora_studio.core.train.long_context import Savers, apply_savers

    apply_savers(model, Savers(tiled_mlp=plan.tiled_mlp, norm_recompute=plan.norm_recompute))
    model.train()
    return model


def _loss(model: Any, ids: Any, mask: Any, plan: Plan) -> Any:
    """The loss the engine's Trainer computes: the chunked cross-entropy, or ``model(...).loss``.

    The chunked path mirrors ``memory_saving.chunked_forward_loss`` chunk for chunk (same helper
    under checkpointing); it skips only that function's check for label-free chunks, which reads
    tensor values that fake tensors do not have.
    """
    if not plan.chunked_loss:
        return model(input_ids=ids, labels=ids, attention_mask=mask).loss
    import torch.nn.functional as F
    from torch.utils.checkpoint import checkpoint

    from lora_studio.core.train.memory_saving import (
        _chunk_loss_sum,
        causal_parts,
        head_vocab,
        loss_chunk_tokens,
    )

    decoder, head = causal_parts(model)
    size = loss_chunk_tokens(head_vocab(head))
    softcap = getattr(model.config, "final_logit_softcapping", None)
    hidden = decoder(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
    labels = F.pad(ids, (0, 1), value=-100)[..., 1:].reshape(-1)
    flat = hidden.reshape(-1, hidden.shape[-1])
    total = flat.new_zeros((), dtype=flat.dtype).float()
    for start in range(0, flat.shape[0], size):
        chunk = flat[start : start + size]
        part = labels[start : start + size]
        total = total + checkpoint(_chunk_loss_sum, chunk, part, head, softcap, use_reentrant=False)
    return total / labels.numel()


def _autocast(plan: Plan) -> contextlib.AbstractContextManager[Any]:
    """CUDA's bf16/fp16 autocast around the forward (as accelerate wraps ``model.forward``), on CPU."""
    import torch

    if not plan.autocast:
        return contextlib.nullcontext()
    return torch.autocast("cpu", dtype=plan.torch_dtype)


@contextlib.contextmanager
def _free_dora_weight_graphs(model: Any) -> Any:
    """Free each DoRA layer's B·A graph when its forward returns, as a real run does.

    peft's DoRA builds B·A as ``lora_B(lora_A(eye))`` and uses it only detached, so in a real step
    its graph (the saved identity, 16-bit under autocast) dies with the local variable. The
    tracker's module hooks put a backward hook on ``lora_A``'s and ``lora_B``'s outputs, a
    reference cycle (grad_fn -> hook -> closure -> grad_fn) that keeps that graph until Python's
    cyclic collector happens to run: the peak then depended on the collector's timing (1.46-1.85
    GB for SmolLM2-135M at batch 2 x 256). Collecting after each DoRA forward removes it.
    """
    import gc

    from peft.tuners.lora.dora import DoraLinearLayer

    def collect(*_: Any) -> None:
        gc.collect()

    handles = [
        module.register_forward_hook(collect)
        for module in model.modules()
        if isinstance(module, DoraLinearLayer)
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _offload(plan: Plan) -> contextlib.AbstractContextManager[Any]:
    """``save_on_cpu`` for checkpointed runs: saved tensors leave the device until backward.

    Simulated by keeping only their shape and dtype while packed, so the tracker sees them leave.
    """
    import torch

    if not plan.offload:
        return contextlib.nullcontext()

    def pack(tensor: Any) -> Any:
        return (tensor.shape, tensor.dtype, tensor.stride())

    def unpack(packed: Any) -> Any:
        shape, dtype, stride = packed
        return torch.empty_strided(shape, stride, dtype=dtype)

    return torch.autograd.graph.saved_tensors_hooks(pack, unpack)


def _padded_mask(plan: Plan) -> torch.Tensor | None:
    """A real mask with one padded position per row after the first, as a padded batch has."""
    import torch

    if plan.batch_size == 1 and not plan.packing:
        return None
    mask = torch.ones((plan.batch_size, plan.seq_len), dtype=torch.long)
    mask[1:, -1] = 0
    if plan.batch_size == 1:
        mask[0, -1] = 0
    return mask


def _optimizer(plan: Plan, params: list[Any]) -> Any:
    """The optimizer the Trainer builds for ``plan.optimizer`` (paged variants as their non-paged twin)."""
    import torch

    if plan.optimizer == "adamw_torch":
        # CUDA's default multi-tensor (foreach) path; its temporaries are what a GPU run allocates
        return torch.optim.AdamW(params, lr=1e-4, foreach=True)
    from lora_studio.core.models import import_bitsandbytes

    bnb = import_bitsandbytes()
    bits = 32 if plan.optimizer == "paged_adamw_32bit" else 8
    return bnb.optim.AdamW(params, lr=1e-4, optim_bits=bits, is_paged=False)
