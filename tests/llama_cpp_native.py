"""llama.cpp's own quantizer on a numpy array, through ``ggml_quantize_chunk`` in libggml-base.

Test-only (tests compare our port with it byte for byte). The library is the one llama-cpp-python
ships; ``available()`` is False without it, and tests that need it skip with that reason.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import importlib.util
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

REASON = "llama-cpp-python is not installed (make llamacpp): llama.cpp's own quantizer is not here"


@functools.cache
def _library() -> ctypes.CDLL | None:
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or spec.origin is None:
        return None
    found = sorted((Path(spec.origin).parent / "lib").glob("libggml-base.*"))
    if not found:
        return None
    lib = ctypes.CDLL(str(found[0]))
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [
        ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
        ctypes.c_void_p,
    ]  # fmt: skip
    return lib


def available() -> bool:
    return _library() is not None


def ggml_quantize(array: np.ndarray, qtype: str) -> np.ndarray:
    """(rows, n) float32 → (rows, bytes per row) uint8, exactly as llama-quantize writes them."""
    import gguf

    lib = _library()
    assert lib is not None, REASON
    data = np.ascontiguousarray(array, dtype=np.float32)
    kind = gguf.GGMLQuantizationType[qtype]
    block, size = gguf.GGML_QUANT_SIZES[kind]
    rows, n = data.shape
    out = np.zeros((rows, n // block * size), dtype=np.uint8)
    lib.ggml_quantize_chunk(int(kind), data.ctypes.data, out.ctypes.data, 0, rows, n, None)
    return out


@contextlib.contextmanager
def crashing_llama_cpp(monkeypatch: Any) -> Iterator[None]:
    """llama.cpp "installed" but every child process dying of SIGILL — what a build for another CPU
    does; the probe's cache is cleared before and after, so no other test sees the crash."""
    import signal
    import subprocess

    from lora_studio.core import llamacpp

    monkeypatch.setattr(llamacpp, "installed", lambda: True)
    monkeypatch.setattr(
        llamacpp.subprocess,
        "run",
        lambda args, **_: subprocess.CompletedProcess(args, -signal.SIGILL, "", ""),
    )
    llamacpp._probe.cache_clear()
    try:
        yield
    finally:
        llamacpp._probe.cache_clear()
