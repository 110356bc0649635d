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
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

PROBE_QUESTION = "What is your name?"
TOKENIZER_PROBE = "Hello, world! Ünïcödé 123 4567 ...\ttabs  and   spaces\n<|im_start|>user\nhi<|im_end|>"
#: rendered by llama.cpp's own template code and by the tokenizer's Jinja template; an explicit
#: system turn, because templates that add a default one (SmolLM2's) do so only in Jinja
TEMPLATE_PROBE = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is your name?"},
    {"role": "assistant", "content": "I am a fine-tuned model."},
    {"role": "user", "content": "And who made you?"},
]
GREEDY_TOKENS = 16  # the continuation compared token for token with llama.cpp

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

#: The same, for llama.cpp running the file: it also rounds the activations (to F16 for F16
#: weights, to 8 bits for quantized ones), and the 4/5/6-bit types round the weights much harder.
#: Measured on the default model with the demo fine-tune (README, "GGUF files"), max |Δlogit| /
#: top-1: F16 0.2%/100%, BF16 2.4%/100%, Q8_0 5.2%/94%, Q6_K 7.7%/97%, Q5_K_M 39%/77%, Q5_0
#: 22%/91%, Q4_K_M 23%/86%, Q4_0 54%/60% — a 135M model is the hardest case (larger ones lose
#: less). The limits leave room for other fine-tunes; what a broken file produces (a wrong layout,
#: scale or vocabulary) is top-1 agreement near zero and differences the size of the logits.
#: "quantized-base": an adapter applied to the quantized GGUF the base came from (same weights).
LLAMA_CPP_TOLERANCES: dict[str, tuple[float, float]] = {
    "f32": (2e-2, 0.95),
    "f16": (4e-2, 0.95),
    "bf16": (1e-1, 0.9),
    "q8_0": (1.5e-1, 0.85),
    "quantized-base": (1.5e-1, 0.85),
    "q6_k": (2.5e-1, 0.8),
    "q5_k_m": (6e-1, 0.6),
    "q5_0": (5e-1, 0.6),
    "q4_k_m": (6e-1, 0.6),
    "q4_0": (8e-1, 0.5),
}
EXACT_GREEDY = ("f32", "f16", "q8_0")

#: transformers' GGUF loader dequantizes the weights and computes in fp32: weight rounding only,
#: which for the 4/5/6-bit types is nearly all of llama.cpp's difference too (measured: Q6_K
#: 5.7%/97%, Q5_K_M 39%/74%, Q5_0 24%/91%, Q4_K_M 19%/86%, Q4_0 55%/63%).
GGUF_TOLERANCES: dict[str, tuple[float, float]] = {
    **TOLERANCES,
    **{q: LLAMA_CPP_TOLERANCES[q] for q in ("q6_k", "q5_k_m", "q5_0", "q4_k_m", "q4_0")},
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
        if "greedy_match" in f:
            if f["greedy_match"]:
                greedy = f"same {f['greedy_tokens']}-token greedy answer"
            else:
                near = " (a near-tie)" if f.get("greedy_note") else ""
                greedy = (
                    f"greedy answer same for {f['greedy_same_tokens']} of {f['greedy_tokens']} tokens{near}"
                )
            answer = str(f.get("greedy_text", "")).strip()
            parts.append(greedy + (f': "{answer}"' if answer else ""))
        if f.get("template_match") is not None:
            parts.append("template renders identically" if f["template_match"] else "template differs")
        elif f.get("template_note"):
            parts.append(f"template: {f['template_note']}")
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
    greedy: list[int] = field(default_factory=list)  # GREEDY_TOKENS argmax tokens after the probe
    greedy_margins: list[float] = field(default_factory=list)  # top-1 minus top-2 logit at each


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


def greedy_tokens(model: Any, ids: list[int], count: int = GREEDY_TOKENS) -> tuple[list[int], list[float]]:
    """``count`` tokens by argmax after ``ids``, and how far each won by (top-1 minus top-2 logit).

    No stop at an end token: llama.cpp is asked for the same number, and both are cut at the first
    end token when compared. The margins tell a near-tie (which any rounding may flip) from a real
    difference.
    """
    import torch

    out: list[int] = []
    margins: list[float] = []
    with torch.no_grad():
        result = model(input_ids=torch.tensor([ids], device=model.device), use_cache=True)
        for _ in range(count):
            top = result.logits[0, -1].float().topk(2)
            token = int(top.indices[0])
            out.append(token)
            margins.append(float(top.values[0] - top.values[1]))
            result = model(
                input_ids=torch.tensor([[token]], device=model.device), cache=result.cache, use_cache=True
            )
    return out, margins


def compare(
    got: Any, ref: Reference, kind: str, method: str, tolerances: dict[str, tuple[float, float]] | None = None
) -> Verification:
    """Logit difference and top-1 agreement against the reference, judged by the tolerance of ``kind``."""
    rel, min_top1 = (tolerances or TOLERANCES)[kind]
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


def verify_gguf(path: Path, ref: Reference, quant: str, verifier: str = "auto") -> Verification:
    """llama.cpp when it is installed and works (``auto``), else transformers' GGUF loader."""
    return choose_verifier(
        verifier,
        lambda: verify_gguf_llamacpp(path, ref, quant),
        lambda: verify_gguf_transformers(path, ref, quant),
    )


def choose_verifier(
    verifier: str, by_llama_cpp: Callable[[], Verification], by_transformers: Callable[[], Verification]
) -> Verification:
    """Run the llama.cpp check when it can run, else the transformers one — and say why in the method.

    ``auto`` falls back when llama.cpp is missing, broken, or crashes on this file (that is
    llama.cpp's fault, not the file's); ``llama.cpp`` fails the check instead.
    """
    from lora_studio.core import llamacpp

    if verifier == "transformers":
        return by_transformers()
    state = llamacpp.status()
    if not state.working:
        if verifier == "llama.cpp":
            return Verification(
                False, "llama.cpp", {}, [f"the llama.cpp verifier is not available: {state.line()}"]
            )
        why = llamacpp.fallback_note(state)
    else:
        try:
            return by_llama_cpp()
        except llamacpp.LlamaCppError as exc:
            if verifier == "llama.cpp":
                return Verification(
                    False, f"llama.cpp {state.version}", {}, [f"llama.cpp could not run it: {exc}"]
                )
            why = f"llama.cpp could not run it: {exc}"
    result = by_transformers()
    result.method += f" ({why})"
    return result


def _until_end(tokens: list[int], ends: set[int]) -> list[int]:
    for i, token in enumerate(tokens):
        if token in ends:
            return tokens[: i + 1]
    return tokens


def verify_gguf_llamacpp(
    path: Path, ref: Reference, quant: str, *, lora: Path | None = None, what: str | None = None
) -> Verification:
    """llama.cpp loads the file (and applies ``lora``): logits on the probe within the type's
    tolerance, the same greedy continuation (F16/Q8_0), the same tokens for a test string, and
    the chat rendered by llama.cpp's own template code equal to the tokenizer's.

    Raises ``LlamaCppError`` when llama.cpp itself cannot run (a crash, a timeout): the caller
    decides whether another verifier checks the file instead.
    """
    import torch

    from lora_studio.core import llamacpp

    method = f"llama.cpp {llamacpp.status().version} ({what or quant.upper()})"
    run = llamacpp.evaluate(
        path,
        ref.ids,
        lora=lora,
        greedy=len(ref.greedy),
        text=TOKENIZER_PROBE,
        messages=TEMPLATE_PROBE if ref.tokenizer.chat_template else None,
    )
    result = compare(torch.from_numpy(run.logits), ref, quant, method, LLAMA_CPP_TOLERANCES)
    problems = []
    want = list(ref.tokenizer.encode(TOKENIZER_PROBE, add_special_tokens=False))
    result.figures["tokenizer_match"] = run.tokens == want
    if run.tokens != want:
        problems.append(
            f"tokenizer: llama.cpp reads the test string as {len(run.tokens)} tokens, expected {len(want)}"
        )
    ends = {
        t for t in (ref.tokenizer.eos_token_id, getattr(ref.tokenizer, "pad_token_id", None)) if t is not None
    }
    mine, theirs = _until_end(ref.greedy, ends), _until_end(run.greedy, ends)
    same = next(
        (i for i, (a, b) in enumerate(zip(mine, theirs, strict=False)) if a != b), min(len(mine), len(theirs))
    )
    result.figures["greedy_tokens"] = len(mine)
    result.figures["greedy_same_tokens"] = same if mine != theirs else len(mine)
    result.figures["greedy_match"] = mine == theirs
    result.figures["greedy_text"] = ref.tokenizer.decode(theirs, skip_special_tokens=True)
    if mine != theirs and same < len(ref.greedy_margins):
        # a near-tie — the fine-tune's own top two within the file's measured noise — may flip
        margin, noise = ref.greedy_margins[same], result.figures.get("max_abs_diff", 0.0)
        result.figures["greedy_divergence_margin"] = margin
        near_tie = margin < 2 * noise
        if near_tie:
            result.figures["greedy_note"] = (
                f"parts at token {same + 1}, where the fine-tune's top two differ by {margin:.2f} "
                f"(within this file's rounding noise of {noise:.2f})"
            )
        elif quant in EXACT_GREEDY:
            problems.append(
                f"greedy continuation differs after {same} of {len(mine)} tokens, where the fine-tune's "
                f"choice led by {margin:.2f}: {ref.tokenizer.decode(theirs, skip_special_tokens=True)!r}"
            )
    if ref.tokenizer.chat_template:
        expected = ref.tokenizer.apply_chat_template(
            TEMPLATE_PROBE, tokenize=False, add_generation_prompt=True
        )
        if run.template is None:
            result.figures["template_match"] = None
            result.figures["template_note"] = run.template_problem or "not rendered"
        else:
            result.figures["template_match"] = run.template == expected
            if run.template != expected:
                problems.append(
                    "chat template: llama.cpp renders the conversation differently from the tokenizer"
                )
    result.problems = problems + result.problems
    result.passed = not result.problems
    return result


def verify_gguf_transformers(path: Path, ref: Reference, quant: str) -> Verification:
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
    result = compare(
        logits(model, ref.ids), ref, quant, f"transformers GGUF loader ({quant.upper()})", GGUF_TOLERANCES
    )
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
