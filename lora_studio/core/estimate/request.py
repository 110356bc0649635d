"""What an estimate is asked and what it answers: the request, the resolved plan, the result.

``EstimateRequest`` holds everything that decides training memory (its defaults are ``RunConfig``'s);
``plan_for`` validates it and resolves what the engine would do (dtype, LoRA modules) into a
``Plan``, which the arithmetic (``analytic``), the words (``explain``, ``advice``) and precise mode
all read. Kept apart from the arithmetic so that each of those imports it, and none each other.

The training method matters: a pair method (DPO, ORPO, SimPO) runs each pair's chosen and rejected
answer in one batch, so ``batch_size`` pairs are ``2 × batch_size`` sequences (``Plan.rows``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, get_args

from lora_studio.core.config import PAIR_METHODS, REFERENCE_METHODS, Method, default
from lora_studio.core.errors import ConfigError
from lora_studio.core.estimate.model import ModelShape, Module, lora_modules, model_shape

if TYPE_CHECKING:
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
METHODS: tuple[str, ...] = get_args(Method)
#: How the methods are written in messages.
METHOD_NAMES = {"sft": "SFT", "dpo": "DPO", "kto": "KTO", "orpo": "ORPO", "simpo": "SimPO"}
#: Methods whose TRL trainer computes log-probabilities with a fused LM head (tiles of positions ×
#: vocabulary, never the whole logits); ORPO and SimPO (TRL's experimental ORPO/CPO trainers)
#: build the full logits of every chosen and rejected sequence.
FUSED_HEAD_METHODS = ("dpo", "kto")


@dataclass(frozen=True)
class EstimateRequest:
    """Everything that decides training memory; every default is ``RunConfig``'s (``config.default``).

    ``method`` is ``training.method``; for the pair methods ``batch_size`` counts pairs and
    ``seq_len`` bounds each answer (chosen and rejected are cut to it on their own).
    """

    model: str
    quantization: str = default("model.quantization")
    double_quant: bool = default("model.double_quant")
    compute_dtype: str = default("model.compute_dtype")
    lora_r: int = default("lora.r")
    targets: str | list[str] = default("lora.target_modules")  # noqa: RUF009 - a str, never mutated
    use_dora: bool = default("lora.use_dora")
    batch_size: int = default("training.batch_size")
    seq_len: int = default("data.max_seq_len")
    grad_accum: int = default("training.grad_accum")
    optimizer: str = default("training.optimizer")
    gradient_checkpointing: bool = default("training.gradient_checkpointing")
    packing: bool = default("data.packing")
    device: str = "cuda"
    vram_bytes: int | None = None
    lora_dropout: float = default("lora.dropout")
    gpu: str | None = None
    trust_remote_code: bool = default("model.trust_remote_code")
    lean_kbit_prep: bool = default("model.lean_kbit_prep")
    chunked_loss: bool = default("training.chunked_loss")
    #: The long-context savers: "auto" | "on" | "off" (True/False are read as on/off). "auto" is
    #: resolved by ``plan_for``: on only when the estimate without it does not fit ``vram_bytes``.
    checkpoint_offload: str | bool = default("training.checkpoint_offload")
    tiled_mlp: str | bool = default("training.tiled_mlp")
    norm_recompute: str | bool = default("training.norm_recompute")
    chunked_attention: str | bool = default("training.chunked_attention")
    method: str = default("training.method")
    #: DPO/KTO only: the reference is base + a frozen copy of the adapter the run starts from
    #: (``preference.init_adapter``, or PiSSA/OLoRA's starting adapter), not the bare base.
    reference_adapter: bool = False

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
            tiled_mlp=config.training.tiled_mlp,
            norm_recompute=config.training.norm_recompute,
            chunked_attention=config.training.chunked_attention,
            method=config.training.method,
            # as core/train/trainer.reference_needs_adapter decides (it imports torch; this may not)
            reference_adapter=config.training.method in REFERENCE_METHODS
            and (bool(config.preference.init_adapter) or config.lora.init in ("pissa", "olora")),
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
    method: str = "sft"
    reference_adapter: bool = False
    tiled_mlp: bool = False
    norm_recompute: bool = False
    chunked_attention: bool = False
    #: The savers "auto" turned on because the run would not fit without them (in SAVERS order).
    auto_savers: tuple[str, ...] = ()
    #: The savers set to "auto" that apply to this plan (on or not): a longer sequence would turn
    #: them on as needed.
    auto_allowed: tuple[str, ...] = ()
    #: Every saver set to "auto", whether it applies to this plan or not: a larger batch can make
    #: one apply (chunked attention, once padded rows need a mask).
    auto_settings: tuple[str, ...] = ()
    #: The model's own attention implementation ("sdpa" or "eager"), whatever chunked attention did.
    native_attention: str = "sdpa"

    @property
    def masked(self) -> bool:
        """Whether transformers builds a seq × seq attention mask: padded batches, packing, long
        sliding windows."""
        window = self.shape.sliding_window
        return self.rows > 1 or self.packing or bool(window and self.seq_len > window)

    @property
    def rows(self) -> int:
        """Sequences in one forward of the trained model: a pair method's batch holds each pair's
        chosen and rejected answer (``batch_size`` counts pairs), so twice the batch."""
        return 2 * self.batch_size if self.method in PAIR_METHODS else self.batch_size

    @property
    def tokens(self) -> int:
        """Tokens of the forward that keeps a graph for backward (each row up to ``seq_len``)."""
        return self.rows * self.seq_len

    @property
    def reference(self) -> bool:
        """DPO and KTO also run the reference (the adapter switched off) without a graph."""
        return self.method in REFERENCE_METHODS

    @property
    def fused_head(self) -> bool:
        return self.method in FUSED_HEAD_METHODS

    @property
    def dropout(self) -> bool:
        """Whether LoRA dropout acts: TRL's preference trainers set every dropout to p=0
        (``disable_dropout``), so that the policy and the reference score an answer alike."""
        return self.lora_dropout > 0 and self.method == "sft"

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
    def savers(self) -> list[str]:
        """The long-context savers this plan uses, as a person reads them."""
        return [SAVER_NAMES[name] for name in SAVERS if getattr(self, name) and _saver_applies(self, name)]

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
    #: The moment of the step that is its peak: "loss", "layer" (a layer's backward), "step" (the
    #: optimizer), "dora" (DoRA's weight work) or "reference" (DPO's/KTO's reference forward).
    peak_moment: str = ""

    @property
    def total_bytes(self) -> int:
        return self.bytes["total"]

    def to_dict(self) -> dict[str, Any]:
        """The ``--json`` shape of issue 5 (extra keys: explanations, model, dtype, device, notes, details,
        peak_moment)."""
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
            "peak_moment": self.peak_moment,
        }


#: The long-context savers with an "auto" setting, in the order "auto" turns them on: cheapest in
#: time per byte saved first (chunked attention removes an eager model's seq² scores for one more
#: attention forward; a norm's recompute is a few elementwise ops; offloaded copies overlap with
#: compute on a GPU; a tiled MLP reruns the MLP's forward).
SAVERS = ("chunked_attention", "norm_recompute", "checkpoint_offload", "tiled_mlp")
SAVER_NAMES = {
    "chunked_attention": "chunked attention",
    "norm_recompute": "norm recompute",
    "checkpoint_offload": "offloaded checkpoints",
    "tiled_mlp": "tiled MLP",
}


#: transformers' attention implementation name of ``core/train/attention.py``'s chunked attention.
CHUNKED_ATTENTION = "lora_studio_chunked"


def with_savers(plan: Plan, names: tuple[str, ...] | list[str], on: bool = True) -> Plan:
    """``plan`` with these savers on (or off), those that apply to it.

    Chunked attention also changes the model's attention implementation (``shape.attention``),
    which is what the arithmetic and precise mode read."""
    changes = {name: on for name in names if _saver_applies(plan, name)}
    if "chunked_attention" in changes:
        attention = CHUNKED_ATTENTION if on else plan.native_attention
        changes["shape"] = replace(plan.shape, attention=attention)  # type: ignore[assignment]
    return replace(plan, **changes)


def _saver_applies(plan: Plan, name: str) -> bool:
    """Offloading moves checkpointed layer inputs to the host: only with checkpointing, on a GPU.
    Chunked attention replaces what would hold seq × seq values: eager attention's scores, or the
    mask SDPA is given for padded or packed rows."""
    if name == "chunked_attention":
        return plan.native_attention == "eager" or plan.masked
    return name != "checkpoint_offload" or (plan.gradient_checkpointing and plan.device == "cuda")


def saver_setting(value: str | bool, field_name: str) -> str:
    """A saver's setting as "auto" | "on" | "off" (True/False, as older callers pass, are on/off)."""
    if isinstance(value, bool):
        return "on" if value else "off"
    _choice(field_name, value, ("auto", "on", "off"))
    return value


def _choice(field_name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError({field_name: f"must be one of {', '.join(choices)}, not {value!r}"})


def base_plan(req: EstimateRequest) -> tuple[Plan, dict[str, str]]:
    """Validate a request and resolve what the engine would do, savers as set; and the savers'
    settings ("auto" | "on" | "off"), which ``estimate.savers.plan_for`` decides.

    Raises ConfigError / ModelSourceError.
    """
    _choice("quantization", req.quantization, QUANTIZATIONS)
    _choice("compute_dtype", req.compute_dtype, COMPUTE_DTYPES)
    _choice("optimizer", req.optimizer, OPTIMIZERS)
    if req.device.startswith("cuda:"):  # a device index does not change the estimate
        req = replace(req, device="cuda")
    _choice("device", req.device, DEVICES)
    _choice("method", req.method, METHODS)
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
    if req.method != "sft" and req.packing:
        problems["packing"] = f"does not apply to {METHOD_NAMES[req.method]}: each answer is its own row"
    if req.method == "kto" and req.batch_size == 1:
        problems["batch_size"] = (
            "KTO needs at least 2: its KL term pairs each prompt with another row's answer in the batch"
        )
    settings = {}
    for name in SAVERS:
        try:
            settings[name] = saver_setting(getattr(req, name), name)
        except ConfigError as exc:
            problems.update(exc.problems)
    if settings.get("checkpoint_offload") == "on" and not req.gradient_checkpointing:
        problems["checkpoint_offload"] = "'on' needs gradient_checkpointing turned on (or use 'auto')"
    if problems:
        raise ConfigError(problems)
    shape = model_shape(req.model, trust_remote_code=req.trust_remote_code)
    dtype_name = _dtype_name(req)
    plan = Plan(
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
        method=req.method,
        reference_adapter=req.reference_adapter and req.method in REFERENCE_METHODS,
        native_attention=shape.attention,
    )
    return plan, settings


def _dtype_name(req: EstimateRequest) -> str:
    """``pick_dtype`` without touching CUDA: auto → bf16 on GPUs (fp16 on pre-Ampere cards), fp32 on CPU."""
    if req.compute_dtype != "auto":
        return req.compute_dtype
    if req.device == "cpu":
        return "fp32"
    if req.gpu:
        from lora_studio.core.estimate.catalog import find_gpu

        return "bf16" if find_gpu(req.gpu).bf16 else "fp16"
    return "bf16"


def gb(value: int) -> str:
    """Bytes as GB (2^30, as GPU specs and nvidia-smi count) with two decimals."""
    return f"{value / GIB:.2f} GB"
