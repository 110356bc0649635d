"""The run configuration: one typed object shared by the GUI, the CLI and the engine.

Every field carries a description that says what it does and what it costs; the CLI's ``--help``
and the GUI's tooltips are built from that text, so it is written for a user. Defaults train the
bundled default model on a CPU.
"""

from __future__ import annotations

import math
import os
import tomllib
from pathlib import Path
from typing import Any, Literal

import tomli_w
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lora_studio.core.atomic import atomic_write_text
from lora_studio.core.errors import ConfigError

SCHEMA_VERSION = 1

Quantization = Literal["none", "int8", "nf4", "fp4"]
ComputeDtype = Literal["auto", "bf16", "fp16", "fp32"]
DataFormat = Literal["auto", "alpaca", "sharegpt", "messages", "prompt_completion", "text"]
#: ``data.eval_fraction`` left empty: this share is held out, at most this many records.
DEFAULT_EVAL_SHARE = 0.1
DEFAULT_EVAL_MAX = 200
#: The roles a speaker name can be mapped to with ``data.role_map``.
SPEAKER_ROLES = ("system", "user", "assistant", "tool")
Optimizer = Literal["adamw_torch", "adamw_bnb_8bit", "paged_adamw_8bit", "paged_adamw_32bit"]
Scheduler = Literal["linear", "cosine", "constant_with_warmup"]
LoraInit = Literal["default", "gaussian", "pissa", "olora"]
Method = Literal["sft", "dpo", "kto", "orpo", "simpo"]
DpoLoss = Literal["sigmoid", "ipo", "hinge", "robust"]
#: A memory saver's setting: "auto" turns it on only when the memory estimate says the run needs it
#: on this device (``core/estimate/savers.decide_savers``), so short runs keep their full speed.
Saver = Literal["auto", "on", "off"]
#: Methods that learn from chosen/rejected pairs; KTO learns from answers labelled good or bad.
PAIR_METHODS = ("dpo", "orpo", "simpo")
#: Methods that compare with a reference model (the base with the adapter switched off).
REFERENCE_METHODS = ("dpo", "kto")


#: What each bundled demo changes from the defaults (every other setting is RunConfig's own):
#: ``lora-studio train --demo [sft|dpo]`` and the Data page's demo buttons.
DEMO = {
    "training.max_steps": 30,
    "training.learning_rate": 5e-4,
    "data.path": "demo",
    "data.max_seq_len": 256,
    "output.run_name": "demo",
}
# --demo dpo: DPO on the bundled concise-answers pairs; the samples ask questions the pairs do not.
# Batch 4 of pairs is 8 sequences, as much work per step as the SFT demo's 8 examples; with the SFT
# term on the chosen answers (RPO) the 135M model keeps its language while it learns the style —
# plain DPO at this learning rate made it answer "You are a HAGAN." to everything by step 20.
DEMO_DPO = {
    **DEMO,
    "training.method": "dpo",
    "training.max_steps": 20,
    "training.batch_size": 4,
    "training.learning_rate": 2e-4,
    "preference.sft_weight": 1.0,
    "data.path": "demo-dpo",
    "output.run_name": "demo-dpo",
    "training.sample_prompts": [
        "Why is the ocean salty?",
        "How do I fall asleep faster?",
        "What is a rainbow?",
    ],
}
DEMOS = {"sft": DEMO, "dpo": DEMO_DPO}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSection(_Section):
    source: str = Field(
        "default",
        description="Model to fine-tune: 'default' (bundled SmolLM2-135M-Instruct), a Hugging Face "
        "model folder, a .gguf file, or a hub id already in the local Hugging Face cache.",
    )
    quantization: Quantization = Field(
        "none",
        description="How the frozen base weights are stored. 'nf4'/'fp4' (4-bit, QLoRA) use about a "
        "quarter of 16-bit memory; 'int8' about half. Quantized training is slower per step.",
    )
    double_quant: bool = Field(
        False,
        description="4-bit only: also quantize the quantization scales. Saves ~0.4 bits per "
        "parameter (about 3% of the 4-bit weights) at a small speed cost.",
    )
    compute_dtype: ComputeDtype = Field(
        "auto",
        description="Precision of the computation and of unquantized weights. 'auto' picks bf16 where "
        "the device supports it, else fp32 on CPU / fp16 on older GPUs. fp32 doubles weight memory.",
    )
    trust_remote_code: bool = Field(
        False,
        description="Run Python code shipped with the model folder. Only enable for models you trust: "
        "that code runs with your user's rights.",
    )
    allow_pickle: bool = Field(
        False,
        description="Allow loading pickled .bin weights. Pickle files can run arbitrary code when "
        "loaded; prefer safetensors.",
    )
    lean_kbit_prep: bool = Field(
        True,
        description="Quantized models: keep embeddings and the output head in the compute dtype instead "
        "of peft's blanket fp32 cast (saves ~4 GB on an 8B model). The loss is unaffected.",
    )


class LoraSection(_Section):
    r: int = Field(
        16,
        description="LoRA rank: size of the trainable update. Higher can learn more, and costs more "
        "memory and time (trainable parameters grow linearly with r).",
    )
    alpha: float = Field(
        32.0,
        description="LoRA scaling: the update is multiplied by alpha/r (alpha/sqrt(r) with rsLoRA). "
        "Commonly 2×r. No memory cost.",
    )
    dropout: float = Field(
        0.05,
        description="Dropout on the LoRA input during training. Regularises small datasets; a little "
        "extra activation memory.",
    )
    target_modules: str | list[str] = Field(
        "all-linear",
        description="Which layers get adapters: 'all-linear' (every linear layer except the output "
        "head; best quality) or a list of module names such as ['q_proj', 'v_proj'] (less memory).",
    )
    use_dora: bool = Field(
        False,
        description="DoRA: learn magnitude and direction separately. Often better at low rank; "
        "slower and uses more activation memory.",
    )
    use_rslora: bool = Field(
        False,
        description="Rank-stabilised LoRA: scale by alpha/sqrt(r). Helps at high ranks. No cost.",
    )
    init: LoraInit = Field(
        "default",
        description="How adapters start: 'default' (B = 0, so training starts from the base model), "
        "'gaussian', or 'pissa'/'olora' (from the weights' principal directions; slower to start).",
    )

    @field_validator("r")
    @classmethod
    def _positive_rank(cls, value: int) -> int:
        if value < 1:
            raise ValueError("must be at least 1")
        if value > 4096:
            raise ValueError("must be at most 4096")
        return value

    @field_validator("alpha")
    @classmethod
    def _positive_alpha(cls, value: float) -> float:
        if not value > 0 or not math.isfinite(value):
            raise ValueError("must be a positive number")
        return value

    @field_validator("dropout")
    @classmethod
    def _dropout_range(cls, value: float) -> float:
        if not 0.0 <= value < 1.0:
            raise ValueError("must be in [0, 1)")
        return value

    @field_validator("target_modules")
    @classmethod
    def _targets(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, str):
            if value != "all-linear":
                raise ValueError("must be 'all-linear' or a list of module names")
            return value
        if not value:
            raise ValueError("must name at least one module")
        if any(not name.strip() for name in value):
            raise ValueError("module names must not be empty")
        return value


class DataSection(_Section):
    path: str = Field(
        "demo",
        description="Training data: a .json, .jsonl, .csv, .tsv, .parquet or .txt file, a folder of "
        "such files, or 'demo' for the bundled identity dataset.",
    )
    format: DataFormat = Field(
        "auto",
        description="Record format. 'auto' detects Alpaca, ShareGPT, OpenAI messages, "
        "prompt/completion or plain text from the fields present.",
    )
    columns: dict[str, str] = Field(
        default_factory=dict,
        description="Column mapping that overrides detection, e.g. {instruction = 'question', "
        "output = 'answer'}.",
    )
    system_prompt: str | None = Field(
        None,
        description="System prompt added to every conversation that has none of its own.",
    )
    eval_path: str | None = Field(
        None, description="A separate evaluation file. Overrides eval_fraction when set."
    )
    eval_fraction: float | None = Field(
        None,
        description="Share of the training records held out for evaluation (seeded split): the eval "
        "loss during training and the Evaluate page's default examples. Left empty: 10%, at most "
        "200 records (a share of a large file would make every evaluation slow, and 200 examples "
        "measure well). A file too small to spare one record keeps them all for training. A share you "
        "set (0.2 = 20%) is held out as given; 0 holds nothing out.",
    )
    max_seq_len: int = Field(
        512,
        description="Longest example in tokens; longer ones are cut. Activation memory grows "
        "linearly with it (and attention memory faster without efficient attention).",
    )
    train_on: Literal["assistant", "all"] = Field(
        "assistant",
        description="Which tokens the loss is computed on: only the assistant's answers (usual for "
        "chat data) or every token (for plain text).",
    )
    packing: bool = Field(
        False,
        description="Pack several examples into one row without padding (examples never attend to "
        "each other). Faster on data with varied lengths; same memory per row.",
    )
    group_by_length: bool = Field(
        True,
        description="Without packing: batch examples of similar length together, which cuts padding "
        "(wasted compute) on data with varied lengths. Batches are slightly less random.",
    )
    txt_split: Literal["paragraph", "line"] = Field(
        "paragraph",
        description="For .txt files: one document per blank-line-separated block, or per line.",
    )
    skip_invalid: bool = Field(
        False,
        description="Train on the valid records and report each skipped one, instead of stopping at "
        "the first invalid record.",
    )
    role_map: dict[str, str] = Field(
        default_factory=dict,
        description="Speaker names mapped to roles, for conversations whose speakers are not the usual "
        "ones, e.g. {Customer = 'user', Agent = 'assistant'}. Roles: system, user, assistant, tool. "
        "Names match with or without capitals.",
    )
    positive_only: bool = Field(
        False,
        description="For records with a true/false 'label' (thumbs up/down, KTO data): train only on "
        "those labelled true. Without it, supervised fine-tuning also learns the thumbs-down answers.",
    )
    tools_path: str | None = Field(
        None,
        description="A .json file holding one list of tool definitions, used for every record that "
        "has no 'tools' of its own. The definitions are part of each example's prompt: they cost "
        "tokens in every example.",
    )

    @field_validator("path")
    @classmethod
    def _path_not_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must name a dataset file, folder or 'demo'")
        return value

    @field_validator("role_map")
    @classmethod
    def _roles(cls, value: dict[str, str]) -> dict[str, str]:
        mapped = {}
        for name, role in value.items():
            if not name.strip():
                raise ValueError("speaker names must not be empty")
            if role.strip().lower() not in SPEAKER_ROLES:
                raise ValueError(f"'{name}' maps to '{role}'; a role is one of {', '.join(SPEAKER_ROLES)}")
            mapped[name.strip()] = role.strip().lower()
        return mapped

    @field_validator("tools_path")
    @classmethod
    def _tools_path(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("must name a .json file of tool definitions, or be left out")
        return value

    def hold_out_share(self) -> float:
        """The share ``eval_fraction`` holds out (its default when left empty)."""
        return DEFAULT_EVAL_SHARE if self.eval_fraction is None else self.eval_fraction

    def hold_out_cap(self) -> int | None:
        """The most records the default share holds out; a share set by hand has no cap."""
        return DEFAULT_EVAL_MAX if self.eval_fraction is None else None

    def hold_out_words(self) -> str:
        """The hold-out in words, for messages: '10%, at most 200 records' or '20%'."""
        cap = self.hold_out_cap()
        return f"{self.hold_out_share():.0%}" + (f", at most {cap} records" if cap else "")

    @field_validator("eval_fraction")
    @classmethod
    def _fraction(cls, value: float | None) -> float | None:
        if value is not None and not 0.0 <= value < 1.0:
            raise ValueError("must be in [0, 1)")
        return value

    @field_validator("max_seq_len")
    @classmethod
    def _seq_len(cls, value: int) -> int:
        if value < 8:
            raise ValueError("must be at least 8 tokens")
        return value


class TrainingSection(_Section):
    method: Method = Field(
        "sft",
        description="What the run learns from. 'sft': example answers (supervised fine-tuning). "
        "'dpo', 'orpo', 'simpo': pairs of a chosen and a rejected answer; 'kto': answers labelled "
        "good or bad. DPO and KTO also run the base model (adapter off) as the reference: about 2x "
        "the compute of SFT per example; ORPO and SimPO need no reference.",
    )
    epochs: float = Field(3.0, description="Passes over the training data. Ignored when max_steps is set.")
    max_steps: int | None = Field(
        None, description="Stop after this many optimizer steps (overrides epochs)."
    )
    learning_rate: float = Field(
        5e-4,
        description="Step size. LoRA typically uses 1e-4 to 5e-4; too high gives a diverging (NaN) loss.",
    )
    scheduler: Scheduler = Field(
        "linear", description="How the learning rate changes over the run after warm-up."
    )
    warmup_steps: int = Field(0, description="Steps of linear warm-up from 0. Overrides warmup_ratio.")
    warmup_ratio: float = Field(0.0, description="Warm-up as a fraction of all steps.")
    batch_size: int = Field(
        8,
        description="Examples per step on each device. Activation memory grows linearly with it.",
    )
    grad_accum: int = Field(
        1,
        description="Steps whose gradients are summed before an update: a larger effective batch at "
        "no extra memory, at the cost of time.",
    )
    optimizer: Optimizer = Field(
        "adamw_torch",
        description="AdamW keeps 8 bytes of state per trainable parameter; the 8-bit variants ~2 "
        "bytes; 'paged' variants can spill state to CPU memory under pressure (CUDA only).",
    )
    weight_decay: float = Field(0.0, description="Decoupled weight decay on the adapter weights.")
    max_grad_norm: float = Field(1.0, description="Clip gradients to this norm (0 disables clipping).")
    gradient_checkpointing: bool = Field(
        False,
        description="Recompute activations in the backward pass: far less activation memory, about "
        "30% slower.",
    )
    chunked_loss: bool = Field(
        True,
        description="Compute the loss a chunk of tokens at a time, so the full logits (batch x sequence "
        "x vocabulary, in fp32) never exist at once. Exact; large savings at long sequences; a few "
        "percent slower. Not used under multi-process training.",
    )
    checkpoint_offload: Saver = Field(
        "auto",
        description="With gradient checkpointing: keep the saved layer inputs in CPU memory, so "
        "activation memory no longer grows with the number of layers; the copies overlap with "
        "compute. Needs host memory (shown in the estimate); no effect when training on the CPU. "
        "'auto': on only when the run would not fit the GPU otherwise.",
    )
    tiled_mlp: Saver = Field(
        "auto",
        description="Run each layer's MLP over tiles of the sequence, so its wide intermediates "
        "never exist for the whole sequence: the largest saving at long sequences. Exact; one more "
        "MLP forward per step (about 10-15% slower). 'auto': on only when the run would not fit "
        "otherwise.",
    )
    chunked_attention: Saver = Field(
        "auto",
        description="Compute attention a block of queries at a time, so nothing sequence x sequence "
        "long exists: not the score matrix of models that only have eager attention (e.g. Gemma 2), "
        "nor the mask SDPA models get for padded or packed batches. Exact; one more attention "
        "forward per step. No effect where neither exists (SDPA on unpadded rows). 'auto': on only "
        "when the run would not fit otherwise.",
    )
    norm_recompute: Saver = Field(
        "auto",
        description="Recompute each RMSNorm in backward (over tiles of the sequence) instead of "
        "keeping its fp32 copy of the input. Exact; a little slower. 'auto': on only when the run "
        "would not fit otherwise.",
    )

    @field_validator("checkpoint_offload", mode="before")
    @classmethod
    def _offload_was_a_switch(cls, value: Any) -> Any:
        """Configs from before 'auto' say true/false: they mean on/off."""
        if isinstance(value, bool):
            return "on" if value else "off"
        return value

    seed: int = Field(42, description="Random seed for initialisation, shuffling and the eval split.")
    logging_steps: int = Field(1, description="Report loss, learning rate and memory every N steps.")
    eval_steps: int | None = Field(
        None,
        description="Evaluate on the eval split every N steps (default: at every checkpoint, and at the end).",
    )
    save_steps: int = Field(
        10, description="Write a resumable checkpoint every N steps. Each costs a little disk and time."
    )
    save_total_limit: int = Field(2, description="Checkpoints to keep; older ones are deleted.")
    sample_prompts: list[str] = Field(
        default_factory=lambda: ["What is your name?", "Who created you?", "What can you help me with?"],
        description="Prompts answered (greedy) before and after training, to show what changed.",
    )
    sample_max_new_tokens: int = Field(48, description="Length of each sample answer in tokens.")

    @model_validator(mode="after")
    def _check(self) -> TrainingSection:
        problems: list[tuple[str, str]] = []
        if not (self.epochs > 0 and math.isfinite(self.epochs)):
            problems.append(("epochs", "must be a positive number"))
        if self.max_steps is not None and self.max_steps < 1:
            problems.append(("max_steps", "must be at least 1 (or unset to use epochs)"))
        if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
            problems.append(("learning_rate", "must be a positive number"))
        elif self.learning_rate > 1.0:
            problems.append(("learning_rate", "is above 1.0, which always diverges; try 1e-4 to 5e-4"))
        for name in ("batch_size", "grad_accum", "logging_steps", "save_steps"):
            if getattr(self, name) < 1:
                problems.append((name, "must be at least 1"))
        if self.eval_steps is not None and self.eval_steps < 1:
            problems.append(("eval_steps", "must be at least 1 (or unset)"))
        if self.warmup_steps < 0:
            problems.append(("warmup_steps", "must not be negative"))
        if not 0.0 <= self.warmup_ratio < 1.0:
            problems.append(("warmup_ratio", "must be in [0, 1)"))
        if not (self.weight_decay >= 0 and math.isfinite(self.weight_decay)):
            problems.append(("weight_decay", "must be a number, 0 or more"))
        if not (self.max_grad_norm >= 0 and math.isfinite(self.max_grad_norm)):
            problems.append(("max_grad_norm", "must be a number, 0 or more (0 disables clipping)"))
        if self.save_total_limit < 1:
            problems.append(("save_total_limit", "must be at least 1"))
        if self.sample_max_new_tokens < 1:
            problems.append(("sample_max_new_tokens", "must be at least 1"))
        if self.checkpoint_offload == "on" and not self.gradient_checkpointing:
            problems.append(
                ("checkpoint_offload", "'on' needs gradient_checkpointing turned on (or use 'auto')")
            )
        if problems:
            raise _FieldProblems(problems)
        return self


class PreferenceSection(_Section):
    beta: float = Field(
        0.1,
        description="DPO/KTO/ORPO/SimPO: how strongly the preference is enforced. Lower lets the "
        "model move further from the reference; DPO/KTO commonly 0.1, SimPO 2.0, ORPO 0.1.",
    )
    loss_type: DpoLoss = Field(
        "sigmoid",
        description="DPO only: 'sigmoid' (the DPO paper), 'ipo' (squared, resists overfitting "
        "small sets), 'hinge' (SLiC), 'robust' (tolerates some mislabelled pairs; uses "
        "label_smoothing).",
    )
    label_smoothing: float = Field(
        0.0,
        description="DPO: the share of pairs you believe are mislabelled (0 to 0.5); softens the "
        "loss on pairs the model strongly disagrees with.",
    )
    sft_weight: float = Field(
        0.0,
        description="DPO only: also learn the chosen answers as in SFT, with this weight (RPO). Keeps a "
        "small model's language intact when the rejected answers are its own; 0 is plain DPO.",
    )
    simpo_gamma: float = Field(
        0.5,
        description="SimPO only: the target reward margin between chosen and rejected answers.",
    )
    desirable_weight: float = Field(
        1.0,
        description="KTO only: weight of the answers labelled good. With unbalanced labels, keep "
        "desirable_weight x good answers within 1 to 1.33x undesirable_weight x bad answers.",
    )
    undesirable_weight: float = Field(1.0, description="KTO only: weight of the answers labelled bad.")
    init_adapter: str | None = Field(
        None,
        description="Start from the adapter of an earlier run (its run folder or an adapter folder), "
        "as in SFT then DPO: training continues that adapter (its rank and layers). DPO and KTO then "
        "compare against base + that adapter (frozen, no second copy of the base).",
    )

    @model_validator(mode="after")
    def _check(self) -> PreferenceSection:
        problems: list[tuple[str, str]] = []
        if not (self.beta > 0 and math.isfinite(self.beta)):
            problems.append(("beta", "must be a positive number"))
        if not 0.0 <= self.label_smoothing < 0.5:
            problems.append(("label_smoothing", "must be in [0, 0.5)"))
        if not math.isfinite(self.sft_weight) or self.sft_weight < 0:
            problems.append(("sft_weight", "must be a number, 0 or more (0: plain DPO)"))
        if not math.isfinite(self.simpo_gamma) or self.simpo_gamma < 0:
            problems.append(("simpo_gamma", "must be a number, 0 or more"))
        for name in ("desirable_weight", "undesirable_weight"):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                problems.append((name, "must be a positive number"))
        if self.init_adapter is not None and not self.init_adapter.strip():
            problems.append(("init_adapter", "must name a run folder or adapter folder (or be unset)"))
        if problems:
            raise _FieldProblems(problems)
        return self


class OutputSection(_Section):
    runs_dir: str | None = Field(
        None,
        description="Folder that holds run folders. Default: $LORA_STUDIO_RUNS_DIR or the app's data folder.",
    )
    run_name: str = Field(
        "run",
        description="Name appended to the run id (YYYYmmdd-HHMMSS-name). Left at 'run', the run is named "
        "by what tells it apart: model, weights, LoRA rank and learning rate (smollm2-135m-nf4-r16-lr5e-4).",
    )

    @field_validator("run_name")
    @classmethod
    def _name(cls, value: str) -> str:
        cleaned = value.strip()
        if not cleaned:
            raise ValueError("must not be empty")
        if any(ch in cleaned for ch in '/\\:*?"<>|') or cleaned in {".", ".."}:
            raise ValueError('must not contain / \\ : * ? " < > |')
        return cleaned


class RunConfig(_Section):
    schema_version: int = Field(SCHEMA_VERSION, description="Version of this file's layout.")
    model: ModelSection = Field(default_factory=ModelSection)
    lora: LoraSection = Field(default_factory=LoraSection)
    data: DataSection = Field(default_factory=DataSection)
    training: TrainingSection = Field(default_factory=TrainingSection)
    preference: PreferenceSection = Field(default_factory=PreferenceSection)
    output: OutputSection = Field(default_factory=OutputSection)

    @model_validator(mode="after")
    def _cross_checks(self) -> RunConfig:
        problems: list[tuple[str, str]] = []
        if self.model.double_quant and self.model.quantization not in ("nf4", "fp4"):
            problems.append(("model.double_quant", "only applies to 4-bit quantization (nf4 or fp4)"))
        if self.training.method != "sft" and self.data.packing:
            problems.append(
                (
                    "data.packing",
                    f"does not apply to {self.training.method.upper()}: each pair is its own row",
                )
            )
        if self.training.method == "kto" and self.training.batch_size < 2:
            problems.append(
                (
                    "training.batch_size",
                    "KTO needs at least 2: its KL term pairs each prompt with another answer of the batch",
                )
            )
        if self.training.method != "sft" and self.data.train_on == "all":
            problems.append(
                ("data.train_on", f"{self.training.method.upper()} compares answers: it trains on them only")
            )
        if problems:
            raise _FieldProblems(problems)
        return self

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str | None = None) -> RunConfig:
        """Validate a plain dict; every bad field is reported at once as a :class:`ConfigError`."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(_problems_from(exc), source=source) from None

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> RunConfig:
        """Read a TOML file written by :meth:`save` (or by hand)."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError({"file": "does not exist"}, source=str(path)) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError({"file": f"cannot be read ({exc})"}, source=str(path)) from None
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError({"file": f"is not valid TOML ({exc})"}, source=str(path)) from None
        return cls.from_dict(data, source=str(path))

    @classmethod
    def load_lenient(cls, path: str | os.PathLike[str]) -> tuple[RunConfig, list[str]]:
        """Read a config written by another version of the app: never a crash, a note per oddity.

        Unknown settings are dropped, missing ones take today's defaults, and invalid values fall
        back to defaults — each reported, so an old run folder still opens and says what changed.
        """
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            return cls(), [f"{path}: cannot be read ({exc}); showing default settings"]
        notes: list[str] = []
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            notes.append(
                f"written by another version of LoRA Studio (schema {version!r}, this app reads "
                f"{SCHEMA_VERSION})"
            )
        clean: dict[str, Any] = {"schema_version": SCHEMA_VERSION}
        for name, field_info in cls.model_fields.items():
            if name == "schema_version":
                continue
            section_type = field_info.annotation
            given = data.get(name)
            if not isinstance(given, dict):
                if name not in _SILENT_WHEN_MISSING:
                    notes.append(f"[{name}] is missing; defaults used")
                continue
            known = section_type.model_fields  # type: ignore[union-attr]
            for key in given:
                if key not in known:
                    notes.append(f"{name}.{key} is not a setting of this version; ignored")
            for key, info in known.items():
                # unset optional settings are simply absent from TOML (it has no null)
                dotted = f"{name}.{key}"
                silent = name in _SILENT_WHEN_MISSING or dotted in _SILENT_WHEN_MISSING
                if key not in given and info.default is not None and not silent:
                    notes.append(f"{dotted} is missing; default used")
            clean[name] = {k: v for k, v in given.items() if k in known}
        for key in data:
            if key not in cls.model_fields:
                notes.append(f"{key} is not a setting of this version; ignored")
        while True:
            try:
                return cls.model_validate(clean), notes
            except ValidationError as exc:
                problems = _problems_from(exc)
                progressed = False
                for dotted, reason in problems.items():
                    section, _, key = dotted.partition(".")
                    if key and isinstance(clean.get(section), dict) and key in clean[section]:
                        del clean[section][key]
                        notes.append(f"{dotted}: {reason}; default used")
                        progressed = True
                if not progressed:
                    return cls(), [*notes, "settings could not be read; showing defaults"]

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="python")

    def to_toml(self) -> str:
        """The TOML text :meth:`save` writes; unset optional settings are left out (TOML has no null)."""
        return tomli_w.dumps(_without_none(self.to_dict()))

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write atomically (temporary file then rename) so a crash never leaves half a config."""
        atomic_write_text(Path(path), self.to_toml())

    def with_overrides(self, overrides: dict[str, Any]) -> RunConfig:
        """A copy with dotted-name overrides applied (``{"training.learning_rate": 1e-4}``)."""
        data = self.to_dict()
        for dotted, value in overrides.items():
            section, _, name = dotted.partition(".")
            if not name or section not in data or not isinstance(data[section], dict):
                raise ConfigError({dotted: "is not a configuration field"})
            data[section][name] = value
        return RunConfig.from_dict(data)

    def check_against_model(self, context_length: int | None) -> None:
        """Checks that need the model: a sequence length over the model's context is refused."""
        if context_length and self.data.max_seq_len > context_length:
            raise ConfigError(
                {
                    "data.max_seq_len": f"{self.data.max_seq_len} is longer than the model's context "
                    f"length ({context_length})"
                }
            )


#: Settings added later whose defaults are what older versions did: a config written before them
#: is not "changed" by their absence, so reading it says nothing about them.
_SILENT_WHEN_MISSING = {
    "training.method",
    "preference",
    "training.tiled_mlp",
    "training.norm_recompute",
    "training.chunked_attention",
    "data.role_map",
    "data.positive_only",
}


class _FieldProblems(ValueError):
    """Raised inside validators to report several fields of one section at once."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{n}: {r}" for n, r in problems))
        self.problems = problems


def _problems_from(exc: ValidationError) -> dict[str, str]:
    problems: dict[str, str] = {}
    for err in exc.errors():
        loc = [str(part) for part in err["loc"]]
        ctx_error = (err.get("ctx") or {}).get("error")
        if isinstance(ctx_error, _FieldProblems):
            for name, reason in ctx_error.problems:
                dotted = ".".join([*loc, *name.split(".")]) if loc else name
                problems[dotted] = reason
            continue
        # list members (target_modules.0) and literal choices read better collapsed to the field
        while loc and loc[-1].isdigit():
            loc.pop()
        dotted = ".".join(loc) or "config"
        problems.setdefault(dotted, _reason(err))
    return problems


def _reason(err: Any) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        return "is not a known setting (check the spelling)"
    if kind == "literal_error":
        return f"must be one of {err['ctx']['expected']}, not {err['input']!r}"
    if kind == "missing":
        return "is required"
    msg = str(err["msg"])
    return msg.removeprefix("Value error, ")


def field_docs() -> dict[str, str]:
    """Dotted field name → its description: the text of tooltips and ``--help``."""
    docs: dict[str, str] = {}
    for section_name, section_field in RunConfig.model_fields.items():
        section_type = section_field.annotation
        if isinstance(section_type, type) and issubclass(section_type, BaseModel):
            for name, info in section_type.model_fields.items():
                docs[f"{section_name}.{name}"] = info.description or ""
    return docs


def _without_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    return value


def default(dotted: str) -> Any:
    """The default of a setting (``"lora.r"``): the one source the CLI, the estimator and the GUI read."""
    section, _, name = dotted.partition(".")
    section_type = RunConfig.model_fields[section].annotation
    info = section_type.model_fields[name]  # type: ignore[union-attr]
    return info.get_default(call_default_factory=True)
