"""Saved tensors offloaded to host memory with copies that overlap compute, not stall it.

Why: with non-reentrant gradient checkpointing, what autograd saves outside the checkpointed layers
is essentially each decoder layer's input (plus a few tensors around them, such as the LM head's
input). ``torch.autograd.graph.save_on_cpu`` moves them to host memory, but each copy runs on the
compute stream: the GPU waits for every device → host copy in the forward and every host → device
copy in the backward, once per layer.

What overlaps with what on CUDA:

- Forward. Layer i's input is packed as layer i starts. Its copy to pinned host memory is queued on
  a side *copy stream*, behind the work that produced the tensor (``wait_stream``), and the compute
  stream goes straight on with layer i's forward (and i+1's, if the copy is slower than a layer).
  ``record_stream`` tells the caching allocator that the copy stream still reads the tensor, so its
  device memory is reused only once both the forward is done with it and the copy has finished.
- Backward. Checkpointing unpacks layer i's input when backward reaches layer i (to recompute it).
  The compute stream waits, on the GPU and not the CPU, for the event that marks the end of that
  input's copy back; and the copy of layer i-1's input is queued right away (``prefetch``), so it
  overlaps with layer i's recompute and backward. By the time backward reaches layer i-1 its input
  is usually back.

What it costs: host memory holds every offloaded tensor of a step at once: one pinned buffer each,
a power of two in size (torch's pinned allocator rounds to powers of two anyway), so at most 2× the
sum of the offloaded tensors; e.g. 2 GiB (up to 4 GiB pinned) for the 32 layer inputs of an 8B
Llama at 8k tokens in bf16. The buffers are reused from step to step (``HostBuffers``), so pinned
allocation happens in the first step only while shapes stay the same. On the device, each prefetch
holds one more layer input during backward.

What is not moved: parameters and views of parameters (the frozen weights a matmul saves; they are
resident anyway and would be copied every layer for nothing), tensors under ``min_bytes`` (1 MiB),
tensors not on an accelerator (nothing to gain), and tensors whose elements are not densely packed
(expanded masks or strided slices: copying their elements could cost more than the storage they pin).
A tensor saved twice in one forward (a norm's input, or a table every checkpointed layer receives
as an argument) is copied to the host once, and back once: it stays on the device from its first
unpack until autograd has dropped every use of it. Dense views, transposes included, are copied
element by element into a buffer with the same strides: the unpacked tensor has the saved tensor's
shape, strides and values but is not a view of anything.

As without hooks, a saved tensor must not be modified in place before backward. Autograd does not
check that once saved-tensor hooks are installed, and a copy that runs later on another stream
would see the change; unpack raises autograd's error when it can still see the original tensor.

On a machine without CUDA the same code runs with synchronous copies (``device_filter`` decides
what counts as offloadable), which is how the tests check it on CPU. torch is imported at the top:
``memory_saving.offload_context`` imports this module only when offloading is on.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

#: Smaller saved tensors stay on the device: a copy costs more in launch overhead than it frees.
MIN_OFFLOAD_BYTES = 1 << 20


def on_accelerator(tensor: torch.Tensor) -> bool:
    """The default filter: only tensors in accelerator memory are worth moving to the host."""
    return tensor.device.type not in ("cpu", "meta")


@dataclass
class OffloadStats:
    """What the offloader did in the current context (forward) and the backward that followed it."""

    packed: int = 0  #: saved tensors handed to the pack hook
    offloaded: int = 0  #: distinct tensors copied to host memory
    offloaded_bytes: int = 0
    deduplicated: int = 0  #: saves of a tensor already offloaded in this context (no second copy)
    kept_parameters: int = 0  #: parameters or views of parameters, left in place
    kept_small: int = 0  #: under ``min_bytes``
    kept_other: int = 0  #: filtered out by device, not dense, sparse or a tensor subclass
    prefetched: int = 0  #: copies back queued ahead of their unpack
    fetched_on_demand: int = 0  #: copies back queued only when unpacked


def _bucket(nbytes: int) -> int:
    return 1 << max(nbytes - 1, 0).bit_length()


def _is_dense(tensor: torch.Tensor) -> bool:
    """Elements fill a block of storage with no gaps or overlaps (any order of dimensions)."""
    expected = 1
    for stride, size in sorted(
        (st, sz) for sz, st in zip(tensor.shape, tensor.stride(), strict=True) if sz != 1
    ):
        if stride != expected:
            return False
        expected *= size
    return True


class HostBuffers:
    """Reusable host buffers for offloaded tensors, and the copy stream of each device.

    All copies into and out of a device's buffers run on that device's one copy stream, in order, so
    a buffer returned by a finished step can be filled again at once: the new copy is queued behind
    the last read of the old contents. Buffers unused for ``keep_contexts`` forwards are dropped, so
    a change of sequence length does not keep the old sizes pinned for ever.
    """

    def __init__(self, *, pin_memory: bool | None = None, keep_contexts: int = 2) -> None:
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.keep_contexts = keep_contexts
        self.allocations = 0  #: buffers allocated (pinned allocations when pinning)
        self.reuses = 0  #: buffers served from the pool
        self.held_bytes = 0  #: bytes of all buffers the pool owns, in use or free
        self._lock = threading.Lock()
        self._free: dict[tuple[str, int], list[tuple[torch.Tensor, int]]] = {}
        self._streams: dict[torch.device, torch.cuda.Stream] = {}
        self._context = 0

    def start_context(self) -> None:
        """A forward begins: drop the free buffers no recent forward has used."""
        with self._lock:
            self._context += 1
            for key, entries in self._free.items():
                stale = [b for b, used in entries if self._context - used > self.keep_contexts]
                self.held_bytes -= sum(b.numel() for b in stale)
                self._free[key] = [
                    (b, used) for b, used in entries if self._context - used <= self.keep_contexts
                ]

    def take(self, device: torch.device, nbytes: int) -> torch.Tensor:
        """A flat uint8 host buffer of at least ``nbytes`` for a tensor on ``device``."""
        size = _bucket(nbytes)
        with self._lock:
            entries = self._free.get((str(device), size))
            if entries:
                self.reuses += 1
                return entries.pop()[0]
            self.allocations += 1
            self.held_bytes += size
        return torch.empty(size, dtype=torch.uint8, pin_memory=self.pin_memory and device.type == "cuda")

    def give(self, device: torch.device, buffer: torch.Tensor) -> None:
        """Return a buffer: nobody will read it again except through its queued copies."""
        with self._lock:
            self._free.setdefault((str(device), buffer.numel()), []).append((buffer, self._context))

    def release(self) -> None:
        """Drop every free buffer (those of a step still in flight come back and stay)."""
        with self._lock:
            self.held_bytes -= sum(b.numel() for entries in self._free.values() for b, _ in entries)
            self._free.clear()

    def free_bytes(self) -> int:
        """Bytes of the buffers waiting in the pool (the rest belong to saved tensors)."""
        with self._lock:
            return sum(b.numel() for entries in self._free.values() for b, _ in entries)

    def copy_stream(self, device: torch.device) -> torch.cuda.Stream:
        """The one side stream of ``device`` that every copy to or from these buffers runs on."""
        with self._lock:
            stream = self._streams.get(device)
            if stream is None:
                stream = self._streams[device] = torch.cuda.Stream(device=device)
            return stream

    def copy_out(self, tensor: torch.Tensor, host: torch.Tensor) -> None:
        """Queue the copy of ``tensor`` into ``host``; on CUDA the compute stream does not wait for it."""
        if not tensor.is_cuda:
            host.copy_(tensor)
            return
        with torch.cuda.device(tensor.device):
            side = self.copy_stream(tensor.device)
            side.wait_stream(torch.cuda.current_stream())  # the tensor's producer has run
            with torch.cuda.stream(side):
                host.copy_(tensor, non_blocking=True)
            tensor.record_stream(side)  # its memory is not reused until the copy is done

    def copy_in(self, host: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, Any, Any]:
        """Queue the copy of ``host`` back to ``device``: (tensor, ready event or None, its stream)."""
        if device.type != "cuda":
            out = torch.empty_strided(host.shape, host.stride(), dtype=host.dtype, device=device)
            return out.copy_(host), None, None
        with torch.cuda.device(device):
            compute = torch.cuda.current_stream()
            # Allocated on the compute stream, so it comes from (and returns to) the compute pool.
            # The block may have been freed by compute work still queued: the copy waits for it.
            out = torch.empty_strided(host.shape, host.stride(), dtype=host.dtype, device=device)
            side = self.copy_stream(device)
            side.wait_stream(compute)
            with torch.cuda.stream(side):
                out.copy_(host, non_blocking=True)
                ready = torch.cuda.Event()
                ready.record(side)
            out.record_stream(side)  # safe to free even if the prefetch is never used
        return out, ready, compute

    @staticmethod
    def wait(tensor: torch.Tensor, ready: Any, stream: Any) -> None:
        """Make the stream that will use ``tensor`` wait (on the GPU) for its copy back."""
        if ready is None:
            return
        current = torch.cuda.current_stream(tensor.device)
        current.wait_event(ready)
        if current != stream:
            tensor.record_stream(current)


_shared: HostBuffers | None = None
_shared_lock = threading.Lock()


def shared_host_buffers() -> HostBuffers:
    """The process's pool, so buffers survive from one training step's offloader to the next."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = HostBuffers()
        return _shared


def release_host_buffers() -> None:
    """Give the shared pool's free (pinned) buffers back, e.g. when a run ends."""
    if _shared is not None:
        _shared.release()


class _Packed:
    """One offloaded tensor: its host copy, and its way back.

    ``prev`` is the tensor packed before it (weakly: backward frees later tensors first), which
    backward will want next. A ``shared`` one (packed more than once) keeps its device copy from its
    first unpack; the host buffer, and that copy, go when autograd drops this object.
    """

    __slots__ = (
        "__weakref__",
        "_kept",
        "_last",
        "_pending",
        "buffers",
        "device",
        "flat",
        "host",
        "prev",
        "shared",
        "source",
        "version",
    )

    def __init__(self, tensor: torch.Tensor, buffers: HostBuffers, prev: weakref.ref[_Packed] | None) -> None:
        nbytes = tensor.numel() * tensor.element_size()
        self.buffers = buffers
        self.device = tensor.device
        self.flat = buffers.take(tensor.device, nbytes)
        self.host = self.flat[:nbytes].view(tensor.dtype).as_strided(tensor.shape, tensor.stride())
        buffers.copy_out(tensor, self.host)
        self.source = weakref.ref(tensor)
        self.version = tensor._version
        self.prev = prev
        self.shared = False
        self._pending: tuple[torch.Tensor, Any, Any] | None = None
        self._last: weakref.ref[torch.Tensor] | None = None
        self._kept: torch.Tensor | None = None

    def matches(self, tensor: torch.Tensor) -> bool:
        return self.source() is tensor and self.version == tensor._version

    def resident(self) -> bool:
        return self._pending is not None or self._alive() is not None

    def _alive(self) -> torch.Tensor | None:
        return self._kept if self._kept is not None else self._last() if self._last is not None else None

    def prefetch(self) -> bool:
        """Queue the copy back unless it is queued or on the device already."""
        if self.resident():
            return False
        self._pending = self.buffers.copy_in(self.host, self.device)
        return True

    def get(self, stats: OffloadStats) -> torch.Tensor:
        alive = self._alive()
        if alive is not None:  # unpacked before and still here: no second copy
            return alive
        source = self.source()
        if source is not None and source._version != self.version:
            raise RuntimeError(
                "one of the variables needed for gradient computation has been modified by an inplace "
                "operation after it was saved (and offloaded)"
            )
        if self._pending is None:
            stats.fetched_on_demand += 1
            self._pending = self.buffers.copy_in(self.host, self.device)
        out, ready, stream = self._pending
        self._pending = None
        self.buffers.wait(out, ready, stream)
        self._last = weakref.ref(out)
        if self.shared:  # more unpacks will follow: keep it on the device until autograd drops us
            self._kept = out
        return out

    def __del__(self) -> None:
        flat = getattr(self, "flat", None)
        if flat is not None:
            self.buffers.give(self.device, flat)


class Offloader:
    """Saved-tensor hooks that offload to host memory with overlapped copies (see the module docs).

    Use as a context manager around the forward; backward may run after it exits. ``device_filter``
    says which tensors may move (default: those on an accelerator); ``prefetch`` is how many earlier
    tensors an unpack queues for the way back; ``buffers`` defaults to the process's shared pool.
    """

    def __init__(
        self,
        *,
        min_bytes: int = MIN_OFFLOAD_BYTES,
        device_filter: Callable[[torch.Tensor], bool] = on_accelerator,
        prefetch: int = 1,
        buffers: HostBuffers | None = None,
    ) -> None:
        self.min_bytes = min_bytes
        self.device_filter = device_filter
        self.prefetch = prefetch
        self.buffers = buffers if buffers is not None else shared_host_buffers()
        self.stats = OffloadStats()
        self._seen: dict[int, weakref.ref[_Packed]] = {}
        self._last_packed: weakref.ref[_Packed] | None = None
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self.pack, self.unpack)
        self._active = False

    def __enter__(self) -> Offloader:
        if self._active:
            raise RuntimeError("this Offloader is already in use; make one per forward")
        self._active = True
        self.stats = OffloadStats()
        self._seen.clear()
        self._last_packed = None
        self.buffers.start_context()
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._hooks.__exit__(*exc)
        self._active = False
        self._seen.clear()
        self._last_packed = None

    def _keep(self, tensor: torch.Tensor) -> bool:
        """Count and say whether ``tensor`` stays where it is."""
        stats = self.stats
        if isinstance(tensor, torch.nn.Parameter) or isinstance(tensor._base, torch.nn.Parameter):
            stats.kept_parameters += 1
            return True
        if (
            type(tensor) is not torch.Tensor
            or tensor.layout != torch.strided
            or not self.device_filter(tensor)
        ):
            stats.kept_other += 1
            return True
        nbytes = tensor.numel() * tensor.element_size()
        if nbytes == 0 or nbytes < self.min_bytes:
            stats.kept_small += 1
            return True
        if not _is_dense(tensor):
            stats.kept_other += 1
            return True
        return False

    def pack(self, tensor: torch.Tensor) -> Any:
        """The pack hook: a handle to the host copy, or the tensor itself (detached) when it stays."""
        self.stats.packed += 1
        if self._keep(tensor):
            return tensor.detach()  # not the tensor itself: that would make a reference cycle
        seen = self._seen.get(id(tensor))
        handle = seen() if seen is not None else None
        if handle is not None and handle.matches(tensor):
            handle.shared = True
            self.stats.deduplicated += 1
            return handle
        handle = _Packed(tensor, self.buffers, self._last_packed)
        self._seen[id(tensor)] = self._last_packed = weakref.ref(handle)
        self.stats.offloaded += 1
        self.stats.offloaded_bytes += tensor.numel() * tensor.element_size()
        return handle

    def unpack(self, packed: Any) -> torch.Tensor:
        """The unpack hook: the tensor back on its device, and the earlier ones queued to follow."""
        if not isinstance(packed, _Packed):
            return packed
        tensor = packed.get(self.stats)
        if packed.shared:  # unpacked by many layers, out of pack order: its neighbours are not next
            return tensor
        ahead, handle = self.prefetch, packed
        while ahead > 0 and handle.prev is not None:
            handle = handle.prev()
            if handle is None:
                break
            if handle.prefetch():
                self.stats.prefetched += 1
            if not handle.shared:  # a shared one is kept once fetched: it does not use up the lookahead
                ahead -= 1
        return tensor
