"""Writers for the Hugging Face formats: the PEFT adapter folder (with its model card) and the merged model.

The merged model is written shard by shard from the merged fp32 weights, each tensor cast to the
chosen dtype only as its shard is written, so writing costs one shard of extra memory — not a
second copy of the model. Both writers call ``tick(done, total)`` between files, which is where a
cancel request or an injected fault interrupts them.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "chat_template.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
)
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
Tick = Callable[[int, int], None]


@dataclass
class CardFacts:
    """What the model card says; gathered from the run folder when there is one."""

    name: str
    base_model: str
    base_name: str
    base_path: str
    architecture: str
    parameters: int
    adapter_settings: dict[str, Any]
    run_id: str | None = None
    checkpoint_step: int | None = None
    status: dict[str, Any] = field(default_factory=dict)
    config_toml: str | None = None
    dataset: str | None = None
    dataset_records: int | None = None
    final_loss: float | None = None
    final_eval_loss: float | None = None
    samples: list[dict[str, Any]] = field(default_factory=list)
    base_note: str | None = None
    hub_id: str | None = None  # where the base model is published, for the card's front matter
    adapted_layers: list[str] = field(default_factory=list)
    method: str | None = None  # how it learnt: "supervised fine-tuning (SFT)", "DPO (beta = 0.1, …)"


def software_versions() -> dict[str, str]:
    """Installed versions, read from package metadata (nothing is imported)."""
    versions = {}
    for dist in ("lora-studio", "torch", "transformers", "peft", "safetensors", "gguf", "tokenizers"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    import platform

    versions["python"] = platform.python_version()
    return versions


# -- the adapter --------------------------------------------------------------------------------


def copy_adapter(
    adapter_dir: Path, out: Path, card: str, tick: Tick, *, tokenizer_dir: Path | None
) -> list[str]:
    """The PEFT folder unchanged (so peft and ``load_adapter`` read it as before), plus tokenizer and card."""
    notes = []
    out.mkdir(parents=True)
    names = [n for n in ADAPTER_FILES if (adapter_dir / n).is_file()]
    missing = [n for n in ADAPTER_FILES if n not in names]
    if missing:
        from lora_studio.core.errors import LoraStudioError

        raise LoraStudioError(
            f"{adapter_dir}: {', '.join(missing)} missing", hint="the adapter folder is incomplete"
        )
    tokenizer_source = adapter_dir if (adapter_dir / "tokenizer_config.json").is_file() else tokenizer_dir
    tokenizer_names = [
        n for n in TOKENIZER_FILES if tokenizer_source is not None and (tokenizer_source / n).is_file()
    ]
    if tokenizer_source is not adapter_dir and tokenizer_names:
        notes.append(f"tokenizer files copied from the base model ({tokenizer_source})")
    total = len(names) + len(tokenizer_names) + 1
    for done, name in enumerate(names, 1):
        shutil.copy2(adapter_dir / name, out / name)
        tick(done, total)
    for done, name in enumerate(tokenizer_names, len(names) + 1):
        assert tokenizer_source is not None
        shutil.copy2(tokenizer_source / name, out / name)
        tick(done, total)
    (out / "README.md").write_text(card, encoding="utf-8")
    tick(total, total)
    return notes


# -- the merged model ---------------------------------------------------------------------------


def unique_state(model: Any) -> dict[str, Any]:
    """The state dict without the second name of a tied tensor (``lm_head`` tied to the embeddings)."""
    seen: set[tuple[int, int]] = set()
    state = {}
    for key, tensor in model.state_dict().items():
        ident = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
        if ident in seen:
            continue
        seen.add(ident)
        state[key] = tensor
    return state


def plan_shards(sizes: dict[str, int], max_shard_bytes: int) -> list[list[str]]:
    """Greedy, in state-dict order: a new shard starts when the next tensor would overflow this one."""
    shards: list[list[str]] = [[]]
    used = 0
    for key, size in sizes.items():
        if shards[-1] and used + size > max_shard_bytes:
            shards.append([])
            used = 0
        shards[-1].append(key)
        used += size
    return shards


def write_merged(
    out: Path,
    model: Any,
    tokenizer: Any,
    *,
    dtype: str,
    max_shard_bytes: int,
    tick: Tick,
    card: str,
) -> list[str]:
    """A plain Hugging Face folder: config, generation config, safetensors shards (+ index), tokenizer."""
    import torch
    from safetensors.torch import save_file

    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    out.mkdir(parents=True)
    state = unique_state(model)
    sizes = {k: t.numel() * DTYPE_BYTES[dtype] for k, t in state.items()}
    shards = plan_shards(sizes, max_shard_bytes)
    count = len(shards)
    weight_map = {}
    for index, keys in enumerate(shards, 1):
        name = "model.safetensors" if count == 1 else f"model-{index:05d}-of-{count:05d}.safetensors"
        tensors = {k: state[k].detach().to(torch_dtype).contiguous() for k in keys}
        save_file(tensors, str(out / name), metadata={"format": "pt"})
        del tensors
        weight_map.update(dict.fromkeys(keys, name))
        tick(index, count + 1)
    if count > 1:
        index_doc = {"metadata": {"total_size": sum(sizes.values())}, "weight_map": weight_map}
        (out / "model.safetensors.index.json").write_text(json.dumps(index_doc, indent=2), encoding="utf-8")
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch_dtype
    config.use_cache = True
    config.save_pretrained(out)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "README.md").write_text(card, encoding="utf-8")
    tick(count + 1, count + 1)
    return (
        [f"{count} shard{'s' if count != 1 else ''} of at most {max_shard_bytes / 1e9:.2g} GB"]
        if count > 1
        else []
    )


# -- the model card -----------------------------------------------------------------------------


def method_summary(config: Any) -> str:
    """The training method in words, with the settings that define it, for the model card."""
    method, p = config.training.method, config.preference
    if method == "sft":
        return "supervised fine-tuning (SFT) on example answers"
    start = f", starting from the adapter `{p.init_adapter}`" if p.init_adapter else ""
    reference = "base model + that adapter" if p.init_adapter else "the base model (adapter off)"
    if method == "dpo":
        extra = f", plus SFT on the chosen answers × {p.sft_weight:g}" if p.sft_weight else ""
        return (
            f"DPO on chosen/rejected pairs ({p.loss_type} loss, β = {p.beta:g}{extra}; reference: "
            f"{reference}){start}"
        )
    if method == "kto":
        return (
            f"KTO on answers labelled good or bad (β = {p.beta:g}, weights {p.desirable_weight:g} good / "
            f"{p.undesirable_weight:g} bad; reference: {reference}){start}"
        )
    if method == "orpo":
        return f"ORPO on chosen/rejected pairs (λ = {p.beta:g}, no reference model){start}"
    return (
        f"SimPO on chosen/rejected pairs (β = {p.beta:g}, γ = {p.simpo_gamma:g}, no reference model){start}"
    )


def model_card(facts: CardFacts, kind: str) -> str:
    """README.md for the adapter (``kind="adapter"``) or the merged model (``kind="merged"``)."""
    s = facts.adapter_settings
    title = (
        f"{facts.name} — LoRA adapter for {facts.base_name}"
        if kind == "adapter"
        else (f"{facts.name} — {facts.base_name} with a LoRA fine-tune merged in")
    )
    lines = [
        "---",
        f"base_model: {json.dumps(facts.hub_id or facts.base_model)}",
        f"library_name: {'peft' if kind == 'adapter' else 'transformers'}",
        "tags: [lora, lora-studio]",
        "---",
        "",
        f"# {title}",
        "",
        "Fine-tuned with LoRA Studio — "
        + ("a PEFT LoRA adapter." if kind == "adapter" else "a plain Hugging Face model, no peft needed."),
        "",
        "## Base model",
        "",
        f"- **Model:** {facts.base_name} (`{facts.base_model}`)",
        f"- **Architecture:** {facts.architecture}, {facts.parameters:,} parameters",
        f"- **Loaded from:** `{facts.base_path}`",
    ]
    if facts.base_note:
        lines.append(f"- **Note:** {facts.base_note}")
    lines += ["", "## Training data", ""]
    if facts.dataset is not None:
        records = (
            f"{facts.dataset_records:,} records" if facts.dataset_records is not None else "size unknown"
        )
        lines.append(f"- **Dataset:** `{facts.dataset}` ({records})")
    else:
        lines.append("- Not recorded: this adapter does not come from a LoRA Studio run folder.")
    lines += ["", "## Training", ""]
    if facts.method:
        lines.append(f"- **Method:** {facts.method}")
    lines.append(
        f"- **LoRA:** r = {s.get('r')}, alpha = {s.get('lora_alpha')}, dropout = {s.get('lora_dropout')}, "
        f"DoRA = {bool(s.get('use_dora'))}, rsLoRA = {bool(s.get('use_rslora'))}"
    )
    if facts.adapted_layers:
        short = sorted({name.rsplit(".", 1)[-1] for name in facts.adapted_layers})
        lines.append(f"- **Adapted layers:** {len(facts.adapted_layers)} ({', '.join(short)})")
    if facts.run_id:
        step = facts.checkpoint_step if facts.checkpoint_step is not None else facts.status.get("step")
        lines.append(f"- **Run:** `{facts.run_id}`, state {facts.status.get('state', '?')}, step {step}")
    lines.append(f"- **Final training loss:** {_num(facts.final_loss)}")
    lines.append(f"- **Final evaluation loss:** {_num(facts.final_eval_loss)}")
    if facts.config_toml:
        lines += [
            "",
            "### Full training configuration (`config.toml`)",
            "",
            "```toml",
            facts.config_toml.strip(),
            "```",
        ]
    if facts.samples:
        lines += [
            "",
            "## Sample generations (greedy)",
            "",
            "| Prompt | Before training | After training |",
            "|---|---|---|",
        ]
        for prompt, before, after in _sample_rows(facts.samples):
            lines.append(f"| {_cell(prompt)} | {_cell(before)} | {_cell(after)} |")
    lines += ["", "## How to use", "", *_usage(facts, kind)]
    lines += ["", "## Software", ""]
    lines += [f"- {name} {version}" for name, version in software_versions().items()]
    return "\n".join(lines) + "\n"


def _usage(facts: CardFacts, kind: str) -> list[str]:
    if kind == "merged":
        return [
            "```python",
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            "",
            'model = AutoModelForCausalLM.from_pretrained("path/to/this/folder")',
            'tokenizer = AutoTokenizer.from_pretrained("path/to/this/folder")',
            'messages = [{"role": "user", "content": "What is your name?"}]',
            'inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)',
            "print(tokenizer.decode(model.generate(**inputs, max_new_tokens=64)[0]))",
            "```",
        ]
    return [
        "With peft:",
        "",
        "```python",
        "from peft import PeftModel",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        f'base = AutoModelForCausalLM.from_pretrained("{facts.base_path}")',
        'model = PeftModel.from_pretrained(base, "path/to/this/folder")',
        'tokenizer = AutoTokenizer.from_pretrained("path/to/this/folder")',
        "```",
        "",
        'Or with transformers alone: `base.load_adapter("path/to/this/folder")`. '
        "In LoRA Studio: `lora-studio chat --model "
        f"{facts.base_model} --adapter path/to/this/folder`.",
    ]


def _sample_rows(samples: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    rows: dict[str, dict[str, str]] = {}
    for record in samples:
        prompt = str(record.get("prompt", ""))
        rows.setdefault(prompt, {})[str(record.get("stage", ""))] = str(record.get("answer", ""))
    return [(p, r.get("before", ""), r.get("after", "")) for p, r in rows.items()]


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ").strip() or "—"


def _num(value: float | None) -> str:
    return f"{value:.4f}" if isinstance(value, int | float) else "not recorded"
