"""The byte arithmetic of the memory estimate: one pure function per component.

Every formula mirrors what the libraries really allocate (bitsandbytes 0.50 storage layouts,
peft's fp32 adapters, autograd's saved tensors for a llama-style decoder layer under sdpa); the
derivations and sources are in ``docs/memory.md``. Inputs are plain numbers and the cached
:class:`~lora_studio.core.estimate.model.ModelShape`, so these run in microseconds.
"""

from __future__ import annotations

from collections.abc import Iterable
from math import ceil

from lora_studio.core.estimate.model import ModelShape, Module
from lora_studio.core.estimate.request import CHUNKED_ATTENTION

#: bitsandbytes 4-bit: one absmax per 64 weights; double quant re-quantizes absmax in blocks of 256.
BLOCK_4BIT = 64
BLOCK_NESTED = 256
#: Per quantized layer: the 16-entry fp32 NF4/FP4 code (64 B), and with double quant also the
#: 256-entry fp32 dynamic code (1 KiB) and a fp32 offset.
CODE_4BIT_BYTES = 16 * 4
CODE_NESTED_BYTES = 256 * 4 + 4
#: bitsandbytes 8-bit optimizers keep tensors under 4096 elements in 32-bit, and quantize the rest
#: in blocks of 256 with one fp32 absmax per block and state.
OPTIM_8BIT_MIN_SIZE = 4096
OPTIM_8BIT_BLOCK = 256
#: ...and two 256-entry fp32 quantization maps, shared by all parameters of the optimizer.
OPTIM_8BIT_MAPS = 2 * 256 * 4
#: Transient bytes per token while the last decoder layer starts its backward (gradients of its
#: activations, the recomputed forward's leftovers), per element of the MLP width and of the hidden
#: width. Fitted to precise mode on llama shapes (bf16 and NF4, dropout on/off); docs/memory.md.
LAYER_TEMP_PER_MLP = 6.0
LAYER_TEMP_PER_HIDDEN = 8.0
#: With tiled MLP and recomputed norms (``long_context``): the residual stream's gradients that
#: one layer's backward holds at once, bytes per hidden element per token (precise mode: the
#: incoming and outgoing gradients and the tile outputs' concatenation, 16-bit each).
SAVER_TEMP_PER_HIDDEN = 6.0
#: One MLP tile's peak, bytes per 16-bit intermediate element of the tile (precise mode: gate,
#: up, activation and product kept for the tile's backward, plus the gradients being formed).
MLP_TILE_PER_MLP = 12.0
#: One decoder layer's forward without a graph (a preference method's reference forward), per
#: token and per byte of the residual stream: at its widest (the gated MLP's product) the
#: activation, the up projection and their product, plus the layer's input, its normed copy and
#: the attention output. Measured in precise mode (llama shapes, bf16 / NF4 / fp32 / peft-prepared):
#: 3.0 and 3.5 within 1% where the MLP is at least 2.5x the hidden width (every catalog model).
FORWARD_TEMP_PER_MLP = 3.0
FORWARD_TEMP_PER_HIDDEN = 3.5
#: TRL's fused LM head (``trl.kernels.chunked_logprob``): one buffer of 4,096 positions × 32,768
#: vocabulary entries in the compute dtype, whatever the vocabulary (``TOKEN_CHUNK_SIZE`` ×
#: ``_CHUNKED_LOGPROB_CHUNK_SIZE`` in TRL 1.x).
FUSED_TILE_TOKENS = 4096
FUSED_TILE_VOCAB = 32768


def quantized_weight_bytes(modules: Iterable[Module], quantization: str, double_quant: bool) -> int:
    """Storage of the Linear layers bitsandbytes replaces, quant-state tensors included."""
    total = 0
    for module in modules:
        if not module.quantizable or module.embedding:
            continue
        n = module.numel
        if quantization == "int8":
            total += n + 4 * module.out_features  # int8 weight + fp32 scale per output row
        elif quantization in ("nf4", "fp4"):
            blocks = ceil(n / BLOCK_4BIT)
            total += ceil(n / 2) + CODE_4BIT_BYTES
            if double_quant:
                total += blocks + 4 * ceil(blocks / BLOCK_NESTED) + CODE_NESTED_BYTES
            else:
                total += 4 * blocks
    return total


def quantized_params(shape: ModelShape, quantization: str) -> int:
    return 0 if quantization == "none" else shape.quantizable_params


def unquantized_weight_bytes(
    shape: ModelShape, quantization: str, dtype_bytes: int, *, prepared: bool
) -> int:
    """Everything bitsandbytes leaves alone (embeddings, norms, lm_head, biases) plus buffers.

    ``prepared`` applies ``prepare_model_for_kbit_training``, which casts every remaining 16-bit
    parameter to fp32 for quantized models.
    """
    numel = shape.total_params - quantized_params(shape, quantization)
    upcast = prepared and quantization != "none"
    per = 4 if upcast else dtype_bytes
    fp32 = min(shape.fp32_params, numel)
    return (numel - fp32) * per + fp32 * 4 + shape.buffer_bytes


def lora_tensor_sizes(modules: Iterable[Module], r: int, use_dora: bool) -> list[int]:
    """Element counts of every trainable tensor peft adds: A (r×in), B (out×r), DoRA magnitude."""
    sizes: list[int] = []
    for module in modules:
        sizes += [r * module.in_features, module.out_features * r]
        if use_dora:
            sizes.append(module.in_features if module.embedding else module.out_features)
    return sizes


def optimizer_bytes(sizes: Iterable[int], optimizer: str) -> int:
    """AdamW's two moments: fp32 (8 B/param) or bitsandbytes 8-bit blockwise (2 B + scales)."""
    total = 0
    quantized = False
    eight_bit = optimizer.endswith("8bit")
    for n in sizes:
        if eight_bit and n >= OPTIM_8BIT_MIN_SIZE:
            total += 2 * n + 2 * 4 * ceil(n / OPTIM_8BIT_BLOCK)
            quantized = True
        else:
            total += 8 * n
    return total + (OPTIM_8BIT_MAPS if quantized else 0)


def optimizer_step_temp_bytes(trainable: int, optimizer: str) -> int:
    """torch's multi-tensor AdamW allocates ~2 fp32 copies of all parameters during ``step``."""
    return 8 * trainable if optimizer in ("adamw_torch",) else 0


def layer_saved_per_token(
    shape: ModelShape,
    targeted: set[str],
    *,
    stream: int,
    r: int,
    dropout: bool,
    use_dora: bool,
    masked: bool,
    int8: bool,
    seq_len: int,
    autocast: bool = False,
    dora_dropout: bool | None = None,
    tiled_mlp: bool = False,
    norm_recompute: bool = False,
) -> int:
    """Bytes autograd keeps per token for one decoder layer (no checkpointing).

    With the long-context savers (``core/train/long_context.py``): a tiled MLP keeps, per token,
    only its 16-bit input (the post-attention norm's output) — its intermediates and its adapters'
    inputs exist for one tile (``mlp_tile_bytes``); recomputed norms keep their 16-bit output for
    the next matmul instead of an fp32 copy of their input.

    ``stream`` is the residual stream's bytes per element: 4 when compute is fp32 or when
    ``prepare_model_for_kbit_training`` made the norms fp32, else 2. ``targeted`` holds the leaf
    names of the layer's Linear layers that carry a LoRA adapter. With sdpa the cost is linear in
    the sequence; eager attention (models without sdpa support) keeps seq_len² scores per head.
    Under autocast every matmul input is saved as a 16-bit copy, so LoRA inputs cost 2 bytes each;
    the base layers keep the stream's dtype (bitsandbytes' 4-bit matmul is not autocast, so after
    peft's fp32 preparation the layer computes in fp32).

    ``dropout`` says whether LoRA dropout acts (saves masks); ``dora_dropout`` (default: the same)
    whether a dropout module is there at all, which alone sends DoRA down its recomputing path:
    TRL's preference trainers set dropout to p=0 without removing the module.
    """
    if dora_dropout is None:
        dora_dropout = dropout
    layer = shape.layer
    h, inter, d = shape.hidden, shape.intermediate, shape.head_dim
    qd, kvd = shape.heads * d, shape.kv_heads * d
    # RMSNorm saves its fp32 input and 1/rms per token; recomputed, only its output is kept (by
    # what reads it: the matmuls, the next tile)
    total = layer.hidden_norms * (stream * h if norm_recompute else 4 * h + 4)
    if layer.qk_norm and not norm_recompute:
        total += 4 * (qd + kvd) + 4 * (shape.heads + shape.kv_heads)
    if shape.attention == "eager":
        # q and the repeated k/v heads for the two matmuls; fp32 softmax output and its cast copy
        # (+ the tanh output of attention soft-capping) for every query × key position
        total += 3 * stream * qd
        scores = (4 + stream + (stream if shape.attn_softcap else 0)) * shape.heads * seq_len
        total += scores
    elif shape.attention == CHUNKED_ATTENTION:
        # chunked attention (core/train/attention.py): each block of queries is checkpointed, so
        # per token only q, k, v (not repeated) and the output; masks are per block, from 2D
        total += stream * qd + 2 * stream * kvd + stream * qd
    else:
        kv_width = qd if masked else kvd  # with a mask, transformers repeats k/v heads for sdpa
        v_bytes = stream * kv_width
        if layer.fused_qkv and not masked:
            v_bytes = stream * (qd + 2 * kvd)  # v is a view that keeps the fused projection alive
        total += stream * qd + stream * kv_width + v_bytes + stream * qd + 4 * shape.heads
        if masked:  # sdpa turns the boolean mask into an additive one per call and saves it
            total += stream * seq_len  # (batch × seq × seq) per layer = seq bytes × stream per token
    if not tiled_mlp:
        total += (3 if layer.gated_mlp else 1) * stream * inter
    for key, width, leaves in layer.groups:
        if tiled_mlp and key.startswith("mlp"):
            continue  # inside the tiles
        adapters = sum(1 for leaf in leaves if leaf in targeted)
        # o_proj reads the sdpa output, which sdpa saves itself (eager's output is a fresh copy)
        already_kept = key == "attn_out" and shape.attention != "eager"
        if use_dora:  # DoRA saves the LoRA output and the base output it rescales
            outs = sum(
                m.out_features for m in shape.layer_modules(0) if m.leaf in leaves and m.leaf in targeted
            )
            # the LoRA output is fp32, or 16-bit from an autocast matmul (checked in precise mode)
            lora_out = 2 if autocast else 4
            total += (lora_out + (4 if dora_dropout and not autocast else stream)) * outs
        if autocast:
            total += adapters * (2 + (1 if dropout else 0)) * width + adapters * 2 * r
            continue
        if dropout:
            total += adapters * 5 * width  # fp32 dropout output + bool mask per adapter
        elif stream != 4:
            total += adapters * 4 * width  # one fp32 copy of the input per adapter
        elif adapters and not already_kept:
            total += 4 * width  # fp32 input shared by the adapters
        total += adapters * 4 * r  # lora_A output, read by lora_B's backward
        input_kept = already_kept or (adapters and stream == 4 and not dropout)
        if int8 and not input_kept:
            total += stream * width  # bitsandbytes' int8 matmul keeps its input for backward
    return total


def dora_weight_copies(modules: Iterable[Module], *, dropout: bool, base_fp32: bool, autocast: bool) -> int:
    """The weight copies autograd keeps for DoRA's recomputed base output.

    With dropout, peft's DoRA does not reuse the base layer's output: it recomputes
    ``F.linear(dropout(x), W)`` from ``dequantize(W).to(x.dtype)``, an fp32 copy of each adapted
    weight (peft casts ``x`` to the fp32 adapter dtype first), and that matmul keeps the weight it
    read for the input's gradient. Without autocast that is the fp32 copy itself, unless the base
    weight already is fp32 (``.to`` is then a no-op and the parameter is kept, no new bytes).
    Under autocast the matmul reads, and keeps, its own 16-bit cast of that copy (2 bytes per
    element; the fp32 copy dies when the forward returns). Without dropout DoRA rescales the base
    layer's own output and copies nothing. The first layer's attention inputs need no gradient, so
    their copies are not kept at all (``_first_layer_discount``).
    """
    per_element = _dora_copy_per_element(dropout=dropout, base_fp32=base_fp32, autocast=autocast)
    return sum(per_element * m.numel for m in modules if not m.embedding)


def _dora_copy_per_element(*, dropout: bool, base_fp32: bool, autocast: bool) -> int:
    if not dropout:
        return 0
    if autocast:
        return 2
    return 0 if base_fp32 else 4


def dora_forward_temp_bytes(
    modules: Iterable[Module], *, dropout: bool, base_fp32: bool, autocast: bool
) -> int:
    """The largest adapted layer's transient DoRA work in the forward, beyond the saved activations.

    peft rebuilds B·A on every call as ``lora_B(lora_A(eye))`` with an in×in fp32 identity, then
    renormalises ``W + s·B·A`` in fp32: B·A, the fp32 weight copy (none when the base weight is
    fp32), ``s·B·A`` and the sum, 4 bytes per weight element each. lora_A keeps the identity for
    its weight's gradient until the forward returns, although B·A is only used detached.

    Under autocast lora_A reads (and keeps) a 16-bit cast of the identity and B·A comes out 16-bit,
    so there are two peaks: while building B·A (fp32 identity + its cast + 16-bit B·A) and while
    renormalising (the cast + the four fp32 weight-sized tensors).

    The weight copy kept for backward (``dora_weight_copies``) is already counted: it is the fp32
    copy itself without autocast; under autocast its 16-bit cast only appears after these peaks.
    Under gradient checkpointing the same work reruns in each layer's recomputation, which keeps
    the identity like a plain forward does (measured), on top of the recomputed layer.
    """
    copy = 0 if base_fp32 else 4
    saved = _dora_copy_per_element(dropout=dropout, base_fp32=base_fp32, autocast=autocast)

    def one(m: Module) -> int:
        square, numel = m.in_features**2, m.numel
        if autocast:
            peak = max(6 * square + 2 * numel, 2 * square + (12 + copy) * numel)
        else:
            peak = 4 * square + (12 + copy) * numel
        return peak - saved * numel

    return max((one(m) for m in modules if not m.embedding), default=0)


def outside_saved_bytes(
    shape: ModelShape, *, tokens: int, seq_len: int, stream: int, masks: int, norm_recompute: bool = False
) -> int:
    """Saved tensors outside the decoder layers: final norm, RoPE cos/sin, boolean attention masks."""
    final_norm = tokens * (stream * shape.hidden if norm_recompute else 4 * shape.hidden + 4)
    rope = 2 * seq_len * shape.head_dim * stream
    return final_norm + rope + masks


def logits_peak_bytes(shape: ModelShape, *, tokens: int, head_bytes: int, softcap: bool = True) -> int:
    """The loss phase: logits, their fp32 copy, the saved log-softmax and two fp32 gradients.

    Forward holds logits (lm_head dtype) + fp32 copy + log-softmax output; backward holds the
    saved log-softmax output + the NLL gradient + the log-softmax gradient (12 B per element).
    A final logit soft-cap (Gemma 2) keeps its tanh output too.
    """
    forward = head_bytes + (4 if head_bytes != 4 else 0) + 4
    backward = 12
    if shape.logit_softcap and softcap:
        forward += 2 * head_bytes
        backward += head_bytes
    return tokens * shape.vocab * max(forward, backward)


def attention_block_bytes(shape: ModelShape, *, rows: int, seq_len: int, stream: int) -> int:
    """One block of chunked attention's recompute and backward: its scores, fp32 softmax, the
    soft-capped copy and their gradients, for ``CHUNK_SCORE_ELEMENTS`` score elements at most."""
    from lora_studio.core.train.attention import CHUNK_SCORE_ELEMENTS

    elements = min(CHUNK_SCORE_ELEMENTS, rows * shape.heads * seq_len * seq_len)
    per_element = 4 + 2 * stream + (stream if shape.attn_softcap else 0)
    return elements * per_element


def layer_backward_temp_bytes(
    shape: ModelShape, *, tokens: int, tiled_mlp: bool = False, norm_recompute: bool = False
) -> int:
    """Transient buffers while one decoder layer runs backward (gradients of its activations).

    Only matters when it outgrows the loss phase: with gradient checkpointing and a small
    vocabulary, or at short sequences with a wide MLP. With the long-context savers the MLP's
    and the norms' gradients exist for one tile at a time; what grows with the sequence is the
    residual stream's gradients (``SAVER_TEMP_PER_HIDDEN``).
    """
    if tiled_mlp and norm_recompute:
        return round(tokens * SAVER_TEMP_PER_HIDDEN * shape.hidden)
    mlp = 0.0 if tiled_mlp else LAYER_TEMP_PER_MLP * shape.intermediate
    return round(tokens * (mlp + LAYER_TEMP_PER_HIDDEN * shape.hidden))


def mlp_tile_bytes(shape: ModelShape, *, tokens: int, stream: int, adapters: int, dropout: bool) -> int:
    """One MLP tile's recompute and backward: its intermediates, its adapters' inputs, their
    gradients (``MLP_TILE_PER_MLP`` bytes per intermediate element of the tile)."""
    from lora_studio.core.train.long_context import mlp_tile_tokens

    tile = min(tokens, mlp_tile_tokens(shape.intermediate))
    per_token = MLP_TILE_PER_MLP * shape.intermediate + (3 if dropout else 0) * adapters * shape.hidden
    return round(tile * per_token * stream / 2)


def fused_head_bytes(
    shape: ModelShape, *, positions: int, compute: int, stream: int, head_bytes: int
) -> tuple[int, int]:
    """(forward, backward) transient bytes of TRL's fused log-probability head over ``positions``.

    Forward: the tile buffer, the 16-bit copies of a chunk of hidden states and of the head's
    weight rows when autocast computes in another dtype than they are stored, and seven fp32
    statistics per position. Backward: a second tile buffer and those copies, plus the hidden
    states' gradient, accumulated in fp32. The head never holds ``positions × vocab`` logits.
    """
    tokens = min(positions, FUSED_TILE_TOKENS)
    tile = tokens * FUSED_TILE_VOCAB * compute
    casts = (tokens * shape.hidden * compute if stream != compute else 0) + (
        min(shape.vocab, FUSED_TILE_VOCAB) * shape.hidden * compute if head_bytes != compute else 0
    )
    forward = tile + casts + 7 * 4 * positions
    backward = tile + casts + 4 * positions * shape.hidden
    return forward, backward


def full_logits_bytes(*, elements: int, logits_bytes: int, method: str) -> int:
    """Peak bytes of ORPO's or SimPO's loss over the full logits (``elements`` = rows × seq × vocab).

    TRL's ORPO/CPO trainers take ``model(...).logits`` whole: accelerate hands them over in fp32
    when training under autocast (``logits_bytes`` 4). SimPO's fused log-softmax keeps the logits
    for backward, which then allocates their gradient: 2 per element. ORPO also takes the
    cross-entropy of the chosen half, whose gradient reaches the logits through two slices: at the
    moment autograd adds it to the log-softmax's gradient, three logits-sized tensors exist.
    """
    return (3 if method == "orpo" else 2) * logits_bytes * elements


def layer_forward_temp_bytes(shape: ModelShape, *, tokens: int, seq_len: int, stream: int) -> int:
    """Transient bytes of one decoder layer's forward without a graph, at its widest point.

    The layer computes in the stream's dtype (bitsandbytes' 4-bit matmul is not autocast, so after
    peft's fp32 preparation that is fp32 too). A fused gate/up projection (Phi-3) keeps its whole
    output while the product is formed: one MLP width more; an ungated MLP one less. Eager
    attention adds its scores for every query × key position while they exist.
    """
    mlp = FORWARD_TEMP_PER_MLP
    leaves = {m.leaf for m in shape.layer_modules(0)}
    if "gate_up_proj" in leaves:
        mlp += 1
    elif not shape.layer.gated_mlp:
        mlp -= 1
    per_token = stream * (mlp * shape.intermediate + FORWARD_TEMP_PER_HIDDEN * shape.hidden)
    if shape.attention == "eager":
        per_token += (4 + stream + (stream if shape.attn_softcap else 0)) * shape.heads * seq_len
    return round(tokens * per_token)
