"""Real CUDA peaks of QLoRA training steps: the standard path against ours, against precise mode.

``bench/memory.py`` compares the two paths on simulated peaks; this checks the simulation on a
GPU. It builds a random-weight model from a catalog config (real widths and vocabulary; memory does
not depend on the values), saves it, loads it with the engine's ``load_model`` (bitsandbytes NF4 +
double quant, bf16), prepares it for each path as the engine does (settings ``COMMON`` and ``PATHS``
of ``bench/memory.py``): ``wrap_with_lora``, then ``apply_savers`` with the path's long-context
savers (tiled MLP, norm recompute), and trains with the Trainer's step: forward under bf16 autocast
(the chunked loss on our path) inside ``offload_context`` (the overlapped offloader, on our path),
backward, gradient clipping and torch AdamW.

Two modes:

- default: a few decoder layers (``--layers 8``), two steps per length; the second step's
  ``max_memory_allocated`` is compared with precise mode's simulated peak for the same config at
  the same depth, and ``max_memory_reserved`` + the CUDA context with the allowance
  ``bench/memory.py`` adds.
- ``--longest``: every layer. For each path, and each card size of ``bench/memory.py``'s
  ``CARDS_GB`` no larger than this GPU, the longest sequence for which a full steady-state step
  (forward, backward, clipping, AdamW step with its states already there) runs without
  ``torch.OutOfMemoryError``. A smaller card is emulated by capping the caching allocator with
  ``torch.cuda.set_per_process_memory_fraction``: the cap is the card's bytes (``card`` GiB, as
  ``bench/memory.py`` counts them) less this process's CUDA context (memory in use on the device,
  ``mem_get_info``, that the allocator has not reserved), i.e. what such a card leaves for tensors
  and the allocator's cache. Lengths are searched in multiples of 1024 tokens (bracketing from the
  simulated longest, or from the previous card's result, scaled by the free memory), then refined
  to 256. The table sets each result beside the simulated longest (``bench/memory.py``'s cache, or
  its ``bench/results/memory.json`` when made with the same settings, or a fresh search with
  ``--simulate``) and Unsloth's published figures. ``--budget-s`` bounds the whole run (model
  build included): a try whose predicted time does not fit what is left is not started, and the
  search reports the bracket it reached. Tries that would pin more host memory for the offloaded
  layer inputs than the machine has available are not started either.

Without a CUDA device it says so and exits 0 (nothing is written).

Run: ``.venv/bin/python bench/memory_cuda.py [--model Llama-3.1-8B] [--layers 8] [--seqs 1024,4096]``
or ``.venv/bin/python bench/memory_cuda.py --longest [--model Llama-3.1-8B] [--budget-s 480]``
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import shutil
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

from _common import RESULTS, WORK, print_table, write_results
from memory import ALLOWANCE, CARDS_GB, COMMON, PATHS, PUBLISHED

GIB = 2**30
#: --longest: lengths are bracketed and bisected in multiples of COARSE, then refined to FINE.
COARSE, FINE = 1024, 256
MAX_SEQ = 2**20
#: --longest: the two untimed-then-timed steps that create the optimizer states and load the kernels.
WARMUP_SEQ = 1024
#: --longest: a path is not started with less than this left of the budget (loading an 8B model).
MIN_PATH_S = 60.0
#: --longest: the share of the available host memory the offloaded inputs of one try may pin.
HOST_SHARE = 0.75


def build_model_folder(model: str, layers: int) -> Path:
    """A random-weight bf16 model of the catalog config with ``layers`` decoder layers (0: all), saved once.

    Built on the GPU when there is one (random init of 8B parameters on a CPU takes minutes); the
    GPU memory is given back before anything is measured.
    """
    import torch
    from transformers import AutoModelForCausalLM

    from lora_studio.core.estimate import catalog_config, find_catalog_model
    from lora_studio.core.models import text_config

    config = catalog_config(find_catalog_model(model))
    if layers:
        text_config(config).num_hidden_layers = layers
        if getattr(text_config(config), "layer_types", None):
            text_config(config).layer_types = list(text_config(config).layer_types)[:layers]
    folder = WORK / f"{model}-{layers or 'all'}"
    if not (folder / "config.json").exists():
        with torch.device("meta"):
            shape = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
        need = sum(p.numel() * 2 for p in shape.parameters())
        del shape
        free = shutil.disk_usage(WORK).free
        if free < need * 1.1 + GIB:
            raise SystemExit(
                f"bench/memory_cuda.py: {need / GIB:.1f} GB of weights to write, {free / GIB:.1f} GB free "
                f"in {WORK}"
            )
        torch.manual_seed(0)
        with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
            net = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
        net.save_pretrained(folder)
        del net
        release()
    return folder


def run_config(folder: Path, path: str, r: int) -> Any:
    from lora_studio.core.config import RunConfig

    settings = PATHS[path]
    overrides = {
        "model.source": str(folder),
        "model.quantization": COMMON["quantization"],
        "model.double_quant": COMMON["double_quant"],
        "model.compute_dtype": COMMON["compute_dtype"],
        "model.lean_kbit_prep": settings["lean_kbit_prep"],
        "lora.r": r,
        "lora.alpha": 2 * r,
        "lora.dropout": COMMON["lora_dropout"],
        "lora.target_modules": COMMON["targets"],
        "training.batch_size": 1,
        "training.optimizer": COMMON["optimizer"],
        "training.gradient_checkpointing": COMMON["gradient_checkpointing"],
        "training.chunked_loss": settings["chunked_loss"],
        "training.checkpoint_offload": settings["checkpoint_offload"],
        "training.tiled_mlp": settings["tiled_mlp"],
        "training.norm_recompute": settings["norm_recompute"],
    }
    return RunConfig().with_overrides(overrides)


def path_savers(config: Any) -> Any:
    """The long-context savers of a path's config ("on"/"off" as set; ``PATHS`` never says "auto")."""
    from lora_studio.core.train.long_context import Savers

    t = config.training
    return Savers(
        tiled_mlp=t.tiled_mlp == "on",
        norm_recompute=t.norm_recompute == "on",
        offload=t.checkpoint_offload == "on" and t.gradient_checkpointing,
    )


class Stepper:
    """The model of one path, loaded and prepared as the engine does, and its training step."""

    def __init__(self, folder: Path, path: str, r: int) -> None:
        import torch

        from lora_studio.core import models
        from lora_studio.core.train import wrap_with_lora
        from lora_studio.core.train.long_context import apply_savers

        self.config = config = run_config(folder, path, r)
        # the engine's loader; the random-weight folder has no tokenizer, and a step needs none
        with mock.patch.object(models, "load_tokenizer", lambda *a, **k: None):
            model, _ = models.load_model(
                str(folder),
                config.model.quantization,
                config.model.compute_dtype,
                "cuda",
                double_quant=config.model.double_quant,
            )
        model = wrap_with_lora(model, config)
        model.config.use_cache = False
        self.savers = path_savers(config)
        apply_savers(model, self.savers)
        model.train()
        self.model = model
        self.trainable = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.trainable, lr=1e-4, foreach=True)
        self.vocab = int(model.config.vocab_size)

    def step(self, seq: int) -> None:
        """forward (bf16 autocast, the path's loss, offloaded when the path offloads), backward, clip, AdamW."""
        import torch

        from lora_studio.core.train.memory_saving import chunked_forward_loss, offload_context

        ids = torch.randint(0, self.vocab, (1, seq), device="cuda")
        with offload_context(self.savers.offload), torch.autocast("cuda", dtype=torch.bfloat16):
            if self.config.training.chunked_loss:
                loss = chunked_forward_loss(self.model, {"input_ids": ids, "labels": ids})
            else:
                loss = self.model(input_ids=ids, labels=ids).loss
        loss.backward()
        del loss
        torch.nn.utils.clip_grad_norm_(self.trainable, 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def drop_gradients(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def close(self) -> None:
        """Drop the model and optimizer (their device memory goes with the next ``release``)."""
        self.model = self.optimizer = None
        self.trainable = []


def measure(folder: Path, path: str, r: int, seq: int) -> dict[str, int]:
    """Peak allocated / reserved bytes of a steady-state step, and the process's CUDA context."""
    import torch

    stepper = Stepper(folder, path, r)
    stepper.step(seq)  # creates the optimizer states, as the simulation's warm-up step does
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    stepper.step(seq)
    torch.cuda.synchronize()
    return {
        "allocated": torch.cuda.max_memory_allocated(),
        "reserved": torch.cuda.max_memory_reserved(),
        "context": cuda_context(),
    }  # the model and optimizer go with this frame; the caller empties the cache


def cuda_context() -> int:
    """Device memory in use that the caching allocator has not reserved: the CUDA context (and kernels)."""
    import torch

    free, total = torch.cuda.mem_get_info()
    return (total - free) - torch.cuda.memory_reserved()


def release() -> None:
    """Give back everything no longer referenced: device cache, the offloader's pinned host buffers."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
    if "lora_studio.core.train.offload" in sys.modules:
        from lora_studio.core.train.offload import release_host_buffers

        release_host_buffers()
        # torch's own cache of pinned blocks (torch.accelerator's since 2.9, torch._C's before)
        empty_host_cache = getattr(getattr(torch, "accelerator", None), "empty_host_cache", None)
        empty_host_cache = empty_host_cache or getattr(torch._C, "_host_emptyCache", None)
        if empty_host_cache is not None and torch.cuda.is_available():
            empty_host_cache()


def simulated(folder: Path, path: str, r: int, seq: int) -> int:
    """Precise mode's peak (tensors) for the same config, every layer simulated."""
    from lora_studio.core.estimate import EstimateRequest, estimate_precise

    settings = {**COMMON, **PATHS[path], "lora_r": r, "seq_len": seq}
    req = EstimateRequest(str(folder / "config.json"), **settings)
    layers = json.loads((folder / "config.json").read_text())["num_hidden_layers"]
    return estimate_precise(req, layers=layers).peak_bytes


# -- --longest ------------------------------------------------------------------------------------


class _Halt(Exception):
    """A try is not started (time budget, host memory): the search reports what it has."""


class _Stopped(Exception):
    """SIGTERM (e.g. ``timeout``): stop, print and write what was found."""


@dataclass
class Search:
    """The search of one (path, card): what fit, what did not, and why it stopped."""

    path: str
    card: int
    cap: int = 0
    context: int = 0
    guess: int | None = None
    longest: int = 0  #: longest length that trained (0: none)
    failed: int | None = None  #: shortest length that ran out of memory
    stopped: str = ""  #: why the search ended before its 256-token bracket ("" when it did not)
    peak: dict[str, int] = field(default_factory=dict)  #: peaks of the try at ``longest``
    tries: list[dict[str, Any]] = field(default_factory=list)

    def status(self) -> str:
        if self.stopped:
            return f"stopped ({self.stopped}): {self.failed or '?'} not reached or out of memory"
        if self.longest >= MAX_SEQ:
            return f"fits the longest tried ({MAX_SEQ})"
        if self.longest == 0 and (self.failed or 0) <= FINE:
            return f"{FINE} tokens do not fit"
        return f"{self.failed} out of memory"


def search_longest(
    fits: Callable[[int], bool], guess: int | None, search: Search, can_try: Callable[[int], str]
) -> None:
    """Longest multiple of ``FINE`` for which ``fits`` holds, assuming it holds below some length.

    From ``guess`` (or ``COARSE`` and doubling without one) it brackets in multiples of ``COARSE``,
    widening the step each time; bisects the bracket down to ``COARSE``; then to ``FINE``.
    ``can_try(seq)`` returns why a try may not start ("" when it may): the search stops there.
    """

    def probe(seq: int) -> bool:
        reason = can_try(seq)
        if reason:
            search.stopped = f"{reason} before {seq}"
            raise _Halt
        ok = fits(seq)
        if ok:
            search.longest = max(search.longest, seq)
        else:
            search.failed = seq if search.failed is None else min(search.failed, seq)
        return ok

    try:
        start = min(max(COARSE, (guess or 0) // COARSE * COARSE), MAX_SEQ)
        step = max(COARSE, start // 16 // COARSE * COARSE) if guess else 0
        if probe(start):
            while search.failed is None and search.longest < MAX_SEQ:
                probe(min(search.longest + step if step else 2 * search.longest, MAX_SEQ))
                step *= 2
        else:
            while search.longest == 0 and search.failed > COARSE:
                below = search.failed - step if step else search.failed // 2
                probe(max(COARSE, below // COARSE * COARSE))
                step *= 2
        for unit in (COARSE, FINE):
            while search.failed is not None and search.failed - search.longest > unit:
                probe((search.longest + search.failed) // 2 // unit * unit)
    except _Halt:
        pass


def flops_per_step(model: Any) -> Callable[[int], float]:
    """A step's relative cost by length: linear layers (forward, recompute, backward) + causal attention."""
    import torch

    from lora_studio.core.models import text_config

    weights = sum(m.in_features * m.out_features for m in model.modules() if isinstance(m, torch.nn.Linear))
    text = text_config(model.config)
    heads = text.num_attention_heads
    width = heads * (getattr(text, "head_dim", None) or text.hidden_size // heads)
    layers = text.num_hidden_layers
    return lambda seq: 8.0 * weights * seq + 9.0 * layers * width * seq * seq


def offload_host_bytes(model: Any, seq: int) -> int:
    """Pinned host memory the offloader takes for one step: each layer input (and a few more), in
    power-of-two buffers (``offload.HostBuffers``)."""
    from lora_studio.core.models import text_config

    text = text_config(model.config)
    one = seq * text.hidden_size * 2
    return (text.num_hidden_layers + 3) * (1 << max(one - 1, 0).bit_length())


def simulated_longest(model: str, r: int, simulate: bool) -> tuple[dict[tuple[str, int], int], str]:
    """bench/memory.py's longest fitting length per (path, card), and where it came from.

    Its simulation cache (no new simulation unless ``simulate``: at 40/80 GB one takes minutes),
    else its results file when that was made with today's ``COMMON``, ``PATHS`` and ``ALLOWANCE``;
    ``{}`` when neither has them.
    """
    out: dict[tuple[str, int], int] = {}
    try:
        out, source = _search_simulated(model, r, simulate)
        return out, source
    except _Uncached:
        pass
    except Exception as exc:  # an informational column: say why it is missing, go on
        print(f"simulated longest: bench/memory.py's search failed ({type(exc).__name__}: {exc})")
    stored = RESULTS / "memory.json"
    try:
        data = json.loads(stored.read_text())
        settings = data["settings"]
        if (
            settings["common"] == COMMON
            and settings["paths"] == PATHS
            and data.get("allowance_bytes") == ALLOWANCE
        ):
            for row in data["longest"]:
                if row["model"] == model and row["r"] == r and row["path"] in PATHS:
                    for card in CARDS_GB:
                        if isinstance(row.get(f"{card} GB"), int):
                            out[(row["path"], card)] = row[f"{card} GB"]
        if out:
            return out, f"bench/results/memory.json of {data.get('when', '?')}"
    except (OSError, KeyError, TypeError, json.JSONDecodeError):
        pass
    return {}, "none: run bench/memory.py, or pass --simulate"


class _Uncached(Exception):
    """bench/memory.py's simulation cache lacks a setting its search needs."""


def _search_simulated(model: str, r: int, simulate: bool) -> tuple[dict[tuple[str, int], int], str]:
    """``bench/memory.py``'s fit search, from the same known lengths as its ``fit_table``."""
    from memory import SEQS, Simulations, longest_fitting

    sims = Simulations(fresh=False)
    out = {}
    cache_only = mock.patch("lora_studio.core.estimate.estimate_precise", side_effect=_Uncached)
    with contextlib.nullcontext() if simulate else cache_only:
        for path in PATHS:

            def total(seq: int, path: str = path) -> int:
                return sims.total(model, r, path, seq)

            known = {seq: total(seq) for seq in SEQS}
            for card in CARDS_GB:
                out[(path, card)] = longest_fitting(total, card * GIB, known)[0]
    return out, "bench/memory.py's simulation cache" + (
        f" + {sims.simulated} simulations run now" if sims.simulated else ""
    )


def longest_for_path(
    folder: Path,
    path: str,
    r: int,
    cards: list[int],
    sim: dict[tuple[str, int], int],
    deadline: float,
    searches: list[Search],
) -> None:
    """Search every card for one path, appending a ``Search`` per card as it starts."""
    import psutil
    import torch

    if deadline - time.perf_counter() < MIN_PATH_S:
        for card in cards:
            searches.append(Search(path, card, stopped="time budget before loading the model"))
        return
    began = time.perf_counter()
    stepper = Stepper(folder, path, r)
    loaded = time.perf_counter() - began
    total = torch.cuda.mem_get_info()[1]
    try:
        flops = flops_per_step(stepper.model)
        stepper.step(WARMUP_SEQ)  # the optimizer states, the kernels
        torch.cuda.synchronize()
        began = time.perf_counter()
        stepper.step(WARMUP_SEQ)
        torch.cuda.synchronize()
        timings = {WARMUP_SEQ: time.perf_counter() - began}
        release()
        fixed = torch.cuda.memory_reserved()  # weights, LoRA, optimizer states, library workspaces
        print(
            f"\n{path}: loaded in {loaded:.0f} s; {fixed / GIB:.2f} GB reserved between steps "
            f"(weights, adapters, optimizer states); a {WARMUP_SEQ}-token step {timings[WARMUP_SEQ]:.2f} s"
        )

        def seconds_for(seq: int) -> float:
            shorter = [s for s in timings if s <= seq]
            ref = max(shorter) if shorter else min(timings)
            return timings[ref] * flops(seq) / flops(ref)

        def can_try(seq: int) -> str:
            if time.perf_counter() + 1.1 * seconds_for(seq) > deadline:
                return "time budget"
            if stepper.savers.offload:
                host = offload_host_bytes(stepper.model, seq)
                if host > HOST_SHARE * psutil.virtual_memory().available:
                    return f"host memory ({host / GIB:.0f} GB pinned for the offload)"
            return ""

        previous: tuple[int, int] | None = None  # (cap, longest) of the last card with a result
        for card in cards:
            release()
            search = Search(path, card, context=cuda_context())
            searches.append(search)
            search.cap = card * GIB - search.context
            free = search.cap - fixed
            if free <= 0:
                search.failed = FINE
                search.tries.append({"note": "weights + optimizer states exceed the cap"})
                print(
                    f"  {card} GB: {fixed / GIB:.2f} GB between steps exceed the {search.cap / GIB:.2f} GB cap"
                )
                continue
            torch.cuda.set_per_process_memory_fraction(min(1.0, search.cap / total), 0)
            if (path, card) in sim and sim[(path, card)] > 0:
                # the simulation fit card - ALLOWANCE; this cap is card - context
                simulated_free = card * GIB - ALLOWANCE - fixed
                search.guess = int(sim[(path, card)] * free / simulated_free) if simulated_free > 0 else None
            elif previous is not None and previous[1] > 0:
                search.guess = int(previous[1] * free / max(previous[0] - fixed, 1))

            def fits(seq: int, search: Search = search) -> bool:
                release()
                torch.cuda.reset_peak_memory_stats()
                began = time.perf_counter()
                try:
                    stepper.step(seq)
                    torch.cuda.synchronize()
                    ok = True
                except torch.cuda.OutOfMemoryError:
                    ok = False
                seconds = time.perf_counter() - began
                if not ok:
                    stepper.drop_gradients()
                peak = {
                    "reserved": torch.cuda.max_memory_reserved(),
                    "allocated": torch.cuda.max_memory_allocated(),
                }
                release()
                if ok:
                    timings[seq] = seconds
                    if seq >= search.longest:
                        search.peak = peak
                search.tries.append({"seq": seq, "fits": ok, "seconds": seconds, **peak})
                print(
                    f"  {search.card} GB (cap {search.cap / GIB:.2f} GB): {seq:>7} tokens "
                    f"{'fit' if ok else 'out of memory':<13} {seconds:6.1f} s, "
                    f"reserved {peak['reserved'] / GIB:.2f} GB"
                )
                return ok

            search_longest(fits, search.guess, search, can_try)
            if search.longest:
                previous = (search.cap, search.longest)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, 0)
        stepper.close()
        release()


def longest_main(args: argparse.Namespace) -> int:
    import torch

    began = time.perf_counter()
    deadline = began + args.budget_s

    def on_term(*_: object) -> None:
        raise _Stopped

    signal.signal(signal.SIGTERM, on_term)
    total = torch.cuda.mem_get_info()[1]
    cards = [card for card in CARDS_GB if card * GIB <= total]
    larger = [card for card in CARDS_GB if card * GIB > total]
    paths = [p for p in args.paths.split(",") if p]
    unknown = [p for p in paths if p not in PATHS]
    if unknown:
        print(f"bench/memory_cuda.py: unknown path(s) {', '.join(unknown)}; known: {', '.join(PATHS)}")
        return 2
    sim, source = simulated_longest(args.model, args.r, args.simulate)
    print(f"simulated longest: {source}")
    layers = args.layers or 0
    folder: Path | None = None
    searches: list[Search] = []
    interrupted = ""
    try:
        built = time.perf_counter()
        folder = build_model_folder(args.model, layers)
        print(
            f"random-weight {args.model} ({layers or 'all'} layers) written in {time.perf_counter() - built:.0f} s"
        )
        for i, path in enumerate(paths):
            # each path may use an equal share of what is left when it starts; the last one, the rest
            now = time.perf_counter()
            share = now + (deadline - now) / (len(paths) - i)
            try:
                longest_for_path(folder, path, args.r, cards, sim, share, searches)
            except torch.cuda.OutOfMemoryError as exc:  # loading, or the uncapped warm-up
                interrupted = f"{path}: out of memory outside a capped try ({exc})"
                print(interrupted)
                release()
    except _Stopped:
        interrupted = "SIGTERM"
        for search in searches:
            if not search.stopped and search.failed is not None and search.failed - search.longest > FINE:
                search.stopped = "SIGTERM"
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        if folder is not None and layers == 0:
            shutil.rmtree(folder, ignore_errors=True)  # 16 GB for an 8B model

    rows = []
    for search in searches:
        unsloth, hf = PUBLISHED.get(search.card, (None, None))
        rows.append(
            {
                "card": f"{search.card} GB",
                "path": search.path,
                "longest": search.longest,
                "reserved GB": search.peak.get("reserved", 0) / GIB,
                "allocated GB": search.peak.get("allocated", 0) / GIB,
                "cap GB": search.cap / GIB,
                "simulated": sim.get((search.path, search.card), "-"),
                "Unsloth": unsloth or "-",
                "HF+FA2": hf or "-",
                "tries": sum(1 for t in search.tries if "seq" in t),
                "search": search.status(),
            }
        )
    name = f"{args.model}, all layers, r{args.r}, batch 1, {torch.cuda.get_device_name()}"
    print_table(
        f"Longest sequence that trains (a full step) on an emulated card ({name}; tokens, multiple of "
        f"{FINE}; cap = card - CUDA context; GB = GiB)",
        rows,
    )
    if larger:
        print(
            f"cards larger than this GPU ({total / GIB:.0f} GB), not tried: {', '.join(f'{c} GB' for c in larger)}"
        )
    print(
        f"simulated: bench/memory.py's longest at simulated peak + {ALLOWANCE / GIB:.1f} GB allowance "
        f"({source}); Unsloth / HF+FA2: Unsloth's README (Llama-3.1-8B QLoRA r32)"
    )
    if interrupted:
        print(f"interrupted: {interrupted}")
    elapsed = time.perf_counter() - began
    print(f"{elapsed:.0f} s in all (budget {args.budget_s:.0f} s)")
    write_results(
        "memory_cuda_longest",
        {
            "model": args.model,
            "r": args.r,
            "device": torch.cuda.get_device_name(),
            "device_total_bytes": total,
            "budget_s": args.budget_s,
            "simulated_source": source,
            "rows": rows,
            "searches": [search.__dict__ for search in searches],
            "interrupted": interrupted,
            "seconds": elapsed,
        },
    )
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="Llama-3.1-8B", help="catalog model (default Llama-3.1-8B)")
    parser.add_argument(
        "--layers", type=int, default=None, help="decoder layers to build (0: all; default 8, --longest: all)"
    )
    parser.add_argument("--r", type=int, default=32, help="LoRA rank (default 32)")
    parser.add_argument("--seqs", default="1024,4096", help="sequence lengths (default 1024,4096)")
    parser.add_argument(
        "--longest", action="store_true", help="search the longest sequence that trains on each card size"
    )
    parser.add_argument(
        "--budget-s", type=float, default=480.0, help="--longest: seconds for the whole run (default 480)"
    )
    parser.add_argument(
        "--paths",
        default=",".join(PATHS),
        help=f"--longest: paths to search, in order (default {','.join(PATHS)})",
    )
    parser.add_argument(
        "--simulate",
        action="store_true",
        help="--longest: run bench/memory.py's simulations its cache lacks (minutes at 40/80 GB)",
    )
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        what = "the longest-context search" if args.longest else "the real-GPU memory comparison"
        print(f"bench/memory_cuda.py: no CUDA device here — {what} was skipped.")
        return 0
    if args.longest:
        return longest_main(args)
    if args.layers is None:
        args.layers = 8
    seqs = [int(s) for s in args.seqs.split(",")]
    start = time.perf_counter()
    folder = build_model_folder(args.model, args.layers)
    rows = []
    for seq in seqs:
        for path in PATHS:
            real = measure(folder, path, args.r, seq)
            release()
            sim = simulated(folder, path, args.r, seq)
            rows.append(
                {
                    "path": path,
                    "seq": seq,
                    "allocated GB": real["allocated"] / GIB,
                    "simulated GB": sim / GIB,
                    "sim/alloc": sim / real["allocated"],
                    "reserved GB": real["reserved"] / GIB,
                    "context GB": real["context"] / GIB,
                    "reserved+context - sim GB": (real["reserved"] + real["context"] - sim) / GIB,
                }
            )
    ratios = []
    for seq in seqs:
        std, ours = (next(r for r in rows if r["seq"] == seq and r["path"] == p) for p in PATHS)
        ratios.append(
            {
                "seq": seq,
                "allocated ours/std": ours["allocated GB"] / std["allocated GB"],
                "simulated ours/std": ours["simulated GB"] / std["simulated GB"],
            }
        )
    name = f"{args.model}, {args.layers or 'all'} layers, r{args.r}, {torch.cuda.get_device_name()}"
    print_table(f"One training step on CUDA vs precise mode ({name}; GB = GiB)", rows)
    print_table("Peak ratio, ours / standard", ratios)
    print(
        f"\nallowance used by bench/memory.py for context + allocator: {ALLOWANCE / GIB:.2f} GB "
        "(compare with the last column)"
    )
    write_results(
        "memory_cuda",
        {
            "model": args.model,
            "layers": args.layers,
            "r": args.r,
            "device": torch.cuda.get_device_name(),
            "rows": rows,
            "ratios": ratios,
            "seconds": time.perf_counter() - start,
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
