"""Attention without an L×L matrix, for models that transformers runs with eager attention only.

Why: some architectures cannot use SDPA in transformers (Gemma 2: its attention logits are
soft-capped, which SDPA cannot do), so they run ``eager_attention_forward``. That keeps batch ×
heads × L × L scores — and their soft-capped and fp32 softmax copies — for backward, and
transformers first builds a batch × L × L additive float mask. At 32k tokens that is tens of GB,
however small the rest of the step is.

:func:`chunked_attention_forward` computes the same thing a block of query rows at a time. Each
block runs under its own non-reentrant checkpoint, so forward keeps only the block's output and
backward recomputes one block's scores at a time: the widest tensor is batch × heads × rows ×
keys, rows chosen to keep it near :data:`CHUNK_SCORE_ELEMENTS`. Its mask is built per block from
what transformers knows cheaply — the 2D padding mask, or the packed-sequence ids that
``position_ids`` give — so no L×L mask exists either. The maths is eager's, op for op: scores ×
scaling, tanh soft cap, mask, softmax in fp32, cast back, dropout, × values. A block only reads the
keys its queries can see (up to the diagonal; for sliding-window layers, from one window back),
which also skips the masked half of the work. Costs one more attention forward per step (the
recompute).

A query that sees no key at all (left padding; right padding longer than a sliding window) gets
eager's answer only if its block reads every key — eager averages all values there, and the last
left-padding position's logits do predict the first real token. So when the padding leaves such
a query, every block reads every key (exact, slower); the mask function checks once per forward.

Differences from eager: attention weights are not returned (``output_attentions`` gets
``None``); with attention dropout the blocks draw their masks in another order — the same
distribution, other draws, as another seed would give.

:func:`register_chunked_attention` adds the function and a mask function to transformers'
``AttentionInterface`` / ``AttentionMaskInterface`` under :data:`CHUNKED_ATTENTION`. The mask
function recognises transformers' standard causal, sliding-window and packed-sequence patterns and
passes on only a 2D tensor; anything else (cached decoding, bidirectional or custom patterns) gets
eager's own 4D mask, which the attention function then reads block by block — still exact.

torch and transformers are imported inside the functions: the estimator imports this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: The name the attention function and its mask function are registered under in transformers.
CHUNKED_ATTENTION = "lora_studio_chunked"

#: Elements of one block's scores (batch × heads × rows × keys): 2^26 is 256 MiB in fp32, the
#: widest copy (the softmax's); a block's recompute and backward hold a few such copies at once.
#: At 32k tokens that is 128 rows of Gemma-2-9B's 16 heads.
CHUNK_SCORE_ELEMENTS = 2**26
#: Fewer rows than this make each block's matmuls too thin to be efficient.
MIN_CHUNK_ROWS = 64
#: More rows than this waste work: a block reads every key up to its last row, so the masked
#: corner above the diagonal it computes grows with its rows (a quarter of the work at 2k tokens
#: in 1024-row blocks, against half for one block).
MAX_CHUNK_ROWS = 1024


def chunk_rows(batch: int, heads: int, keys: int, budget: int = CHUNK_SCORE_ELEMENTS) -> int:
    """Query rows per block so that one block's scores stay near ``budget`` elements.

    A multiple of :data:`MIN_CHUNK_ROWS` between it and :data:`MAX_CHUNK_ROWS`, so very long
    sequences exceed the budget rather than run thin blocks. Shared with the estimator (no torch).
    """
    rows = budget // max(batch * heads * keys, 1) // MIN_CHUNK_ROWS * MIN_CHUNK_ROWS
    return min(MAX_CHUNK_ROWS, max(MIN_CHUNK_ROWS, rows))


def needs_chunked_attention(config: Any) -> bool:
    """Whether a model of this config would run eager attention, so :func:`use_chunked_attention`
    switches it to the chunked one (what the estimator must then assume).

    True for architectures transformers implements without SDPA support whose attention goes
    through its ``AttentionInterface``; False for SDPA-capable and unknown (remote-code) ones.
    """
    model_class = _causal_lm_class(config)
    if model_class is None:
        return False
    return not getattr(model_class, "_supports_sdpa", False) and model_class._can_set_attn_implementation()


def use_chunked_attention(model: Any, *, replace_sdpa: bool = False) -> bool:
    """Switch a loaded (plain or peft-wrapped, quantized or not) model to chunked attention.

    By default only when it runs eager attention because its architecture has nothing better (see
    :func:`needs_chunked_attention`): SDPA-capable models already avoid the L×L matrix with SDPA's
    memory-efficient kernels when no mask is needed, and flash attention never builds it, so those
    are left alone. ``replace_sdpa`` switches an SDPA model too: with padded rows or packed
    sequences transformers hands SDPA a (batch × L × L) mask, which the chunked attention replaces
    by per-row information (the run's memory estimate decides, ``estimate.request``).
    Returns whether the model now uses chunked attention (True again on a second call). The switch
    is ``set_attn_implementation``, which sets ``config._attn_implementation`` on the model and its
    sub-models; transformers does not save that field with the config.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(base, "config", None)
    if config is None or not hasattr(base, "set_attn_implementation"):
        return False
    if config._attn_implementation == CHUNKED_ATTENTION:
        return True
    if replace_sdpa and config._attn_implementation == "sdpa":
        pass
    elif config._attn_implementation != "eager" or getattr(base, "_supports_sdpa", False):
        return False
    if not base._can_set_attn_implementation():
        return False
    register_chunked_attention()
    base.set_attn_implementation(CHUNKED_ATTENTION)
    return config._attn_implementation == CHUNKED_ATTENTION


def register_chunked_attention() -> None:
    """Make :data:`CHUNKED_ATTENTION` a valid ``attn_implementation`` (idempotent, process-wide)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(CHUNKED_ATTENTION, chunked_attention_forward)
    AttentionMaskInterface.register(CHUNKED_ATTENTION, chunked_attention_mask)


def chunked_attention_forward(
    module: Any,
    query: Any,
    key: Any,
    value: Any,
    attention_mask: Any,
    scaling: float | None = None,
    dropout: float = 0.0,
    softcap: float | None = None,
    sliding_window: int | None = None,
    **kwargs: Any,
) -> tuple[Any, None]:
    """Eager attention, computed a block of query rows at a time (an ``AttentionInterface`` function).

    ``query`` is [batch, heads, q, d], ``key``/``value`` [batch, kv_heads, kv, d]; returns
    ([batch, q, heads, d], None). ``attention_mask`` is what :func:`chunked_attention_mask` made:
    None (causal), a 2D padding mask (bool; uint8 when some query sees no key, so blocks read every
    key), a 2D int64 packed-sequence id per token, or eager's 4D additive mask.
    ``query_chunk_size`` in ``kwargs`` (it can be passed through the model's forward) overrides
    :func:`chunk_rows`.
    """
    import torch
    from torch.utils.checkpoint import checkpoint

    if scaling is None:
        scaling = module.head_dim**-0.5
    if sliding_window is None:
        sliding_window = getattr(module, "sliding_window", None)
    batch, heads, q_len, _ = query.shape
    kv_len = key.shape[2]
    groups = getattr(module, "num_key_value_groups", heads // key.shape[1])
    if key.shape[1] * groups != heads:
        raise ValueError(
            f"{heads} query heads cannot share {key.shape[1]} key/value heads in groups of {groups}"
        )

    dense = attention_mask is not None and attention_mask.ndim == 4
    flat = attention_mask is not None and attention_mask.ndim == 2
    causal = not dense and (flat or getattr(module, "is_causal", True))
    padding = segments = None
    skip_unseen_keys = True  # a block reads only the keys its queries can see
    if flat and attention_mask.dtype == torch.bool:
        padding = attention_mask
    elif flat and attention_mask.dtype == torch.uint8:
        padding, skip_unseen_keys = attention_mask.bool(), False
    elif flat:
        segments = attention_mask
    window = sliding_window if causal else None
    offset = kv_len - q_len  # queries are the last q_len positions when a cache holds earlier keys
    rows = kwargs.get("query_chunk_size") or chunk_rows(batch, heads, kv_len)
    attend = _Block(
        groups=groups,
        scaling=scaling,
        softcap=softcap,
        dropout=dropout,
        training=bool(module.training),
        causal=causal,
        window=window,
        offset=offset,
    )
    recompute = torch.is_grad_enabled() and any(t.requires_grad for t in (query, key, value))

    outputs = []
    for start in range(0, q_len, rows):
        end = min(start + rows, q_len)
        low, high = 0, kv_len
        if causal and skip_unseen_keys:
            high = end + offset
            if window is not None:
                low = max(0, start + offset - window + 1)
        mask = attention_mask[:, :, start:end, low:high] if dense else None
        args = (query[:, :, start:end], key[:, :, low:high], value[:, :, low:high], mask)
        block_inputs = (start, low, padding, segments)
        if recompute:
            out = checkpoint(attend, *args, *block_inputs, use_reentrant=False)
        else:
            out = attend(*args, *block_inputs)
        outputs.append(out)
    output = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=2)
    return output.transpose(1, 2).contiguous(), None


@dataclass(frozen=True)
class _Block:
    """One block of query rows against the keys it can see: eager's ops, in eager's order."""

    groups: int
    scaling: float
    softcap: float | None
    dropout: float
    training: bool
    causal: bool
    window: int | None
    offset: int

    def __call__(
        self, query: Any, key: Any, value: Any, mask: Any, start: int, low: int, padding: Any, segments: Any
    ) -> Any:
        import torch

        batch, heads, rows, dim = query.shape
        kv_heads, keys = key.shape[1], key.shape[2]
        # the heads sharing a key/value head are adjacent (as repeat_kv orders them), so stacking
        # their rows lets each key/value head be read once instead of repeated
        grouped = query.reshape(batch, kv_heads, self.groups * rows, dim)
        scores = torch.matmul(grouped, key.transpose(2, 3)) * self.scaling
        if self.softcap is not None:
            scores = scores / self.softcap
            scores = torch.tanh(scores)
            scores = scores * self.softcap
        scores = scores.view(batch, heads, rows, keys)
        if mask is not None:
            scores = scores + mask
        elif self.causal:
            visible = self._visible(query.device, start, rows, low, keys, padding, segments)
            # added, as eager adds its mask: a query that sees no key gets gradient through every
            # score (masked_fill would pass none), and eager's mask is in the scores' dtype
            shown = torch.zeros((), dtype=scores.dtype, device=scores.device)
            scores = scores + torch.where(visible, shown, torch.finfo(scores.dtype).min)
        weights = torch.nn.functional.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
        weights = torch.nn.functional.dropout(weights, p=self.dropout, training=self.training)
        output = torch.matmul(weights.view(batch, kv_heads, self.groups * rows, keys), value)
        return output.view(batch, heads, rows, value.shape[-1])

    def _visible(
        self, device: Any, start: int, rows: int, low: int, keys: int, padding: Any, segments: Any
    ) -> Any:
        """[batch or 1, 1, rows, keys] bool: which of the block's keys each of its queries sees."""
        import torch

        query_at = torch.arange(start, start + rows, device=device)[:, None] + self.offset
        key_at = torch.arange(low, low + keys, device=device)[None, :]
        visible = key_at <= query_at  # padding and packed ids only come with causal patterns
        if self.window is not None:
            visible = visible & (key_at > query_at - self.window)
        visible = visible[None, None]
        if padding is not None:
            visible = visible & padding[:, None, None, low : low + keys].to(device)
        if segments is not None:
            own = segments[:, None, start : start + rows, None]
            visible = visible & (own == segments[:, None, None, low : low + keys])
        return visible


def chunked_attention_mask(
    batch_size: int,
    q_length: int,
    kv_length: int,
    q_offset: Any = 0,
    kv_offset: Any = 0,
    mask_function: Any = None,
    attention_mask: Any = None,
    **kwargs: Any,
) -> Any:
    """The ``AttentionMaskInterface`` function for :data:`CHUNKED_ATTENTION`: a 2D mask or None.

    For transformers' standard patterns on a whole sequence (causal, sliding-window, packed
    sequences) it returns the batch's 2D padding mask when it has one — bool, or uint8 when some
    query sees no key (see the module docstring) — else the packed-sequence id of each token when
    ``position_ids`` showed packing, else None: O(L), where eager's mask is L×L. Other patterns, and
    queries that do not start at the first key (decoding with a cache), get eager's 4D mask: exact,
    and small when decoding.
    """
    import torch
    from transformers.masking_utils import causal_mask_function, eager_mask

    pattern = _read_pattern(mask_function if mask_function is not None else causal_mask_function)
    whole = (
        q_length == kv_length
        and _is_zero(q_offset)
        and _is_zero(kv_offset)
        and (attention_mask is None or attention_mask.shape[-1] == kv_length)
    )
    if pattern is None or not pattern.causal or not whole or (pattern.remapped and pattern.segments is None):
        return eager_mask(
            batch_size=batch_size,
            q_length=q_length,
            kv_length=kv_length,
            q_offset=q_offset,
            kv_offset=kv_offset,
            mask_function=mask_function if mask_function is not None else causal_mask_function,
            attention_mask=attention_mask,
            **kwargs,
        )
    if attention_mask is not None:
        if _every_query_sees_a_key(attention_mask, pattern.window):
            return attention_mask
        return attention_mask.to(dtype=torch.uint8)
    if pattern.segments is not None:
        return pattern.segments.expand(batch_size, -1)
    return None


@dataclass(frozen=True)
class _Pattern:
    """What a recognised transformers mask function does, read from its closure."""

    causal: bool = False
    window: int | None = None
    segments: Any = None
    remapped: bool = False


def _read_pattern(function: Any) -> _Pattern | None:
    """Read a mask function built from transformers' causal, sliding-window and packed-sequence
    pieces; None for anything else (or/and overlays, bidirectional, chunked, block patterns).

    Packed sequences remap positions (each sequence restarts at 0); within one sequence positions
    step by one, so comparing token indices within a sequence gives the same mask.
    """
    if getattr(function, "__module__", None) != "transformers.masking_utils":
        return None
    name = getattr(function, "__qualname__", "")
    cells = dict(
        zip(function.__code__.co_freevars, (c.cell_contents for c in function.__closure__ or ()), strict=True)
    )
    if name == "causal_mask_function":
        return _Pattern(causal=True)
    if name == "sliding_window_overlay.<locals>.inner_mask":
        return _Pattern(window=int(cells["sliding_window"]))
    if name == "packed_sequence_mask_function.<locals>.inner_mask":
        return _Pattern(segments=cells["packed_sequence_mask"])
    if name == "remap_positions_for_packed_sequence.<locals>.inner_mask":
        inner = _read_pattern(cells["mask_function"])
        return None if inner is None else _Pattern(inner.causal, inner.window, inner.segments, remapped=True)
    if name == "and_masks.<locals>.and_mask":
        parts = [_read_pattern(part) for part in cells["mask_functions"]]
        if any(part is None for part in parts):
            return None
        windows = [part.window for part in parts if part.window is not None]
        segments = [part.segments for part in parts if part.segments is not None]
        if len(segments) > 1:
            return None
        return _Pattern(
            causal=any(part.causal for part in parts),
            window=min(windows) if windows else None,
            segments=segments[0] if segments else None,
            remapped=any(part.remapped for part in parts),
        )
    return None


def _every_query_sees_a_key(padding: Any, window: int | None) -> bool:
    """Whether every query of a causal (sliding-window) pattern has a real key in its range.

    One device sync per mask (twice a forward for Gemma 2). Tensors without data (the estimator's
    fake tensors) answer False: blocks then read every key, the larger of the two footprints.
    """
    import torch

    seen = padding.to(dtype=torch.int32).cumsum(-1)
    if window is not None and window < seen.shape[-1]:
        seen = seen - torch.nn.functional.pad(seen, (window, 0))[..., : seen.shape[-1]]
    try:
        return bool((seen > 0).all())
    except Exception:  # data-dependent answer asked of a fake or meta tensor
        return False


def _is_zero(offset: Any) -> bool:
    return isinstance(offset, int) and offset == 0


def _causal_lm_class(config: Any) -> Any:
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM._model_mapping[type(config)]
    except (KeyError, ValueError):
        return None
