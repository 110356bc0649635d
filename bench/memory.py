"""Training memory and the longest context: the standard transformers + peft QLoRA path against ours.

Every number comes from the estimator's **precise mode** (``core/estimate/precise.py``): one real
training step (forward, backward, gradient clipping, optimizer step) of the model as each path
builds it, run on fake tensors under torch's ``MemTracker`` — shapes and dtypes, no weights, no GPU.
Depth: 2 and 4 decoder layers are simulated and the per-layer difference is extrapolated to the
real depth (``--check-depth`` simulates all layers of one setting to show the extrapolation holds).

Both paths: catalog config, NF4 + double quant, compute in bf16, LoRA all-linear (r 16 / 32,
alpha 2r, dropout 0.05, fp32 adapters as peft keeps them), batch 1, gradient checkpointing
(non-reentrant), torch AdamW, sdpa attention.

(a) **standard** — what a user script with transformers + peft does: ``prepare_model_for_kbit_training``
    (embeddings, norms and lm_head cast to fp32), ``Trainer(bf16=True)`` (the forward under bf16
    autocast), ``model(..., labels=...).loss`` (full logits, upcast to fp32), plain checkpointing.
(b) **ours** — the engine's defaults (lean k-bit preparation, chunked cross-entropy) plus the
    long-context savers a long run's ``auto`` turns on: checkpointed layer inputs kept in host
    memory (``training.checkpoint_offload``), recomputed norms (``training.norm_recompute``) and
    the tiled MLP (``training.tiled_mlp``) — all exact (tests/test_long_context.py).

The longest sequence that fits a card is searched on the simulated peak plus ``ALLOWANCE`` for the
CUDA context and the caching allocator (see its comment), and set beside Unsloth's published
figures for the same setting (``PUBLISHED``). Simulations are cached on disk per setting (keyed by
library versions and the source of the estimator), so a second run is instant.

Run: ``.venv/bin/python bench/memory.py`` (``--fresh`` ignores the cache; ``--check-depth`` adds
the full-depth check, minutes; ``--composition`` prints what is alive at the peak at 9k and 22k
tokens on the 12 GB setting, for both paths).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from typing import Any

from _common import ROOT, print_table, write_results

GIB = 2**30
MODELS = ("Llama-3.1-8B", "Qwen2.5-7B")
RANKS = (16, 32)
SEQS = (1024, 2048, 4096, 8192)
CARDS_GB = (8, 12, 16, 24, 40, 80)
#: The second model is searched up to this card (no published figures beyond to compare with).
QWEN_MAX_CARD = 24
#: Searched lengths are multiples of this; the search stops when a fitting and a non-fitting
#: simulated length are this close, or ``1/PRECISION`` of the length apart if that is more (a
#: half-million-token step takes minutes to simulate here; 0.4% is well inside the allowance's
#: own uncertainty).
STEP = 64
PRECISION = 256
#: Beyond Llama-3.1-8B's 131,072-token context: the table measures memory, as Unsloth's does
#: (its 80 GB figure is 342,733 tokens).
MIN_SEQ, MAX_SEQ = 256, 2**20
MAX_ROUNDS = 14
#: The longest-sequence search uses the anchors' rank.
FIT_RANK = 32
#: CUDA context + caching-allocator fragmentation, on top of the simulated tensors. From
#: ../shared/vram-validation/NOTES.md: the same kind of simulation of Llama-3.1-8B QLoRA r32 gave
#: 14.45 GiB at Unsloth's published HF+FA2 maximum for 16 GB (2,551 tokens) and 22.40 GiB at its
#: maximum for 24 GB (5,789 tokens): 1.55 and 1.60 GiB short of the cards (16,376 / 24,564 MiB as
#: nvidia-smi reports them, i.e. 15.99 / 23.99 GiB). The CUDA context alone is 1.34 GB in
#: transformers' "model memory anatomy". A sweep's maximum is a lower bound of the true one, so
#: the gap is an upper bound: 1.5 GiB.
ALLOWANCE = int(1.5 * GIB)
#: Unsloth's README table, Llama-3.1-8B QLoRA r32 all-linear, batch 1: the longest context on each
#: card with Unsloth, and with Hugging Face + FlashAttention-2 (tokens).
PUBLISHED = {
    12: (21848, 932),
    16: (40724, 2551),
    24: (78475, 5789),
    40: (153977, 12264),
    80: (342733, 28454),
}
#: The standard path is checked against the HF+FA2 column where ../shared/vram-validation did.
ANCHORS = {card: PUBLISHED[card][1] for card in (12, 16, 24)}

COMMON = {
    "quantization": "nf4",
    "double_quant": True,
    "compute_dtype": "bf16",
    "targets": "all-linear",
    "batch_size": 1,
    "optimizer": "adamw_torch",
    "gradient_checkpointing": True,
    "lora_dropout": 0.05,
    "device": "cuda",
}
_OFF = {"checkpoint_offload": "off", "tiled_mlp": "off", "norm_recompute": "off"}
_ON = {"checkpoint_offload": "on", "tiled_mlp": "on", "norm_recompute": "on"}
PATHS = {
    "standard": {"lean_kbit_prep": False, "chunked_loss": False, **_OFF},
    "ours": {"lean_kbit_prep": True, "chunked_loss": True, **_ON},
}
#: Our path with one saver off at a time: what each one is worth.
SAVER_VARIANTS = {
    "ours without tiled MLP": ("ours", {"tiled_mlp": "off"}),
    "ours without norm recompute": ("ours", {"norm_recompute": "off"}),
    "ours without offload": ("ours", {"checkpoint_offload": "off"}),
    "ours, LoRA dropout 0": ("ours", {"lora_dropout": 0.0}),
    "ours, 8-bit AdamW": ("ours", {"optimizer": "adamw_bnb_8bit"}),
}
#: Unsloth's notebooks train with an 8-bit AdamW: the anchors are compared with this variant too.
ANCHOR_VARIANT = ("standard, 8-bit AdamW", "standard", {"optimizer": "adamw_bnb_8bit"})
CACHE_FILE = "bench-memory-sims.json"


class Simulations:
    """Precise-mode peaks by category, cached on disk per setting."""

    def __init__(self, fresh: bool) -> None:
        from lora_studio.core.paths import cache_dir

        self.path = cache_dir() / CACHE_FILE
        self.key = _code_key()
        stored: dict[str, Any] = {}
        if not fresh and self.path.exists():
            try:
                stored = json.loads(self.path.read_text())
            except (OSError, json.JSONDecodeError):
                stored = {}
        self.peaks: dict[str, dict[str, int]] = (
            stored.get("peaks", {}) if stored.get("key") == self.key else {}
        )
        self.simulated = 0
        self.seconds = 0.0

    def peak(
        self, model: str, r: int, path: str, seq: int, extra: dict[str, Any] | None = None
    ) -> dict[str, int]:
        """Peak bytes by category of one step (extrapolated to full depth), from the cache or simulated."""
        settings = {**COMMON, **PATHS[path], **(extra or {}), "lora_r": r, "seq_len": seq}
        name = json.dumps([model, settings], sort_keys=True)
        if name not in self.peaks:
            from lora_studio.core.estimate import EstimateRequest, estimate_precise

            start = time.perf_counter()
            result = estimate_precise(EstimateRequest(f"catalog:{model}", **settings))
            self.seconds += time.perf_counter() - start
            self.simulated += 1
            self.peaks[name] = dict(result.peak)
            self._save()
        return self.peaks[name]

    def total(self, *args: Any, **kwargs: Any) -> int:
        return sum(self.peak(*args, **kwargs).values())

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"key": self.key, "peaks": self.peaks}))
        tmp.replace(self.path)


def _code_key() -> str:
    """Library versions + the simulation's source: a change to either invalidates the cache."""
    import bitsandbytes
    import peft
    import torch
    import transformers

    digest = hashlib.sha256()
    core = ROOT / "lora_studio" / "core"
    estimate = core / "estimate"
    # what a simulation runs (not the analytic arithmetic or the advice, which it never calls)
    for file in (
        *(estimate / name for name in ("precise.py", "fakes.py", "model.py", "preference.py", "request.py")),
        estimate / "savers.py",
        core / "train" / "memory_saving.py",
        core / "train" / "long_context.py",
        core / "train" / "attention.py",
        ROOT / "resources" / "catalog" / "models.json",
    ):
        digest.update(file.read_bytes())
    versions = [m.__version__ for m in (torch, transformers, peft, bitsandbytes)]
    return "-".join(versions) + "-" + digest.hexdigest()[:16]


def longest_fitting(total: Any, budget: int, known: dict[int, int]) -> tuple[int, int]:
    """(longest multiple of STEP whose simulated peak + ALLOWANCE fits ``budget``, simulations used).

    The peak of a step is the largest of a few moments whose bytes are each linear in the sequence
    length, so the search interpolates: from a fitting and a non-fitting simulated length it
    simulates where the line between them (or, beyond the known points, the line through the two
    longest) crosses the budget; it stops when a fitting and a non-fitting simulated length are
    ``STEP`` apart (or 1/``PRECISION`` of the length, if more). 0 means not even ``MIN_SEQ`` tokens
    fit.
    """
    limit = budget - ALLOWANCE
    used = 0

    def value(seq: int) -> int:
        nonlocal used
        if seq not in known:
            known[seq] = total(seq)
            used += 1
        return known[seq]

    if not known:
        value(MIN_SEQ)
    for _ in range(MAX_ROUNDS):
        fit = [s for s in sorted(known) if known[s] <= limit]
        over = [s for s in sorted(known) if known[s] > limit]
        if not fit:
            if min(known) <= MIN_SEQ:
                return 0, used
            value(MIN_SEQ)
            continue
        lo = fit[-1]
        hi = next((s for s in over if s > lo), None)
        close = max(STEP, lo // PRECISION // STEP * STEP)
        if hi is not None and hi - lo <= close:
            return lo, used
        if hi is None:
            if lo >= MAX_SEQ:
                return lo, used
            below = [s for s in fit if s < lo]
            if not below:
                guess = 2 * lo
            else:
                prev = below[-1]
                slope = (known[lo] - known[prev]) / (lo - prev)
                guess = lo + (limit - known[lo]) / slope if slope > 0 else 2 * lo
            guess = min(MAX_SEQ, max(lo + STEP, int(guess)))
        else:
            guess = lo + (limit - known[lo]) * (hi - lo) / (known[hi] - known[lo])
            guess = min(hi - STEP, max(lo + STEP, int(guess)))
        candidate = guess // STEP * STEP
        if candidate in known:  # the line lands on a known point: close the bracket by halving
            candidate = (lo + (hi or 2 * lo)) // 2 // STEP * STEP
        if candidate <= lo:
            candidate = lo + STEP
        # a candidate that fits is checked one step further, so the bracket closes at once if the
        # line was right (the common case: the peak is linear between two known lengths)
        if value(candidate) <= limit and candidate + close not in known:
            value(candidate + close)
    raise RuntimeError(f"no {STEP}-token bracket after {MAX_ROUNDS} rounds: {sorted(known.items())}")


def peak_table(sims: Simulations) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    rows, payload = [], []
    for model in MODELS:
        for r in RANKS:
            for seq in SEQS:
                a = sims.peak(model, r, "standard", seq)
                b = sims.peak(model, r, "ours", seq)
                ta, tb = sum(a.values()), sum(b.values())
                rows.append(
                    {
                        "model": model,
                        "r": r,
                        "seq": seq,
                        "std GB": ta / GIB,
                        "ours GB": tb / GIB,
                        "ours/std": tb / ta,
                        **{f"{k[:5]} std/ours": f"{_gb(a, k)}/{_gb(b, k)}" for k in _shown(a, b)},
                    }
                )
                payload.append(
                    {"model": model, "r": r, "seq": seq, "standard": a, "ours": b, "ratio": tb / ta}
                )
    return rows, payload


def _gb(peak: dict[str, int], category: str) -> str:
    """A category's extrapolated bytes; "?" for the activations and temporaries when one came out
    negative: the 2- and 4-layer simulations peak at different moments, and the split between the
    two then does not extrapolate (only the total does)."""
    split = ("activations", "temporaries")
    if category in split and any(peak[k] < 0 for k in split):
        return "?"
    return f"{peak[category] / GIB:.2f}"


def _shown(a: dict[str, int], b: dict[str, int]) -> list[str]:
    return [k for k in ("parameters", "activations", "temporaries", "optimizer", "gradients") if a[k] or b[k]]


def fit_table(sims: Simulations) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Longest sequence per card for each path and variant, beside the published figures."""
    rows, payload = [], []
    # the variants are searched on the cards they are compared on (a search at 80 GB simulates
    # half-million-token steps: minutes each on this CPU); Qwen2.5-7B, which has no published
    # figures to meet, up to 24 GB
    variants = [(path, path, {}, CARDS_GB) for path in PATHS] + [(*ANCHOR_VARIANT, tuple(ANCHORS))]
    variants += [(label, path, extra, (12,)) for label, (path, extra) in SAVER_VARIANTS.items()]
    for model in MODELS:
        if model == MODELS[0]:
            rows.append({"model": model, "r": FIT_RANK, "path": "published: Unsloth", **_published(0)})
            rows.append({"model": model, "r": FIT_RANK, "path": "published: HF + FA2", **_published(1)})
        for label, path, extra, cards in variants:
            if extra and model != MODELS[0]:
                continue
            known = {s: sims.total(model, FIT_RANK, path, s, extra) for s in SEQS}
            row: dict[str, Any] = {"model": model, "r": FIT_RANK, "path": label}
            for card in CARDS_GB:
                if card not in cards or (model != MODELS[0] and card > QWEN_MAX_CARD):
                    row[f"{card} GB"] = "-"
                    continue
                longest, _ = longest_fitting(
                    lambda s, p=path, e=extra, m=model: sims.total(m, FIT_RANK, p, s, e), card * GIB, known
                )
                row[f"{card} GB"] = longest
            rows.append(row)
            payload.append(dict(row))
    for model in MODELS:
        std = row_for(payload, model, "standard")
        ours = row_for(payload, model, "ours")
        row = {"model": model, "r": 32, "path": "ours / standard"}
        for card in CARDS_GB:
            a, b = std[f"{card} GB"], ours[f"{card} GB"]
            row[f"{card} GB"] = f"{b / a:.1f}x" if isinstance(a, int) and isinstance(b, int) and a else "-"
        rows.append(row)
    return rows, payload


def _published(column: int) -> dict[str, Any]:
    return {f"{card} GB": PUBLISHED[card][column] if card in PUBLISHED else "-" for card in CARDS_GB}


def versus_published(fit_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Ours against Unsloth's figure on each card, with the host memory the offloaded inputs take."""
    from lora_studio.core.estimate import catalog_config, find_catalog_model
    from lora_studio.core.models import text_config

    text = text_config(catalog_config(find_catalog_model(MODELS[0])))
    per_token = text.num_hidden_layers * text.hidden_size * 2  # one bf16 layer input per layer
    ours = row_for(fit_rows, MODELS[0], "ours")
    rows = []
    for card, (unsloth, hf) in PUBLISHED.items():
        tokens = ours[f"{card} GB"]
        rows.append(
            {
                "card": f"{card} GB",
                "Unsloth": unsloth,
                "ours": tokens,
                "ours / Unsloth": tokens / unsloth,
                "HF + FA2": hf,
                "ours / HF+FA2": tokens / hf,
                "host memory for offload GB": tokens * per_token / GIB,
                "met": tokens >= unsloth,
            }
        )
    return rows


def composition(model: str = "Llama-3.1-8B", seqs: tuple[int, ...] = (9216, 22016)) -> None:
    """Print what is alive at the peak of one step, grouped, for both paths (2 simulated layers)."""
    from lora_studio.core.estimate import EstimateRequest, plan_for, simulate_step

    for path in PATHS:
        for seq in seqs:
            settings = {**COMMON, **PATHS[path], "lora_r": FIT_RANK, "seq_len": seq}
            found: dict[str, int] = {}
            simulate_step(
                plan_for(EstimateRequest(f"catalog:{model}", **settings)), layers=2, composition=found
            )
            groups: dict[str, int] = {}
            for label, size in found.items():
                groups[_group(label)] = groups.get(_group(label), 0) + size
            rows = [
                {"what": name, "GB": size / GIB, "KiB per token": size / seq / 1024}
                for name, size in sorted(groups.items(), key=lambda kv: -kv[1])
                if size >= 2**20
            ]
            print_table(
                f"Alive at the peak: {model} r{FIT_RANK}, {path}, {seq} tokens (2 simulated layers)", rows
            )


def _group(label: str) -> str:
    """A composition label (kind | phase | module | op) folded into what the issue asks to see."""
    kind, phase, module, op = (part.strip() for part in label.split("|"))
    if kind == "Parameter":
        return "weights (quantized base, 16-bit embeddings/head, fp32 LoRA)"
    if kind in ("Gradient", "Optstate"):
        return "LoRA gradients + optimizer states"
    if "lm_head" in module or "cross_entropy" in op or "log_softmax" in op:
        return "loss chunk / logits"
    if phase == "forward":
        return f"kept from the forward: {module} {op}"
    if kind == "Temp":
        return "backward temporaries (gradients being formed)"
    if "mlp" in module:
        return "recomputed layer: MLP intermediates"
    if "norm" in module:
        return "recomputed layer: norms"
    if "lora" in module:
        return "recomputed layer: LoRA inputs (dropout outputs, masks)"
    return "recomputed layer: attention (q, k, v, output)"


def depth_check(sims: Simulations) -> list[dict[str, Any]]:
    """Simulate every layer of Llama-3.1-8B r32 at 2k tokens and compare with the extrapolation."""
    from lora_studio.core.estimate import EstimateRequest, plan_for, simulate_step

    rows = []
    for path in PATHS:
        settings = {**COMMON, **PATHS[path], "lora_r": 32, "seq_len": 2048}
        plan = plan_for(EstimateRequest("catalog:Llama-3.1-8B", **settings))
        start = time.perf_counter()
        full = sum(simulate_step(plan, layers=plan.shape.layers).values())
        extrapolated = sims.total("Llama-3.1-8B", 32, path, 2048)
        rows.append(
            {
                "path": path,
                "all 32 layers GB": full / GIB,
                "2+4 extrapolated GB": extrapolated / GIB,
                "ratio": extrapolated / full,
                "seconds": time.perf_counter() - start,
            }
        )
    return rows


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description="Training memory: the standard QLoRA path against ours.")
    parser.add_argument("--fresh", action="store_true", help="ignore the simulation cache")
    parser.add_argument(
        "--check-depth", action="store_true", help="simulate all layers of one setting (minutes)"
    )
    parser.add_argument(
        "--composition", action="store_true", help="print what is alive at the peak (9k and 22k tokens)"
    )
    args = parser.parse_args(argv)
    if args.composition:
        composition()
    sims = Simulations(fresh=args.fresh)
    start = time.perf_counter()
    rows, peaks = peak_table(sims)
    print_table(
        "Peak memory of one training step, precise mode (GB = GiB of tensors; CUDA context excluded; "
        "?: the 2- and 4-layer peaks fall at different moments, so only their total extrapolates)",
        rows,
    )
    fits, fit_rows = fit_table(sims)
    print_table(
        f"Longest sequence (tokens, multiple of {STEP}, within 1/{PRECISION} of the limit) that fits a "
        f"card: simulated peak + {ALLOWANCE / GIB:.1f} GB context/allocator allowance",
        fits,
    )
    llama = {r["path"]: r for r in fit_rows if r["model"] == "Llama-3.1-8B"}
    anchors = [
        {
            "card": f"{card} GB",
            "published HF+FA2": tokens,
            "standard (AdamW)": llama["standard"][f"{card} GB"],
            "ratio": llama["standard"][f"{card} GB"] / tokens,
            "standard (8-bit AdamW)": llama[ANCHOR_VARIANT[0]][f"{card} GB"],
            "ratio 8-bit": llama[ANCHOR_VARIANT[0]][f"{card} GB"] / tokens,
        }
        for card, tokens in ANCHORS.items()
    ]
    print_table("Standard path vs the published anchors (Llama-3.1-8B QLoRA r32, Unsloth README)", anchors)
    published = versus_published(fit_rows)
    print_table(
        "Ours vs the best published figures (Llama-3.1-8B QLoRA r32 all-linear, batch 1; Unsloth README)",
        published,
    )
    at_2k = [p["ratio"] for p in peaks if p["seq"] == 2048]
    gains = [
        row_for(fit_rows, m, "ours")["12 GB"] / max(row_for(fit_rows, m, "standard")["12 GB"], 1)
        for m in MODELS
    ]
    targets = {
        "peak ours/standard at 2k tokens (max over settings)": max(at_2k),
        "target peak ratio": 0.6,
        "longest on 12 GB, ours/standard (min over models)": min(gains),
        "target longest ratio": 8.0,
        "longest ours/Unsloth (min over cards)": min(r["ours / Unsloth"] for r in published),
        "target ours/Unsloth": 1.0,
    }
    print_table("Targets", [{"measure": k, "value": v} for k, v in targets.items()])
    depth = depth_check(sims) if args.check_depth else []
    if depth:
        print_table("Extrapolation from 2 and 4 layers vs simulating all 32 (Llama-3.1-8B r32, 2k)", depth)
    elapsed = time.perf_counter() - start
    print(f"\n{sims.simulated} settings simulated ({sims.seconds:.0f} s), {elapsed:.0f} s in all")
    write_results(
        "memory",
        {
            "settings": {"common": COMMON, "paths": PATHS, "anchor_variant": ANCHOR_VARIANT[2]},
            "allowance_bytes": ALLOWANCE,
            "peaks": peaks,
            "longest": fit_rows,
            "anchors": anchors,
            "targets": targets,
            "published": published,
            "met": {
                "peak_ratio": max(at_2k) <= 0.6,
                "longest_ratio": min(gains) >= 8.0,
                "published": all(r["met"] for r in published),
            },
            "depth_check": depth,
            "seconds": elapsed,
        },
    )
    return 0


def row_for(rows: list[dict[str, Any]], model: str, path: str) -> dict[str, Any]:
    return next(r for r in rows if r["model"] == model and r["path"] == path)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
