"""One line per memory component saying what it is made of, for the GUI's bar and ``estimate --explain``."""

from __future__ import annotations

from lora_studio.core.estimate.request import ALLOCATOR_SLACK, CUDA_CONTEXT_BYTES, METHOD_NAMES, Plan, gb
from lora_studio.core.estimate.terms import FUSED_TILE_TOKENS, FUSED_TILE_VOCAB
from lora_studio.core.train import loss_chunk_tokens

#: What the largest moment beyond the loss is, by the name ``analytic`` gives it.
_MOMENTS = {
    "loss": "none: the loss is the step's peak",
    "step": "the optimizer step's fp32 working copies of the adapters",
    "reference": "the reference forward (adapter off, no graph), one decoder layer at a time and then "
    "the log-prob head, while the policy's activations wait for backward",
}


def explain(plan: Plan, *, per_layer_token: int, masked: bool, moment: str = "layer") -> dict[str, str]:
    """One line per component saying what it is made of (``moment``: the peak beyond the loss)."""
    shape = plan.shape
    quant = plan.quantization
    if quant in ("nf4", "fp4"):
        scales = (
            "absmax per 64 weights stored in 8 bits, with a fp32 scale per 256 blocks (double quant)"
            if plan.double_quant
            else "one fp32 absmax per 64 weights"
        )
        weights_q = f"{quant}: 4 bits per weight + {scales}, for every Linear layer except lm_head"
    elif quant == "int8":
        weights_q = (
            "LLM.int8: 1 byte per weight + one fp32 scale per output row, every Linear layer except lm_head"
        )
    else:
        weights_q = "no quantization: every weight is in the next line"
    if plan.upcast:
        kept = "embeddings, norms, lm_head and biases upcast to fp32 by prepare_model_for_kbit_training"
    elif quant != "none":
        kept = f"embeddings, norms, lm_head and biases in {plan.dtype_name} (lean k-bit preparation)"
    else:
        kept = f"all weights in {plan.dtype_name}"
    targets = plan.targets if isinstance(plan.targets, str) else ", ".join(plan.targets)
    optimizer = {
        "adamw_torch": "AdamW: two fp32 moments, 8 bytes per trainable parameter",
        "paged_adamw_32bit": "paged AdamW 32-bit: 8 bytes per trainable parameter, pageable to CPU memory",
        "adamw_bnb_8bit": "8-bit AdamW: 2 bytes per parameter + fp32 scale per 256 (tensors < 4096 stay 32-bit)",
        "paged_adamw_8bit": "paged 8-bit AdamW: ~2 bytes per parameter, pageable to CPU memory",
    }[plan.optimizer]
    attention = shape.attention + (", padded batch: mask + key/value heads repeated" if masked else "")
    lora_inputs = "16-bit LoRA inputs under autocast" if plan.autocast else "fp32 LoRA inputs"
    if plan.gradient_checkpointing:
        where = "in CPU memory (offloaded)" if plan.offload else f"{plan.stream_bytes} B × hidden per token"
        activations = (
            f"gradient checkpointing: each layer keeps only its input ({where}); "
            f"without it {per_layer_token / 1024:.1f} KiB per token per layer"
        )
    else:
        activations = (
            f"{per_layer_token / 1024:.1f} KiB per token per layer saved for backward × {shape.layers} layers × "
            f"{plan.tokens} tokens ({attention}; {lora_inputs})"
        )
    activations += _rows(plan)
    overhead = (
        f"CUDA context {gb(CUDA_CONTEXT_BYTES)} + {ALLOCATOR_SLACK:.0%} allocator slack"
        if plan.device == "cuda"
        else "none on CPU"
    )
    return {
        "weights_quantized": weights_q,
        "weights_unquantized": kept,
        "lora_weights": f"r={plan.lora_r} adapters on {len(plan.lora)} layers ({targets}), fp32 as peft keeps them"
        + (" + DoRA magnitudes" if plan.use_dora else "")
        + (", and a frozen copy of the starting adapter as the reference" if plan.reference_adapter else ""),
        "gradients": "one fp32 gradient per trainable parameter",
        "optimizer": optimizer,
        "activations": activations,
        "logits": _logits(plan),
        "temporaries": _MOMENTS.get(moment)
        or (
            "backward buffers of the last layer"
            + (" (recomputed by checkpointing)" if plan.gradient_checkpointing else "")
            + (" and DoRA's weight-sized work" if plan.use_dora else "")
            + ", beyond what the loss phase already holds"
        ),
        "overhead": overhead,
        "total": "sum of the above: the peak of a training step",
    }


def _rows(plan: Plan) -> str:
    """Which sequences a preference method's step runs with a graph (nothing for SFT)."""
    if plan.method == "kto":
        return f"; KTO: {plan.batch_size} answers (its KL batch and the reference run without a graph)"
    if plan.method != "sft":
        return (
            f"; {METHOD_NAMES[plan.method]}: {plan.batch_size} pairs = {plan.rows} sequences (chosen and rejected) "
            f"of up to {plan.seq_len} tokens"
        )
    return ""


def _logits(plan: Plan) -> str:
    shape, tokens = plan.shape, plan.tokens
    if plan.method == "sft":
        return (
            f"chunked loss, {min(tokens, loss_chunk_tokens(shape.vocab))} of {tokens} tokens per chunk"
            if plan.chunked_loss
            else f"{tokens} tokens"
        ) + f" × {shape.vocab} vocab: logits + fp32 copy + log-softmax, then two fp32 gradients in backward"
    if plan.fused_head:
        return (
            f"TRL's fused log-prob head: tiles of {min(tokens, FUSED_TILE_TOKENS)} positions × "
            f"{FUSED_TILE_VOCAB} vocab, never all {tokens} × {shape.vocab} logits; its backward adds an "
            "fp32 gradient of the hidden states (the reference forward reuses the tiles)"
            + (
                "; offloading also sends the head's saved weight to host memory and back for backward"
                if plan.offload
                else ""
            )
        )
    dtype = "fp32" if plan.autocast or plan.compute_bytes == 4 else plan.dtype_name
    parts = "the logits and their gradient" + (
        ", and the chosen half's cross-entropy with its own gradients" if plan.method == "orpo" else ""
    )
    return (
        f"{METHOD_NAMES[plan.method]} builds the full logits: {plan.rows} sequences × {plan.seq_len} × "
        f"{shape.vocab} vocab in {dtype}; {parts} (no reference forward)"
    )
