"""Verification of exports: reload what was written, with a reader other than the writer, and compare.

Every check compares logits on one fixed chat prompt with those of the in-memory PEFT model (base
in fp32 + the source adapter), computed once before anything is written. Tolerances are relative
to the largest reference logit, because a tiny random test model and a real model produce logits
of very different sizes; each check also reports top-1 agreement (the greedy next token at every
position), which is what a user notices.
"""

from __future__ import annotations

import contextlib
import gc
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

PROBE_QUESTION = "What is your name?"
TOKENIZER_PROBE = "Hello, world! Ünïcödé 123 4567 ...\ttabs  and   spaces\n<|im_start|>user\nhi<|im_end|>"

#: (max abs logit difference relative to the largest reference logit, minimum top-1 agreement)
#: Half and 8-bit formats round every weight, so their limits are loose enough for that rounding
#: (measured on the default model: F16 0.1%, BF16 4.2%, Q8_0 2.6% of the largest logit) and far
#: below what a wrong tensor layout, scale or tokenizer produces (differences of the logits' size).
TOLERANCES: dict[str, tuple[float, float]] = {
    "exact": (0.0, 1.0),
    "fp32": (1e-4, 1.0),
    "fp16": (2e-2, 0.95),
    "f16": (2e-2, 0.95),
    "bf16": (1e-1, 0.85),
    "q8_0": (1e-1, 0.85),
}


@dataclass
class Verification:
    """Whether a reloaded export behaves like the model it came from, with the figures to show."""

    passed: bool
    method: str
    figures: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        f = self.figures
        parts = []
        if f.get("max_abs_diff") == 0:
            parts.append("identical logits")
        elif "max_abs_diff" in f:
            parts.append(f"max |Δlogit| {f['max_abs_diff']:.3g} (limit {f['limit']:.3g})")
        if "top1_agreement" in f:
            parts.append(f"top-1 agreement {100 * f['top1_agreement']:.1f}%")
        if "tokenizer_match" in f:
            parts.append("same tokens" if f["tokenizer_match"] else "tokens differ")
        if "template_match" in f:
            parts.append("template renders identically" if f["template_match"] else "template differs")
        return ", ".join(parts)


@dataclass
class Reference:
    """The in-memory PEFT model's answer to the probe: what every export is compared with."""

    base_path: Path
    adapter_dir: Path
    tokenizer: Any
    ids: list[int]
    logits: Any  # torch.Tensor (positions × vocab), fp32
    trust_remote_code: bool = False


def probe_ids(tokenizer: Any) -> list[int]:
    """The probe prompt rendered with the model's chat template (or plain text without one)."""
    messages = [{"role": "user", "content": PROBE_QUESTION}]
    if tokenizer.chat_template:
        return list(
            tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=True, return_dict=False
            )
        )
    return list(tokenizer(f"User: {PROBE_QUESTION}\nAssistant:")["input_ids"])


def load_base(path: Path, *, trust_remote_code: bool = False) -> Any:
    """A fresh fp32 copy of the base model on the CPU (never quantized: QLoRA bases are reloaded in full)."""
    from lora_studio.core.models import load_model

    model, _ = load_model(str(path), "none", "fp32", "cpu", trust_remote_code=trust_remote_code)
    return model.eval()


def load_peft(base: Any, adapter_dir: Path) -> Any:
    from peft import PeftModel

    from lora_studio.core.chat import check_adapter_fits
    from lora_studio.core.models import model_construction

    check_adapter_fits(base, adapter_dir)
    with model_construction():
        return PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=False).eval()


def logits(model: Any, ids: list[int]) -> Any:
    import torch

    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids], device=model.device), use_cache=False)
    return out.logits[0].float().cpu()


def compare(got: Any, ref: Reference, kind: str, method: str) -> Verification:
    """Logit difference and top-1 agreement against the reference, judged by the tolerance of ``kind``."""
    rel, min_top1 = TOLERANCES[kind]
    if tuple(got.shape) != tuple(ref.logits.shape):
        return Verification(
            False, method, {}, [f"logits shape {tuple(got.shape)} differs from {tuple(ref.logits.shape)}"]
        )
    diff = (got - ref.logits).abs()
    scale = float(ref.logits.abs().max())
    limit = rel * max(scale, 1e-6)
    top1 = float((got.argmax(-1) == ref.logits.argmax(-1)).float().mean())
    figures = {
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": float(diff.mean()),
        "limit": limit,
        "logit_scale": scale,
        "top1_agreement": top1,
        "positions": int(got.shape[0]),
        "next_token_same": bool(got[-1].argmax() == ref.logits[-1].argmax()),
    }
    problems = []
    if figures["max_abs_diff"] > limit:
        problems.append(
            f"logits differ by up to {figures['max_abs_diff']:.4g} (allowed {limit:.4g} for {kind})"
        )
    if top1 < min_top1:
        problems.append(
            f"greedy next token agrees at {100 * top1:.1f}% of positions (need {100 * min_top1:.0f}%)"
        )
    return Verification(not problems, method, figures, problems)


# -- per format ---------------------------------------------------------------------------------


def verify_adapter(folder: Path, ref: Reference) -> Verification:
    """peft's ``PeftModel.from_pretrained`` on a fresh base must give identical logits; transformers'
    ``load_adapter`` the same within fp32 rounding."""
    model = load_peft(load_base(ref.base_path, trust_remote_code=ref.trust_remote_code), folder)
    result = compare(logits(model, ref.ids), ref, "exact", "peft.PeftModel.from_pretrained on a fresh base")
    del model
    gc.collect()
    base = load_base(ref.base_path, trust_remote_code=ref.trust_remote_code)
    base.load_adapter(str(folder))
    second = compare(logits(base, ref.ids), ref, "fp32", "transformers load_adapter")
    del base
    gc.collect()
    result.method += "; transformers load_adapter"
    result.figures["load_adapter_max_abs_diff"] = second.figures.get("max_abs_diff")
    result.problems += [f"load_adapter: {p}" for p in second.problems]
    result.passed = result.passed and second.passed
    return result


def verify_merged(folder: Path, ref: Reference, dtype: str) -> Verification:
    import torch
    from transformers import AutoModelForCausalLM

    from lora_studio.core.models import model_construction, quiet_libraries

    with quiet_libraries(), model_construction():
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    result = compare(
        logits(model, ref.ids), ref, dtype, f"AutoModelForCausalLM.from_pretrained ({dtype} weights)"
    )
    del model
    gc.collect()
    return result


def verify_gguf(path: Path, ref: Reference, quant: str) -> Verification:
    """transformers' own GGUF loader reads the file: same tokens for a test string and the chat prompt,
    logits within the quantization's tolerance."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lora_studio.core.models import model_construction, quiet_libraries

    with shared_gguf_reader(), quiet_libraries():
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        with model_construction():
            model = AutoModelForCausalLM.from_pretrained(
                str(path.parent), gguf_file=path.name, dtype=torch.float32
            ).eval()
    problems = []
    want, got = ref.tokenizer.encode(TOKENIZER_PROBE), tokenizer.encode(TOKENIZER_PROBE)
    if got != want:
        problems.append(f"tokenizer: test string encodes to {len(got)} tokens, expected {len(want)}")
    template_ids = probe_ids(tokenizer)
    if template_ids != ref.ids:
        problems.append("chat template: the probe prompt renders to different tokens")
    result = compare(logits(model, ref.ids), ref, quant, f"transformers GGUF loader ({quant.upper()})")
    del model
    gc.collect()
    result.figures["tokenizer_match"] = got == want
    result.figures["template_match"] = template_ids == ref.ids
    result.problems = problems + result.problems
    result.passed = not result.problems
    return result


def verify_adapter_gguf(path: Path, ref: Reference, config: Any) -> Verification:
    """Read the adapter back with gguf's reader, check it as llama.cpp does (type, architecture, shapes),
    apply ``W + alpha/r · B·A`` to a fresh base — undoing the rotary permutation with transformers' own
    GGUF code — and compare logits."""
    import numpy as np
    import torch
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    from lora_studio.core.export.gguf import read_adapter_gguf, tensor_name_map

    method = "gguf reader + llama.cpp's LoRA rules (W + alpha/r·B·A) on a fresh base"
    meta, pairs = read_adapter_gguf(path)
    problems = []
    for key, want in (
        ("general.type", "adapter"),
        ("adapter.type", "lora"),
        ("general.architecture", "llama"),
    ):
        if meta.get(key) != want:
            problems.append(f"{key} is {meta.get(key)!r}, expected {want!r}")
    alpha = float(meta.get("adapter.lora.alpha") or 0.0)
    base = load_base(ref.base_path, trust_remote_code=ref.trust_remote_code)
    state = base.state_dict()
    names = tensor_name_map(config, state.keys())
    processor = LlamaTensorProcessor(
        config={
            "num_attention_heads": config.num_attention_heads,
            "num_key_value_heads": config.num_key_value_heads,
        }
    )
    with torch.no_grad():
        for target, (a, b) in pairs.items():
            hf = names.get(target)
            if hf is None or a is None or b is None:
                problems.append(f"{target}: no such base tensor, or half of the A/B pair is missing")
                continue
            weight = state[hf]
            if a.shape[1] != weight.shape[1] or b.shape[0] != weight.shape[0] or a.shape[0] != b.shape[1]:
                problems.append(f"{target}: shapes A{a.shape} B{b.shape} do not fit W{tuple(weight.shape)}")
                continue
            b = np.ascontiguousarray(processor.process(weights=b, name=target).weights)
            scale = alpha / a.shape[0] if alpha else 1.0
            weight += scale * (torch.from_numpy(np.array(b)) @ torch.from_numpy(np.array(a))).to(weight.dtype)
    result = compare(logits(base, ref.ids), ref, "fp32", method)
    del base, state
    gc.collect()
    result.figures["tensor_pairs"] = len(pairs)
    result.figures["alpha"] = alpha
    result.problems = problems + result.problems
    result.passed = not result.problems
    return result


@contextlib.contextmanager
def shared_gguf_reader() -> Iterator[None]:
    """Parse each GGUF file once while transformers loads it.

    transformers reads the same file three times (config, weights, tokenizer), and gguf's reader
    spends ~15 s on a 49k-token vocabulary each time. The parsed reader is read-only, so sharing it
    changes nothing but the wait. Keyed by path, size and modification time.
    """
    import gguf

    original = gguf.GGUFReader
    cache: dict[tuple[str, int, int], Any] = {}

    class _Shared(original):  # type: ignore[misc, valid-type]
        def __new__(cls, path: Any, mode: str = "r") -> Any:
            stat = os.stat(path)
            key = (os.fspath(path), stat.st_size, stat.st_mtime_ns)
            if key not in cache:
                cache[key] = original(path, mode)
            return cache[key]

    gguf.GGUFReader = _Shared
    try:
        yield
    finally:
        gguf.GGUFReader = original
