"""Fake tensors and a CUDA mirror for precise mode: what lets a CPU simulate a GPU training step.

- ``materialise`` gives a meta-device model fake parameters, quantized through bitsandbytes'
  registered fake kernels (``Params4bit``/``Int8Params`` cannot wrap a fake tensor).
- ``cached_code_books`` serves bitsandbytes' 8-bit code books, which it builds with ``.item()``.
- ``cuda_kernels`` makes CPU (and fake) runs keep what CUDA keeps for backward.
- ``trl_cuda_kernels`` stands in for TRL's Triton kernels of the preference losses (their memory).
- ``new_tracker`` is torch's ``MemTracker`` adapted to LoRA models and a chunked loss.

Every patch is scoped to a context manager and undone on exit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lora_studio.core.estimate.request import Plan


def materialise(model: Any, plan: Plan) -> list[Any]:
    """Replace every meta parameter/buffer with a fake tensor; quantize through bitsandbytes' fake kernels.

    ``Params4bit``/``Int8Params`` cannot wrap a fake tensor, so the quantized data goes into a plain
    frozen Parameter carrying the quant state exactly where the bnb layers read it. Returns the
    quant-state tensors, which the tracker must be told about.
    """
    import torch
    from bitsandbytes import functional as bnb_functional
    from bitsandbytes.nn import Int8Params, Params4bit

    extra: list[Any] = []
    memo: dict[int, Any] = {}
    for module in model.modules():
        for name, param in list(module._parameters.items()):
            if param is None:
                continue
            if id(param) in memo:
                module._parameters[name] = memo[id(param)]
                continue
            if isinstance(param, Params4bit):
                weight = torch.empty((module.out_features, module.in_features), dtype=plan.torch_dtype)
                data, state = bnb_functional.quantize_4bit(
                    weight,
                    blocksize=param.blocksize,
                    compress_statistics=param.compress_statistics,
                    quant_type=param.quant_type,
                    quant_storage=param.quant_storage,
                )
                new = torch.nn.Parameter(data, requires_grad=False)
                new.quant_state = state
                module.quant_state = state
                nested = state.state2
                extra += [state.absmax, state.code]
                if nested is not None:
                    extra += [state.offset, nested.absmax, nested.code]
            elif isinstance(param, Int8Params):
                weight = torch.empty(param.shape, dtype=torch.float16)
                cb, scb, _ = bnb_functional.int8_vectorwise_quant(weight)
                new = torch.nn.Parameter(cb, requires_grad=False)
                new.CB, new.SCB = cb, scb
                module.state.CB, module.state.SCB = cb, scb
                extra.append(scb)
            else:
                new = torch.nn.Parameter(
                    torch.empty(param.shape, dtype=param.dtype), requires_grad=param.requires_grad
                )
            memo[id(param)] = new
            module._parameters[name] = new
        for name, buffer in list(module._buffers.items()):
            if buffer is not None:
                module._buffers[name] = torch.ones(buffer.shape, dtype=buffer.dtype)
    return [t for t in extra if isinstance(t, torch.Tensor)]


@contextlib.contextmanager
def cached_code_books() -> Iterator[None]:
    """bitsandbytes builds its 8-bit code book with ``.item()``, impossible on fake tensors.

    Compute the maps once for real and serve copies while simulating; restore afterwards.
    """
    from lora_studio.core.models import import_bitsandbytes

    import_bitsandbytes()
    from bitsandbytes import functional as bnb_functional

    original = bnb_functional.create_dynamic_map
    cache: dict[tuple[Any, ...], Any] = {}

    def cached(signed: bool = True, max_exponent_bits: int = 7, total_bits: int = 8) -> Any:
        key = (signed, max_exponent_bits, total_bits)
        if key not in cache:
            cache[key] = original(signed, max_exponent_bits, total_bits)
        return cache[key].clone()

    cached(True)
    cached(False)
    had_dynamic = "dynamic" in bnb_functional.name2qmap
    bnb_functional.name2qmap.setdefault("dynamic", cached(True))
    bnb_functional.create_dynamic_map = cached
    try:
        yield
    finally:
        bnb_functional.create_dynamic_map = original
        if not had_dynamic:
            bnb_functional.name2qmap.pop("dynamic", None)


@contextlib.contextmanager
def cuda_kernels(*, packing: bool = False) -> Iterator[None]:
    """Make CPU (and fake) runs keep what a CUDA run keeps for backward.

    - Dropout: CUDA uses the fused ``native_dropout`` (saves a 1-byte mask); CPU's fallback saves a
      mask in the input's dtype. Route training dropout through ``native_dropout``.
    - Attention masks: transformers treats a fake tensor as "tracing" and then builds a full 4D mask
      from the position ids (as for packed sequences), which also makes it repeat the key/value
      heads. A real run without packing builds no mask, so report "no packed sequences".
    - LLM.int8: bitsandbytes trains with ``MatMul8bitLt`` on CUDA but ``MatMul8bitFp`` on CPU;
      use the CUDA one.
    - Autocast: the simulation stands CPU autocast in for CUDA's, but code asking
      ``torch.is_autocast_enabled()`` without a device asks about CUDA's. peft does, to decide
      whether to cast a LoRA input to the adapter's fp32 (a GPU run under autocast keeps the
      16-bit input; answering "no" here made each adapted input cost 7 bytes instead of 3). The
      no-argument form answers for CPU autocast.
    """
    import torch
    from transformers import masking_utils

    from lora_studio.core.models import import_bitsandbytes

    bnb = import_bitsandbytes()
    from bitsandbytes.autograd import _functions as bnb_autograd

    original_matmul = bnb.matmul

    def matmul(
        A: Any, B: Any, out: Any = None, state: Any = None, threshold: float = 0.0, bias: Any = None
    ) -> Any:
        state = state or bnb_autograd.MatmulLtState()
        if threshold > 0.0:
            state.threshold = threshold
        return bnb_autograd.MatMul8bitLt.apply(A, B, out, bias, state)

    original_dropout = torch.nn.functional.dropout
    original_packed = masking_utils.find_packed_sequence_indices

    def dropout(input: Any, p: float = 0.5, training: bool = True, inplace: bool = False) -> Any:
        if training and 0.0 < p < 1.0 and not inplace:
            return torch.native_dropout(input, p, True)[0]
        return original_dropout(input, p, training, inplace)

    original_enabled = torch.is_autocast_enabled

    def is_autocast_enabled(*args: Any) -> bool:
        return original_enabled(*args) if args else original_enabled("cpu")

    torch.nn.functional.dropout = dropout
    torch.is_autocast_enabled = is_autocast_enabled
    bnb.matmul = matmul
    if not packing:
        masking_utils.find_packed_sequence_indices = lambda position_ids: None
    try:
        yield
    finally:
        torch.nn.functional.dropout = original_dropout
        torch.is_autocast_enabled = original_enabled
        bnb.matmul = original_matmul
        masking_utils.find_packed_sequence_indices = original_packed


@contextlib.contextmanager
def trl_cuda_kernels() -> Iterator[None]:
    """TRL's GPU kernels for the preference losses, allocating what they allocate on a GPU.

    - The fused LM head of DPO and KTO (``trl.kernels.chunked_logprob``): on a GPU, Triton folds
      each logits tile into per-token statistics (forward) and rewrites it in place as its
      gradient (backward), and cuBLAS accumulates the gradient GEMMs into fp32 buffers in place.
      Its CPU fallback computes the same in fp32 copies of each tile, which a GPU never allocates:
      those three functions become in-place no-ops (values do not matter to fake tensors).
    - ``selective_log_softmax`` of ORPO and SimPO: on a GPU one Triton kernel reads the logits in
      place, keeps four fp32 values per position and, in backward, allocates the logits' gradient;
      the CPU fallback instead keeps a log-softmax per row. An autograd function allocating
      exactly the kernel's tensors takes its place.
    """
    import torch
    import trl.trainer.utils as trl_utils
    from trl.kernels import chunked_logprob

    def unchanged(*_: Any, **__: Any) -> None:
        return None

    def supported(logits: Any, index: Any = None, row_mask: Any = None) -> bool:
        # TRL's own conditions, without the one on the device type
        ok = logits.dtype in (torch.float16, torch.bfloat16, torch.float32) and 1 <= logits.ndim <= 3
        ok = ok and logits.stride(-1) == 1 and logits.shape[-1] > 0
        if index is not None:
            ok = ok and index.shape == logits.shape[:-1] and index.dtype in (torch.int32, torch.int64)
        return ok

    kernel = _log_prob_entropy_class()

    def fused(logits: Any, index: Any, temperature: float = 1.0, row_mask: Any = None) -> Any:
        return kernel.apply(logits, index, temperature, row_mask)

    patches = [
        (chunked_logprob, "_forward_tile", unchanged),
        (chunked_logprob, "_backward_tile", unchanged),
        (chunked_logprob, "_addmm_fp32", unchanged),
        (trl_utils, "is_triton_available", lambda: True),
        (trl_utils, "_supports_trl_loss_kernel", supported),
        (trl_utils, "_fused_logprob_entropy", fused),
    ]
    missing = object()
    saved = [(module, name, getattr(module, name, missing)) for module, name, _ in patches]
    for module, name, value in patches:
        setattr(module, name, value)
    try:
        yield
    finally:
        for module, name, value in saved:
            if value is missing:
                delattr(module, name)
            else:
                setattr(module, name, value)


def _log_prob_entropy_class() -> Any:
    """``trl.kernels.logprob_entropy._LogProbEntropyFunction``'s tensors, without its Triton kernels."""
    import torch

    class LogProbEntropy(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, logits: Any, index: Any, temperature: float, row_mask: Any) -> Any:
            logprobs = torch.empty(logits.shape[:-1], device=logits.device, dtype=torch.float32)
            entropy = torch.empty_like(logprobs)
            log_z = torch.empty_like(logprobs)
            expected_logit = torch.empty_like(logprobs)
            ctx.set_materialize_grads(False)
            ctx.save_for_backward(logits, index, log_z, expected_logit, row_mask)
            return logprobs, entropy

        @staticmethod
        def backward(ctx: Any, grad_logprobs: Any, grad_entropy: Any) -> Any:
            logits = ctx.saved_tensors[0]
            if grad_logprobs is not None:
                grad_logprobs = grad_logprobs.contiguous()
            return torch.empty_like(logits, memory_format=torch.contiguous_format), None, None, None

    return LogProbEntropy


def _tracker_class(composition: bool = False) -> type:
    from torch.distributed._tools.mem_tracker import MemTracker

    class Tracker(MemTracker):
        """MemTracker that hooks gradients only of trainable parameters, and allows repeated calls.

        torch 2.13's tracker registers a grad hook on *every* parameter, which raises for the
        frozen base weights of a LoRA model.
        """

        def _track_module_params_and_buffers(
            self, module: Any, install_grad_hooks: bool = True
        ) -> tuple[int, int]:
            result = super()._track_module_params_and_buffers(module, install_grad_hooks=False)
            if install_grad_hooks:
                for param in module.parameters():
                    if param.requires_grad and self._param_to_grad_hook_handles.get(param) is None:
                        hook = param.register_post_accumulate_grad_hook(self._track_grad)
                        self._param_to_grad_hook_handles[param] = (hook, hook)
            return result

        def _pre_fw_hook(self, module: Any, inputs: Any) -> None:
            # The chunked loss calls the output head once per chunk at top level, which the tracker
            # reads as a second iteration; forget that module's own statistics (the totals we
            # report are global) and track the call afresh.
            try:
                super()._pre_fw_hook(module, inputs)
            except NotImplementedError:
                self.memory_tracking.pop(module, None)
                super()._pre_fw_hook(module, inputs)

        def _update_peak_stats(self, peak_state: Any) -> None:
            # Only the global peak is reported. The base class also refreshes every tracked
            # module's own peak on every op, walking all modules each time: that was most of
            # the simulation's time for full-size widths.
            from copy import deepcopy

            from torch.distributed._tools.mem_tracker import _TOTAL_KEY

            for dev, snap in self._curr_mem_snap.items():
                if self._peak_mem.get(dev, 0) < snap[_TOTAL_KEY]:
                    self._peak_mem[dev] = snap[_TOTAL_KEY]
                    self._peak_mem_snap[dev] = deepcopy(snap)

        def _track_grad(self, param: Any) -> None:
            self._update_and_maybe_create_winfos(param.grad, _grad_type())

    class CompositionTracker(Tracker):
        """Also says what is alive at the peak: each live storage labelled by where it was made.

        A label is the innermost module (decoder layer numbers folded to ``*``), the op, and the
        phase (forward, recompute = a checkpoint's rerun in backward, backward). The composition is
        re-taken whenever the peak grows by more than ``COMPOSITION_STEP``, so it describes a
        moment within that fraction of the reported peak (taking it at every new peak would walk
        every live tensor on every op).
        """

        def __init__(self) -> None:
            super().__init__()
            self.labels: dict[int, str] = {}
            self.composition: dict[str, int] = {}
            self.composition_total = 0
            self._op = "?"
            self._names: dict[int, str] = {}
            self._stack: list[str] = []
            self._handles: list[Any] = []

        def track_external(self, *external: Any) -> None:
            import torch

            super().track_external(*external)
            for obj in external:
                if isinstance(obj, torch.nn.Module):
                    for name, module in obj.named_modules():
                        self._names[id(module)] = name

        def __enter__(self) -> Any:
            # our own module stack: torch's ModTracker does not re-enter modules in a
            # checkpoint's recompute, where most of a checkpointed step's peak is made
            from torch.nn.modules.module import (
                register_module_forward_hook,
                register_module_forward_pre_hook,
            )

            def push(module: Any, _args: Any) -> None:
                self._stack.append(self._names.get(id(module), type(module).__name__))

            def pop(module: Any, _args: Any, _out: Any) -> None:
                if self._stack:
                    self._stack.pop()

            self._handles = [register_module_forward_pre_hook(push), register_module_forward_hook(pop)]
            return super().__enter__()

        def __exit__(self, *args: Any) -> None:
            for handle in self._handles:
                handle.remove()
            super().__exit__(*args)

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            self._op = str(func.overloadpacket.__name__)
            return super().__torch_dispatch__(func, types, args, kwargs)

        def _track(self, reftype: Any, t: Any) -> None:
            from torch.distributed._tools.common_utils import get_untyped_storages

            new = [st for st in get_untyped_storages(t) if self._WINFO.get(st, (None, None))[0] is None]
            super()._track(reftype, t)
            if new:
                label = self._label(reftype)
                for st in new:
                    winfo = self._WINFO.get(st, (None, None))[0]
                    if winfo is not None:
                        self.labels[id(winfo)] = label

        def _label(self, reftype: Any) -> str:
            import re

            inner = self._stack[-1] if self._stack else "-"
            inner = re.sub(r"\.(\d+)(?=\.|$)", ".*", inner)
            inner = inner.replace("base_model.model.", "")
            backward = self._mod_tracker.is_bw
            phase = "recompute" if backward and self._stack else ("backward" if backward else "forward")
            kind = getattr(reftype, "value", str(reftype))
            return f"{kind} | {phase} | {inner} | {self._op}"

        def _update_peak_stats(self, peak_state: Any) -> None:
            from torch.distributed._tools.mem_tracker import _TOTAL_KEY

            super()._update_peak_stats(peak_state)
            total = sum(snap[_TOTAL_KEY] for snap in self._curr_mem_snap.values())
            if total > self.composition_total * (1 + COMPOSITION_STEP):
                self.composition_total = total
                self.composition = self._live()

        def _live(self) -> dict[str, int]:
            out: dict[str, int] = {}
            for winfo, _ in list(self._WINFO.values()):
                if winfo.mem_consumed <= 0:
                    continue
                label = self.labels.get(id(winfo))
                if label is None:
                    label = f"{getattr(winfo.reftype, 'value', winfo.reftype)} | - | - | -"
                out[label] = out.get(label, 0) + winfo.mem_consumed
            return out

    return CompositionTracker if composition else Tracker


def _grad_type() -> Any:
    from torch.distributed._tools.mem_tracker import _MemRefType

    return _MemRefType.GRAD


#: See ``CompositionTracker``: the composition is re-taken when the peak grows by this fraction.
COMPOSITION_STEP = 0.002


def new_tracker(*, composition: bool = False) -> Any:
    """A MemTracker for fake-tensor steps; ``composition`` also records what is alive at the peak."""
    return _tracker_class(composition)()
