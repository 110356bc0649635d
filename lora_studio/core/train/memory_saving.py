"""Memory savers that keep the maths exact: chunked cross-entropy, offloaded checkpoints, lean k-bit prep.

Why: at long sequence lengths the standard path's peak is dominated by the logits
(batch × seq × vocab, upcast to fp32, plus their gradient) and by peft's blanket fp32 cast of
embeddings and the output head for quantized models. None of that is needed for the result:

- chunked cross-entropy applies the output head to a chunk of tokens at a time under activation
  checkpointing, so only one chunk's logits ever exist; the loss and gradients equal the standard
  ``ForCausalLMLoss`` (same shift, same ``num_items_in_batch`` normalisation). The chunk holds a
  fixed number of logits (``LOSS_CHUNK_ELEMENTS``), not of tokens: a 1024-token chunk of a
  128k-vocabulary model still needs 1.5 GB at the loss, more than all of an 8B model's
  checkpointed activations at 2k tokens;
- with gradient checkpointing, ``save_on_cpu`` keeps the saved layer inputs in (pinned) host
  memory, so activation memory no longer grows with the number of layers;
- lean k-bit preparation freezes the base model and enables input gradients like
  ``prepare_model_for_kbit_training`` but leaves embeddings, norms and the output head in the
  compute dtype (RMSNorm already computes its statistics in fp32 internally).

torch is imported inside the functions, so the estimator can share ``loss_chunk_tokens``.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

#: Logits per loss chunk: 2^25 elements cost 384 MiB at the loss's peak (12 bytes each: the saved
#: fp32 log-softmax and two fp32 gradients) — 256 tokens of Llama 3's 128k vocabulary.
LOSS_CHUNK_ELEMENTS = 2**25
#: Chunks stay a multiple of 64 tokens and within these bounds (large enough for efficient matmuls).
MIN_CHUNK_TOKENS = 64
MAX_CHUNK_TOKENS = 1024


def loss_chunk_tokens(vocab: int) -> int:
    """Tokens per chunk of the chunked loss for a vocabulary: as many as fit ``LOSS_CHUNK_ELEMENTS``.

    128,256 (Llama 3) → 256; 152,064 (Qwen 2.5) → 192; 49,152 (SmolLM2) → 640; 256,000 (Gemma 2) → 128.
    """
    tokens = LOSS_CHUNK_ELEMENTS // max(vocab, 1) // MIN_CHUNK_TOKENS * MIN_CHUNK_TOKENS
    return max(MIN_CHUNK_TOKENS, min(MAX_CHUNK_TOKENS, tokens))


def _chunk_loss_sum(
    hidden: torch.Tensor, labels: torch.Tensor, head: torch.nn.Module, softcap: float | None
) -> torch.Tensor:
    import torch
    import torch.nn.functional as F

    logits = head(hidden)
    if softcap:  # e.g. Gemma 2: the model caps its logits before the loss; so must we
        logits = torch.tanh(logits / softcap) * softcap
    return F.cross_entropy(logits.float(), labels, ignore_index=-100, reduction="sum")


def chunked_causal_lm_loss(
    hidden: torch.Tensor,
    head: torch.nn.Module,
    labels: torch.Tensor,
    num_items_in_batch: torch.Tensor | int | None = None,
    chunk: int | None = None,
    softcap: float | None = None,
) -> torch.Tensor:
    """The causal-LM loss of ``head(hidden)`` without materialising all logits at once.

    ``chunk`` (tokens) defaults to ``loss_chunk_tokens`` of the head's output width.
    """
    import torch
    import torch.nn.functional as F
    from torch.utils.checkpoint import checkpoint

    if chunk is None:
        chunk = loss_chunk_tokens(head_vocab(head))
    shifted = F.pad(labels, (0, 1), value=-100)[..., 1:]
    flat_hidden = hidden.reshape(-1, hidden.shape[-1])
    flat_labels = shifted.reshape(-1).to(hidden.device)
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, flat_hidden.shape[0], chunk):
        part = flat_labels[start : start + chunk]
        if bool((part != -100).any()):
            total = total + checkpoint(
                _chunk_loss_sum, flat_hidden[start : start + chunk], part, head, softcap, use_reentrant=False
            )
        else:  # keep the graph connected (zero gradient) even when a chunk has no trained token
            total = total + flat_hidden[start : start + chunk].sum() * 0.0
    if num_items_in_batch is None:
        count = (flat_labels != -100).sum()
        return total / count.clamp(min=1)
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(total.device)
    return total / num_items_in_batch


def head_vocab(head: Any) -> int:
    """The output width of the LM head (a Linear, possibly wrapped by peft)."""
    weight = head.weight if hasattr(head, "weight") else head.get_base_layer().weight
    return int(weight.shape[0])


def causal_parts(model: Any) -> tuple[Any, Any]:
    """(decoder, output head) of a plain or peft-wrapped causal LM."""
    causal = model.get_base_model() if hasattr(model, "get_base_model") else model
    return causal.get_decoder(), causal.get_output_embeddings()


def chunked_forward_loss(
    model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None, chunk: int | None = None
) -> torch.Tensor:
    """Run the decoder, then the chunked loss: what ``model(**inputs).loss`` computes, with less memory."""
    labels = inputs["labels"]
    decoder, head = causal_parts(model)
    kwargs = {k: v for k, v in inputs.items() if k in ("input_ids", "attention_mask", "position_ids")}
    hidden = decoder(**kwargs, use_cache=False).last_hidden_state
    config = getattr(model, "config", None)
    softcap = getattr(config, "final_logit_softcapping", None)
    return chunked_causal_lm_loss(hidden, head, labels, num_items_in_batch, chunk, softcap)


def offload_context(enabled: bool) -> contextlib.AbstractContextManager[Any]:
    """Saved tensors of the forward (the checkpointed layer inputs) go to host memory.

    An ``offload.Offloader``: unlike ``save_on_cpu`` its copies run on a side stream and overlap with
    compute (the way back is prefetched a layer ahead), parameters and small tensors stay put, and
    the pinned buffers are reused from step to step. A no-op when disabled.
    """
    if not enabled:
        return contextlib.nullcontext()
    from lora_studio.core.train.offload import Offloader

    return Offloader()


def lean_kbit_preparation(model: Any, *, gradient_checkpointing: bool) -> Any:
    """``prepare_model_for_kbit_training`` without its fp32 cast of every non-quantized weight."""
    for param in model.parameters():
        param.requires_grad_(False)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    return model
