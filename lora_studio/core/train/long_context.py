"""Long-context savers: what keeps one decoder layer's backward small when the sequence is long.

Why: with gradient checkpointing and offloaded layer inputs, a long sequence's peak is the one
layer being recomputed and differentiated. Precise mode's composition (``bench/memory.py
--composition``) shows what it holds, per token, for Llama-3.1-8B QLoRA r32 all-linear at 8k
tokens: the gated MLP's ``I``-wide intermediates (gate, up, activation, product and the down
projection's LoRA input — about 170 KiB of ~300) and each RMSNorm's fp32 copy of its input (16
KiB per norm). Both savers here remove them without changing the maths:

- **tiled MLP** runs each decoder layer's MLP over tiles of the sequence, each tile under its own
  (non-reentrant) checkpoint. The MLP is position-wise, so tiles compute exactly what the whole
  sequence computes; in backward each tile is recomputed and differentiated on its own, so its
  intermediates exist for one tile at a time (``MLP_TILE_ELEMENTS`` wide), never for the whole
  sequence. Costs one more MLP forward per step.
- **norm recompute** runs every RMSNorm under checkpoints, over tiles of its rows, so it keeps
  only its 16-bit input (which the residual stream keeps anyway) instead of an fp32 copy, and its
  backward's fp32 temporaries (about 100 KiB a token for an 8B model) exist for one tile at a
  time; its few elementwise ops rerun in backward. A norm acts on each row alone, so tiles
  compute exactly what the whole tensor computes.

Both are patches of module ``forward`` methods on the loaded model (the adapters and the weights
are untouched), undone by :func:`remove_savers`. With LoRA dropout the tiles draw their dropout
masks in another order than the whole-sequence MLP does — the same distribution, other draws, as
another seed would give; without dropout the result is the same to the last bits a matmul's
row blocking allows (tested).

torch is imported inside the functions: the estimator shares ``mlp_tile_tokens`` without it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lora_studio.core.config import RunConfig

#: Elements of one tile's widest intermediate (tile tokens × MLP width): 2^25 is 64 MiB in bf16,
#: 2,304 tokens of Llama-3.1-8B's 14,336-wide MLP. Large enough for efficient matmuls, small
#: against what the whole sequence would need at the lengths where tiling is turned on.
MLP_TILE_ELEMENTS = 2**25
MIN_TILE_TOKENS = 256
#: Elements of one norm tile: 2^24 (64 MiB in fp32, 4,096 tokens of a 4,096-wide model).
NORM_TILE_ELEMENTS = 2**24

_ORIGINAL = "_lora_studio_original_forward"


@dataclass(frozen=True)
class Savers:
    """Which long-context savers a run uses (resolved from the config's auto/on/off settings)."""

    tiled_mlp: bool = False
    norm_recompute: bool = False
    offload: bool = False
    chunked_attention: bool = False

    def names(self) -> list[str]:
        """The savers that are on, as a person reads them ("tiled MLP", …)."""
        return [
            name
            for name, on in (
                ("chunked attention", self.chunked_attention),
                ("tiled MLP", self.tiled_mlp),
                ("norm recompute", self.norm_recompute),
                ("offloaded checkpoints", self.offload),
            )
            if on
        ]


#: How a run's "auto" settings are decided: ``estimate.savers.decide_savers`` (the estimate sits
#: above the engine, so the engine's callers hand it over), given the config and the device.
SaverDecider = Callable[["RunConfig", str], tuple[Savers, str]]


def fixed_savers(config: RunConfig, device: str) -> tuple[Savers, str]:
    """The savers without an estimate, and a line saying so: "on" as set, "auto" off.

    Chunked attention stays off even when "on": whether it applies (an eager-only model, or a
    seq × seq mask for padded or packed rows) is the estimate's plan to say.
    """
    t = config.training
    settings = {name: getattr(t, name) for name in ("tiled_mlp", "norm_recompute", "checkpoint_offload")}
    on = {name: value is True or value == "on" for name, value in settings.items()}
    savers = Savers(
        tiled_mlp=on["tiled_mlp"],
        norm_recompute=on["norm_recompute"],
        offload=on["checkpoint_offload"] and t.gradient_checkpointing and device.startswith("cuda"),
    )
    names = savers.names()
    auto = [name for name in (*settings, "chunked_attention") if getattr(t, name) == "auto"]
    line = ", ".join(names) if names else "none"
    if auto:
        line += " ('auto' left off: no memory estimate was asked for)"
    return savers, line


def device_memory(device: str) -> int | None:
    """Total memory of the training device: the GPU's, or the machine's RAM for the CPU."""
    if device.startswith("cuda"):
        import torch

        index = torch.device(device).index
        return int(torch.cuda.get_device_properties(index or 0).total_memory)
    import psutil

    return int(psutil.virtual_memory().total)


def mlp_tile_tokens(intermediate: int) -> int:
    """Tokens per MLP tile for an MLP ``intermediate`` wide: a multiple of 64, at least 256."""
    tokens = MLP_TILE_ELEMENTS // max(intermediate, 1) // 64 * 64
    return max(MIN_TILE_TOKENS, tokens)


def decoder_layers(model: Any) -> list[Any]:
    """The decoder layers of a plain or peft-wrapped causal LM (``[]`` when there is no such list)."""
    causal = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        decoder = causal.get_decoder()
    except (AttributeError, NotImplementedError):
        return []
    layers = getattr(decoder, "layers", None)
    return list(layers) if layers is not None else []


def mlp_width(mlp: Any) -> int:
    """The intermediate width of a decoder layer's MLP (its largest Linear output width)."""
    import torch

    widths = []
    for module in mlp.modules():
        base = module.get_base_layer() if hasattr(module, "get_base_layer") else module
        if isinstance(base, torch.nn.Linear):
            widths.append(int(base.out_features))
    return max(widths, default=0)


def apply_savers(model: Any, savers: Savers) -> Any:
    """Patch ``model`` (plain or peft-wrapped) in place for ``savers``; returns it.

    Applying twice is harmless (patched modules are recognised); :func:`remove_savers` undoes it
    (not chunked attention, which is the model's attention implementation: exact either way).
    """
    if savers.chunked_attention:
        from lora_studio.core.train.attention import use_chunked_attention

        # the plan turned it on for an eager-only model, or for SDPA with a seq × seq mask
        use_chunked_attention(model, replace_sdpa=True)
    if savers.tiled_mlp:
        for layer in decoder_layers(model):
            mlp = getattr(layer, "mlp", None)
            if mlp is not None and not hasattr(mlp, _ORIGINAL):
                _patch(mlp, _tiled(mlp.forward, mlp_tile_tokens(mlp_width(mlp))))
    if savers.norm_recompute:
        for module in model.modules():
            if _is_norm(module) and not hasattr(module, _ORIGINAL):
                _patch(module, _recomputed(module.forward))
    if savers.tiled_mlp or savers.norm_recompute:
        # transformers and peft make the embeddings' output require grad, which only reentrant
        # checkpointing needs (the engine's is non-reentrant); that output then is an autograd
        # leaf that stays on the device for the whole step (8 KiB a token for an 8B model)
        _drop_input_require_grads(model)
    return model


def _drop_input_require_grads(model: Any) -> None:
    """Remove the embeddings' "make the output require grad" hooks.

    transformers and peft each register one (``enable_input_require_grads``, and again when
    checkpointing is turned on), keeping only the last list of handles: the earlier hooks can only
    be found on the module itself, by their function's name.
    """
    causal = model.get_base_model() if hasattr(model, "get_base_model") else model
    if hasattr(causal, "disable_input_require_grads"):
        causal.disable_input_require_grads()
    for module in causal.modules():
        hooks = getattr(module, "_forward_hooks", None)
        if not hooks:
            continue
        for key, hook in list(hooks.items()):
            if getattr(hook, "__name__", "").startswith("make_inputs_require_grad"):
                del hooks[key]


def remove_savers(model: Any) -> None:
    """Give every patched module its own ``forward`` back."""
    for module in model.modules():
        if hasattr(module, _ORIGINAL):
            del module.forward  # the instance attribute; the class's forward shows again
            delattr(module, _ORIGINAL)


def active_savers(model: Any) -> Savers:
    """What :func:`apply_savers` did to ``model`` (for tests and the run's log)."""
    tiled = any(hasattr(getattr(layer, "mlp", None), _ORIGINAL) for layer in decoder_layers(model))
    norms = any(_is_norm(module) and hasattr(module, _ORIGINAL) for module in model.modules())
    return Savers(tiled_mlp=tiled, norm_recompute=norms)


def _is_norm(module: Any) -> bool:
    return type(module).__name__.endswith("RMSNorm")


def _patch(module: Any, forward: Any) -> None:
    setattr(module, _ORIGINAL, module.forward)
    module.forward = forward


def _checkpointing() -> bool:
    import torch

    return torch.is_grad_enabled()


def _tiled(forward: Any, tile: int) -> Any:
    def tiled_forward(hidden: Any, *args: Any, **kwargs: Any) -> Any:
        import torch
        from torch.utils.checkpoint import checkpoint

        tokens = hidden.shape[-2] if hidden.dim() >= 2 else 0
        if tokens <= tile or not _checkpointing():
            return forward(hidden, *args, **kwargs)
        parts = [
            checkpoint(forward, piece, *args, use_reentrant=False, **kwargs)
            for piece in hidden.split(tile, dim=-2)
        ]
        return torch.cat(parts, dim=-2)

    return tiled_forward


def _recomputed(forward: Any) -> Any:
    def recomputed_forward(hidden: Any, *args: Any, **kwargs: Any) -> Any:
        import torch
        from torch.utils.checkpoint import checkpoint

        if not _checkpointing():
            return forward(hidden, *args, **kwargs)
        if hidden.dim() < 2 or hidden.numel() <= NORM_TILE_ELEMENTS:
            return checkpoint(forward, hidden, *args, use_reentrant=False, **kwargs)
        per_row = hidden.numel() // max(hidden.shape[-2], 1)  # elements per index of dim -2
        rows = max(1, NORM_TILE_ELEMENTS // max(per_row, 1))
        parts = [
            checkpoint(forward, piece, *args, use_reentrant=False, **kwargs)
            for piece in hidden.split(rows, dim=-2)
        ]
        return torch.cat(parts, dim=-2)

    return recomputed_forward
