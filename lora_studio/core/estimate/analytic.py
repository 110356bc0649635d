"""How much GPU memory a LoRA/QLoRA run needs, before anything is loaded: the arithmetic of a plan.

The estimate mirrors the engine's real choices (``core/models.load_model`` quantization,
``prepare_model_for_kbit_training``, peft fp32 adapters, the Trainer's optimizers, sdpa, the
causal-LM loss with its fp32 upcast). Parameter counts and weight bytes are exact (tested against
loaded models); activations follow an enumeration of the tensors autograd saves, checked against
precise mode (``core/estimate/precise.py``) and measured saved tensors (``bench/estimate_accuracy.py``).
The preference methods follow TRL's trainers: twice the rows for a pair method, DPO's/KTO's
reference forward without a graph, TRL's fused log-prob head, ORPO's/SimPO's full logits.
After the first call for a model (which builds it on the meta device) an estimate is arithmetic,
so the GUI can recompute on every edit. Formulas and sources: ``docs/memory.md``.
"""

from __future__ import annotations

from dataclasses import replace
from functools import lru_cache
from typing import TYPE_CHECKING

from lora_studio.core.estimate.explain import explain
from lora_studio.core.estimate.model import Module
from lora_studio.core.estimate.request import (
    ALLOCATOR_SLACK,
    CHUNKED_ATTENTION,
    CUDA_CONTEXT_BYTES,
    MemoryEstimate,
    Plan,
)
from lora_studio.core.estimate.terms import (
    attention_block_bytes,
    dora_forward_temp_bytes,
    dora_weight_copies,
    full_logits_bytes,
    fused_head_bytes,
    layer_backward_temp_bytes,
    layer_forward_temp_bytes,
    layer_saved_per_token,
    logits_peak_bytes,
    lora_tensor_sizes,
    mlp_tile_bytes,
    optimizer_bytes,
    optimizer_step_temp_bytes,
    outside_saved_bytes,
    quantized_weight_bytes,
    unquantized_weight_bytes,
)
from lora_studio.core.train import loss_chunk_tokens

if TYPE_CHECKING:
    from collections.abc import Iterable


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
    if plan.reference_adapter:  # TRL's frozen fp32 copy of the starting adapter, the reference's
        lora_bytes += 4 * trainable
    grads = 4 * trainable
    optim = optimizer_bytes(sizes, plan.optimizer)

    activations, logits, temporaries, per_layer, moment = _activation_terms(
        plan, grads=grads, trainable=trainable
    )
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
    return MemoryEstimate(
        parameters=parameters,
        bytes=sizes_out,
        device_bytes=device_bytes,
        fits=None if device_bytes is None else total <= device_bytes,
        advice=[],
        explanations=explain(plan, per_layer_token=per_layer, masked=_masked(plan), moment=moment),
        model=shape.name,
        dtype=plan.dtype_name,
        device=plan.device,
        notes=_notes(plan),
        peak_moment=moment,
        details={
            "weights_as_loaded": weights_loaded,
            "activations_per_token_per_layer": per_layer,
            "logits_per_token": logits // plan.tokens,
            "tokens": plan.tokens,
            "reference_forward": _reference_temp(plan) if plan.reference else 0,
        },
    )


def _masked(plan: Plan) -> bool:
    """Whether transformers builds an attention mask (never for chunked attention: per row)."""
    return plan.masked and plan.shape.attention != CHUNKED_ATTENTION


def _activation_terms(plan: Plan, *, grads: int, trainable: int) -> tuple[int, int, int, int, str]:
    """(activations, logits, temporaries, saved bytes per token of the largest layer, peak moment).

    A step's peak is the largest of a few moments, all on top of the static bytes: the loss (saved
    activations + logits), the start of the last layer's backward (+ its recomputation under
    checkpointing + gradient buffers), DoRA's weight-sized forward work (under checkpointing it
    reruns in a layer's recomputation, with the gradients already there), the optimizer step, and
    for DPO and KTO the reference forward (no graph) while the policy's graph waits for backward.
    ``temporaries`` is what the largest moment needs beyond the loss phase, so the parts add up
    to the total; the moment is named ("loss", "layer", "step", "dora" or "reference").
    """
    shape = plan.shape
    tokens, stream = plan.tokens, plan.stream_bytes
    chunked = shape.attention == CHUNKED_ATTENTION  # its masks are 2D (per row), never seq × seq
    masked = _masked(plan)
    eager = shape.attention == "eager"
    needs_mask = masked or eager
    mask_kinds = (1 if needs_mask else 0) + (1 if shape.sliding_window and needs_mask else 0)
    mask_bytes = stream if eager else 1  # eager adds a float mask; sdpa takes a boolean one
    masks = mask_kinds * mask_bytes * plan.rows * plan.seq_len**2
    per_layer = _per_layer_tokens(plan, masked=masked)
    outside = outside_saved_bytes(
        shape,
        tokens=tokens,
        seq_len=plan.seq_len,
        stream=stream,
        masks=masks,
        norm_recompute=plan.norm_recompute,
    )
    dora_copies = _dora_copies(plan, plan.lora)
    head_saved, logits = _head_terms(plan)
    outside += head_saved
    layer_temp = layer_backward_temp_bytes(
        shape, tokens=tokens, tiled_mlp=plan.tiled_mlp, norm_recompute=plan.norm_recompute
    )
    if plan.tiled_mlp:
        mlp_leaves = {
            leaf for key, _, leaves in shape.layer.groups if key.startswith("mlp") for leaf in leaves
        }
        adapters = len({m.leaf for m in plan.lora} & mlp_leaves)
        layer_temp += mlp_tile_bytes(
            shape, tokens=tokens, stream=stream, adapters=adapters, dropout=plan.dropout
        )
    if chunked:
        # a block's scores exist while attention runs its backward, after the MLP's backward has
        # freed the MLP's buffers and its saved intermediates (a tiled MLP saves none)
        block = attention_block_bytes(shape, rows=plan.rows, seq_len=plan.seq_len, stream=stream)
        mlp_saved = 0
        if not plan.tiled_mlp:
            without_mlp = _per_layer_tokens(replace(plan, tiled_mlp=True), masked=masked)
            mlp_saved = (max(per_layer) - max(without_mlp)) * tokens
        layer_temp = max(layer_temp, block - mlp_saved)
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
    reference_phase = activations + _reference_temp(plan) if plan.reference else 0
    phases = {
        "loss": loss_phase,
        "layer": layer_phase,
        "step": step_phase,
        "dora": dora_phase,
        "reference": reference_phase,
    }
    moment = max(phases, key=lambda name: phases[name])  # the first of equals: the loss
    temporaries = phases[moment] - loss_phase
    return activations, logits, temporaries, max(per_layer, default=0), moment


def _head_bytes(plan: Plan) -> int:
    """Bytes per element of the output head's weight: fp32 in fp32 runs and after peft's preparation."""
    return 4 if plan.compute_bytes == 4 or plan.upcast else 2


def _head_terms(plan: Plan) -> tuple[int, int]:
    """(bytes the loss keeps for backward beyond the decoder's, peak bytes of the loss itself).

    SFT: the engine's chunked cross-entropy (or the standard one over all logits). DPO and KTO:
    TRL's fused log-probability head, which keeps a copy of the final hidden states (all positions
    but the last) and works in tiles. ORPO and SimPO: the full logits of every row, after the output
    head kept its input (under autocast a 16-bit copy, and of an fp32 head also its weight).
    """
    shape, tokens, stream = plan.shape, plan.tokens, plan.stream_bytes
    head_bytes = _head_bytes(plan)
    if plan.method == "sft":
        loss_tokens = min(tokens, loss_chunk_tokens(shape.vocab)) if plan.chunked_loss else tokens
        logits = logits_peak_bytes(
            shape, tokens=loss_tokens, head_bytes=head_bytes, softcap=not plan.chunked_loss
        )
        # the final hidden states, input of every loss chunk
        return (tokens * shape.hidden * stream if plan.chunked_loss else 0), logits
    if plan.fused_head:
        positions = plan.rows * (plan.seq_len - 1)
        forward, backward = _fused_head(plan, positions)
        copy = positions * shape.hidden * stream
        # the forward also holds the decoder's output it copied from (and the copy, when offloaded)
        forward += tokens * shape.hidden * stream + (copy if plan.offload else 0)
        if plan.offload:
            # save_on_cpu moves every tensor the head saves, its weight included, to host memory
            # and back for backward: a second copy of the output head's weight while it runs
            backward += copy + shape.vocab * shape.hidden * head_bytes
        return copy, max(forward, backward)
    compute = 2 if plan.autocast else stream
    elements = plan.rows * plan.seq_len * shape.vocab
    saved = tokens * shape.hidden * compute
    if plan.autocast and head_bytes == 4:
        saved += shape.vocab * shape.hidden * 2
    if shape.logit_softcap:  # the model caps its logits itself: tanh keeps its output
        saved += elements * (2 if plan.autocast else head_bytes)
    logits_bytes = 4 if plan.autocast else head_bytes  # accelerate returns 16-bit outputs in fp32
    logits = full_logits_bytes(elements=elements, logits_bytes=logits_bytes, method=plan.method)
    if plan.offload:
        # save_on_cpu brings the output head's saved weight (and input) back for its backward,
        # while the logits' gradient in the head's dtype exists
        matmul = 2 if plan.autocast else head_bytes
        head_backward = (elements + shape.vocab * shape.hidden) * matmul + 2 * tokens * shape.hidden * compute
        logits = max(logits, head_backward)
    return saved, logits


def _fused_head(plan: Plan, positions: int) -> tuple[int, int]:
    compute = 2 if plan.autocast else plan.stream_bytes
    return fused_head_bytes(
        plan.shape,
        positions=positions,
        compute=compute,
        stream=plan.stream_bytes,
        head_bytes=_head_bytes(plan),
    )


def _reference_temp(plan: Plan) -> int:
    """The reference forward's own transient bytes: one decoder layer at a time, then the fused head.

    DPO's reference reads the same chosen + rejected rows as the policy; KTO's reads its answers
    and then its KL rows, one batch at a time.
    """
    shape, stream = plan.shape, plan.stream_bytes
    tokens = plan.rows * plan.seq_len
    layer = layer_forward_temp_bytes(shape, tokens=tokens, seq_len=plan.seq_len, stream=stream)
    positions = plan.rows * (plan.seq_len - 1)
    head = (
        _fused_head(plan, positions)[0] + tokens * shape.hidden * stream + positions * shape.hidden * stream
    )
    return max(layer, head)


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
        if plan.dropout:
            discount += adapters * width  # the 1-byte dropout masks
        if plan.quantization == "int8" and not (adapters and plan.stream_bytes == 4 and not plan.dropout):
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
                dropout=plan.dropout,
                use_dora=plan.use_dora,
                masked=masked,
                int8=plan.quantization == "int8",
                seq_len=plan.seq_len,
                autocast=plan.autocast,
                dora_dropout=plan.lora_dropout > 0,
                tiled_mlp=plan.tiled_mlp,
                norm_recompute=plan.norm_recompute,
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
