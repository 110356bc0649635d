"""What the memory estimator needs to know about a model, read once from its config on the meta device.

The estimate must agree *exactly* with a loaded model on parameter counts and weight bytes, so this
module does not guess from names: it builds the model on the meta device (no weights, no memory),
ties embeddings as loading does, asks transformers which Linear layers bitsandbytes would leave
unquantized, and records every Linear/Embedding shape. The result is cached per model, so the
GUI can re-estimate on every edit: after the first call an estimate is pure arithmetic.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any

from lora_studio.core.errors import ConfigError
from lora_studio.core.estimate.catalog import CATALOG_PREFIX, catalog_config, find_catalog_model

#: Leaf names of projections that read the same tensor (so one fp32 copy per adapter, shared input).
ATTN_IN = {"q_proj", "k_proj", "v_proj", "qkv_proj", "query_key_value", "Wqkv", "c_attn"}
ATTN_OUT = {"o_proj", "out_proj", "dense"}
MLP_IN = {"gate_proj", "up_proj", "gate_up_proj", "fc1", "w1", "w3", "c_fc"}
MLP_MID = {"down_proj", "fc2", "w2"}


@dataclass(frozen=True)
class Module:
    """A Linear (or Embedding) layer: what LoRA can target and bitsandbytes can quantize."""

    name: str
    in_features: int
    out_features: int
    bias: bool
    quantizable: bool
    embedding: bool = False

    @cached_property
    def leaf(self) -> str:
        return self.name.rsplit(".", 1)[-1]

    @property
    def numel(self) -> int:
        return self.in_features * self.out_features


@dataclass(frozen=True)
class LayerStructure:
    """The shape of one decoder layer, which decides what autograd saves per token.

    ``groups`` maps an input tensor ("attn_in", "attn_out", "mlp_in", "mlp_mid", or a module name
    for unrecognised layers) to the leaf names of the Linear layers reading it and its width.
    """

    groups: tuple[tuple[str, int, tuple[str, ...]], ...]
    hidden_norms: int
    qk_norm: bool
    fused_qkv: bool
    gated_mlp: bool
    recognised: bool


@dataclass(frozen=True)
class ModelShape:
    """Architecture numbers, the parameter inventory and the decoder-layer structure of one model."""

    name: str
    source: str
    model_type: str
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool
    context_length: int | None
    total_params: int
    modules: tuple[Module, ...]
    fp32_params: int
    buffers: tuple[tuple[int, int], ...]
    layer: LayerStructure
    logit_softcap: float | None
    attn_softcap: float | None
    sliding_window: int | None
    output_name: str
    attention: str
    config: Any = field(repr=False, compare=False, hash=False)

    @cached_property
    def quantizable_params(self) -> int:
        # cached: the GUI's fit advice asks for it ~30 times per estimate, over hundreds of modules
        return sum(m.numel for m in self.modules if m.quantizable)

    @property
    def buffer_bytes(self) -> int:
        return sum(n * size for n, size in self.buffers)

    def layer_modules(self, index: int = 0) -> list[Module]:
        marker = f".layers.{index}."
        return [m for m in self.modules if marker in f".{m.name}"]


def resolve_config(model: str, *, trust_remote_code: bool = False) -> tuple[str, Any]:
    """A model string → (display name, transformers config). No weights are needed: a catalog
    entry, a ``config.json`` file or a folder holding one is enough for an estimate."""
    if model.startswith(CATALOG_PREFIX):
        entry = find_catalog_model(model)
        return entry.name, catalog_config(entry)
    from lora_studio.core.models import load_config, resolve_model

    path = Path(model).expanduser()
    if path.is_file() and path.suffix == ".json":
        name = path.parent.name if path.name == "config.json" else path.stem
        return name, load_config(path, trust_remote_code=trust_remote_code)
    if path.is_dir() and (path / "config.json").is_file():
        return path.resolve().name, load_config(path, trust_remote_code=trust_remote_code)

    resolved = resolve_model(model)
    return resolved.name, load_config(resolved.path, trust_remote_code=trust_remote_code)


def model_shape(model: str, *, trust_remote_code: bool = False) -> ModelShape:
    """The cached analysis of a model string (re-read when a folder's config.json changes)."""
    return _cached_shape(model, _stamp(model), trust_remote_code)


def _stamp(model: str) -> int:
    if model.startswith(CATALOG_PREFIX):
        return 0
    path = Path(model).expanduser()
    config = path if path.suffix == ".json" else path / "config.json"
    try:
        return os.stat(config).st_mtime_ns
    except OSError:
        return 0


@lru_cache(maxsize=32)
def _cached_shape(model: str, _stamp: int, trust_remote_code: bool) -> ModelShape:
    name, config = resolve_config(model, trust_remote_code=trust_remote_code)
    return analyse(config, name=name, source=model, trust_remote_code=trust_remote_code)


def analyse(config: Any, *, name: str = "", source: str = "", trust_remote_code: bool = False) -> ModelShape:
    """Build the model on the meta device and record everything the estimate needs."""
    import torch
    from transformers.quantizers.base import HfQuantizer
    from transformers.quantizers.quantizers_utils import should_convert_module

    from lora_studio.core.models import count_parameters, meta_model, text_config

    meta = meta_model(config, trust_remote_code=trust_remote_code)
    text = text_config(config)
    skip = HfQuantizer.get_modules_to_not_convert(meta, None, meta._keep_in_fp32_modules)
    output = meta.get_output_embeddings()
    modules: list[Module] = []
    fp32_params = 0
    keep_fp32 = tuple(meta._keep_in_fp32_modules or ())
    for mod_name, module in meta.named_modules():
        if type(module) is torch.nn.Linear:
            convert = should_convert_module(mod_name, skip) and module is not output
            modules.append(
                Module(mod_name, module.in_features, module.out_features, module.bias is not None, convert)
            )
        elif isinstance(module, torch.nn.Embedding):
            modules.append(Module(mod_name, module.num_embeddings, module.embedding_dim, False, False, True))
        if keep_fp32 and any(k in mod_name.split(".") for k in keep_fp32):
            fp32_params += sum(p.numel() for p in module.parameters(recurse=False))
    buffers = tuple(
        (b.numel(), b.element_size()) for _, b in meta.named_buffers() if b is not None and b.numel()
    )
    heads = int(getattr(text, "num_attention_heads", 0) or 0)
    hidden = int(getattr(text, "hidden_size", 0) or 0)
    head_dim = int(getattr(text, "head_dim", 0) or (hidden // heads if heads else 0))
    return ModelShape(
        name=name or type(meta).__name__,
        source=source,
        model_type=str(getattr(config, "model_type", "")),
        layers=int(getattr(text, "num_hidden_layers", 0) or 0),
        hidden=hidden,
        intermediate=int(getattr(text, "intermediate_size", 0) or 4 * hidden),
        heads=heads,
        kv_heads=int(getattr(text, "num_key_value_heads", None) or heads),
        head_dim=head_dim,
        vocab=int(getattr(text, "vocab_size", 0) or 0),
        tied=bool(getattr(text, "tie_word_embeddings", False)),
        context_length=getattr(text, "max_position_embeddings", None),
        total_params=count_parameters(meta),
        modules=tuple(modules),
        fp32_params=fp32_params,
        buffers=buffers,
        layer=_layer_structure(meta, modules),
        logit_softcap=getattr(text, "final_logit_softcapping", None),
        attn_softcap=getattr(text, "attn_logit_softcapping", None),
        sliding_window=_sliding_window(text),
        output_name=next((n for n, m in meta.named_modules() if m is output), "lm_head"),
        attention="sdpa" if getattr(meta, "_supports_sdpa", False) else "eager",
        config=config,
    )


def _sliding_window(text: Any) -> int | None:
    window = getattr(text, "sliding_window", None)
    if not window or getattr(text, "use_sliding_window", True) is False:
        return None
    types = getattr(text, "layer_types", None)
    if types is not None and "sliding_attention" not in types:
        return None
    return int(window)


def _layer_structure(meta: Any, modules: list[Module]) -> LayerStructure:
    layer0 = [m for m in modules if ".layers.0." in f".{m.name}" and not m.embedding]
    groups: dict[str, tuple[int, list[str]]] = {}
    recognised = bool(layer0)
    for module in layer0:
        leaf = module.leaf
        key = next(
            (
                g
                for g, names in (("attn_in", ATTN_IN), ("attn_out", ATTN_OUT), ("mlp_in", MLP_IN))
                if leaf in names
            ),
            "mlp_mid" if leaf in MLP_MID else module.name,
        )
        if key == module.name:
            recognised = False
        width, leaves = groups.get(key, (module.in_features, []))
        groups[key] = (width, [*leaves, leaf])
    norms = qk_norm = 0
    hidden = getattr(getattr(meta, "config", None), "hidden_size", None)
    layer_prefix = next((n for n, _ in meta.named_modules() if n.endswith("layers.0")), None)
    if layer_prefix is not None:
        for name, module in meta.get_submodule(layer_prefix).named_modules():
            weight = getattr(module, "weight", None)
            if "norm" in type(module).__name__.lower() and weight is not None:
                if weight.numel() == hidden:
                    norms += 1
                elif name.split(".")[-1] in ("q_norm", "k_norm"):
                    qk_norm += 1
    leaves = {m.leaf for m in layer0}
    return LayerStructure(
        groups=tuple((k, w, tuple(v)) for k, (w, v) in groups.items()),
        hidden_norms=norms,
        qk_norm=qk_norm > 0,
        fused_qkv="qkv_proj" in leaves or "query_key_value" in leaves or "Wqkv" in leaves,
        gated_mlp=bool(leaves & {"gate_proj", "gate_up_proj", "w1"}),
        recognised=recognised and "attn_in" in groups and "mlp_in" in groups,
    )


def lora_modules(shape: ModelShape, targets: str | list[str] | tuple[str, ...]) -> list[Module]:
    """The modules peft wraps for ``target_modules`` (peft's rules, checked against peft in tests).

    'all-linear' is every Linear layer except the output head; names match a module whose full
    name equals the name or ends with '.' + name. A name that matches nothing is an error that
    lists the names that would match.
    """
    if isinstance(targets, str):
        if targets != "all-linear":
            targets = [t.strip() for t in targets.split(",") if t.strip()]
        else:
            return [m for m in shape.modules if not m.embedding and m.name != shape.output_name]
    chosen: list[Module] = []
    for target in targets:
        matched = [m for m in shape.modules if m.name == target or m.name.endswith("." + target)]
        if not matched:
            names = sorted({m.leaf for m in shape.modules})
            raise ConfigError(
                {
                    "lora.target_modules": f"'{target}' matches no layer of {shape.name}; "
                    f"choose 'all-linear' or names from: {', '.join(names)}"
                }
            )
        chosen.extend(m for m in matched if m not in chosen)
    return chosen
