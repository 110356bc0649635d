"""llama.cpp's quantizers (Q4_K, Q5_K, Q6_K and Q4_0, Q5_0, Q5_1), ported to numpy bit for bit.

gguf-py quantizes only the 32-element types, and not quite as llama.cpp does (its Q4_0/Q5_0/Q5_1
differ in the sign of zero scales); the K-quants that people run — Q4_K_M above all — exist only
in llama.cpp's C code. This is a line-by-line port of its reference quantizers (``ggml-quants.c``:
``quantize_row_q{4,5,6}_K_ref``, ``make_qkx2_quants``, ``make_qx_quants``,
``quantize_row_q{4_0,5_0,5_1}_ref``), which are what ``llama-quantize`` runs when no importance
matrix is given; Q8_0 is left to gguf-py, whose bytes already match.
Every step is float32 in the C order of operations: elementwise work is vectorized over all
sub-blocks at once, and each sum is accumulated one element at a time (``_running_sum``) because
numpy's own pairwise summation rounds differently. ``tests/test_gguf_quants.py`` checks the bytes
against output recorded from llama.cpp (always) and against llama.cpp's own quantizer wherever
llama-cpp-python is installed.

Arrays are laid out element-major, ``(n, sub_blocks)``, so every per-element row is contiguous and
every sum is a sequence of vector additions. Work is done in chunks, on several threads, so the
temporaries stay in cache.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

QK_K = 256
GROUP_MAX_EPS = np.float32(1e-15)
_CHUNK_BLOCKS = 1024  # super-blocks per chunk: 1 MB of float32 input, so the temporaries stay in cache

F32 = np.float32


def _rint(values: np.ndarray) -> np.ndarray:
    """``nearest_int``: round half to even in float32 (the 1.5·2²³ trick), as int32."""
    return np.rint(values).astype(np.int32)


def _running_sum(terms: np.ndarray) -> np.ndarray:
    """Sum over axis 0 one element at a time, in order — C's ``for (i...) s += t[i]``."""
    total = terms[0].copy()
    for row in terms[1:]:
        total += row
    return total


# -- the search helpers -------------------------------------------------------------------------


def make_qkx2_quants(
    x: np.ndarray, weights: np.ndarray, nmax: int, rmin: float, rdelta: float, nstep: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scale and min of each sub-block (columns of ``x``) by a weighted least-squares search.

    Returns (scale, the_min, L) with L the uint8 levels, shaped like ``x``. ``use_mad`` is false in
    every caller, so the error is the weighted squared difference.
    """
    n = x.shape[0]
    lo = x[0].copy()
    hi = x[0].copy()
    sum_w = weights[0].copy()
    sum_x = sum_w * x[0]
    for i in range(1, n):
        lo = np.where(x[i] < lo, x[i], lo)
        hi = np.where(x[i] > hi, x[i], hi)
        sum_w += weights[i]
        sum_x += weights[i] * x[i]
    lo = np.where(lo > 0, F32(0), lo)
    flat = hi == lo
    # C updates ``min`` whenever a trial wins, and later trials measure from the new one.
    cur_min = lo.copy()
    with np.errstate(divide="ignore", invalid="ignore"):
        iscale = F32(nmax) / np.where(flat, F32(1), hi - cur_min)
        scale = F32(1) / iscale
        levels = np.clip(_rint(iscale * (x - cur_min)), 0, nmax).astype(np.uint8)
        diff = scale * levels.astype(F32) + cur_min - x
        best_error = _running_sum(weights * (diff * diff))
        for step in range(nstep + 1):
            span = hi - cur_min
            iscale = (F32(rmin) + F32(rdelta) * F32(step) + F32(nmax)) / np.where(flat, F32(1), span)
            aux = np.clip(_rint(iscale * (x - cur_min)), 0, nmax)
            laux = aux.astype(F32)
            wl = weights * laux
            sum_l = _running_sum(wl)
            sum_l2 = _running_sum(wl * laux)
            sum_xl = _running_sum(wl * x)
            det = sum_w * sum_l2 - sum_l * sum_l
            ok = det > 0
            safe = np.where(ok, det, F32(1))
            this_scale = (sum_w * sum_xl - sum_x * sum_l) / safe
            this_min = (sum_l2 * sum_x - sum_l * sum_xl) / safe
            positive = this_min > 0
            this_scale = np.where(positive, sum_xl / sum_l2, this_scale)
            this_min = np.where(positive, F32(0), this_min)
            diff = this_scale * laux + this_min - x
            cur_error = _running_sum(weights * (diff * diff))
            better = ok & (cur_error < best_error)
            levels = np.where(better, aux.astype(np.uint8), levels)
            best_error = np.where(better, cur_error, best_error)
            scale = np.where(better, this_scale, scale)
            cur_min = np.where(better, this_min, cur_min)
    scale = np.where(flat, F32(0), scale)
    levels = np.where(flat, np.uint8(0), levels)
    return scale.astype(F32), (-cur_min).astype(F32), levels


def make_qx_quants(x: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """Signed symmetric scale of each sub-block (``rmse_type`` 1, no importance weights).

    Returns (scale, L) with L = level + nmax as uint8, shaped like ``x``.
    """
    top = _signed_absmax(x.T)
    zero = np.abs(top) < GROUP_MAX_EPS
    top = np.where(zero, F32(1), top)
    w = x * x

    def sums(iscale: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        level = np.clip(_rint(iscale * x), -nmax, nmax - 1)
        lf = level.astype(F32)
        return _running_sum(w * x * lf), _running_sum(w * lf * lf), level

    iscale = F32(-nmax) / top
    sumlx, suml2, level = sums(iscale)
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.where(suml2 != 0, sumlx / suml2, F32(0))
    best = scale * sumlx
    for step in range(-9, 10):
        if step == 0:
            continue
        iscale = -(F32(nmax) + F32(0.1) * F32(step)) / top
        sumlx, suml2, trial = sums(iscale)
        better = (suml2 > 0) & (sumlx * sumlx > best * suml2)
        level = np.where(better, trial, level)
        with np.errstate(divide="ignore", invalid="ignore"):
            scale = np.where(better, sumlx / suml2, scale)
        best = np.where(better, scale * sumlx, best)
    scale = np.where(zero, F32(0), scale)
    levels = np.where(zero, 0, level + nmax).astype(np.uint8)
    return scale.astype(F32), levels


# -- Q4_K / Q5_K --------------------------------------------------------------------------------


def _scales_min_k4(ls: np.ndarray, lm: np.ndarray) -> np.ndarray:
    """Pack 8 six-bit scales and mins (each (8, blocks)) into the 12 scale bytes, as C does."""
    out = np.zeros((12, ls.shape[1]), dtype=np.uint8)
    for j in range(4):
        out[j] = ls[j]
        out[j + 4] = lm[j]
    for j in range(4, 8):
        out[j + 4] = (ls[j] & 0xF) | ((lm[j] & 0xF) << 4)
        out[j - 4] |= (ls[j] >> 4) << 6
        out[j] |= (lm[j] >> 4) << 6
    return out


def _unpack_scale_min(packed: np.ndarray, j: int) -> tuple[np.ndarray, np.ndarray]:
    """``get_scale_min_k4``."""
    if j < 4:
        return packed[j] & 63, packed[j + 4] & 63
    return (
        (packed[j + 4] & 0xF) | ((packed[j - 4] >> 6) << 4),
        (packed[j + 4] >> 4) | ((packed[j] >> 6) << 4),
    )


def _quantize_qk_blocks(x: np.ndarray, nmax: int, rmin: float, nstep: int) -> tuple[np.ndarray, ...]:
    """Shared part of Q4_K and Q5_K: ``x`` is (blocks, 256). Returns d, dmin, packed scales, L."""
    blocks = x.shape[0]
    sub = x.reshape(blocks * 8, 32).T  # (32, blocks·8): element-major
    sub = np.ascontiguousarray(sub)
    sum_x2 = _running_sum(sub * sub)
    av_x = np.sqrt(sum_x2 / F32(32))
    weights = av_x + np.abs(sub)
    scales, mins, levels = make_qkx2_quants(sub, weights, nmax, rmin, 0.1, nstep)
    scales = scales.reshape(blocks, 8).T  # (8, blocks)
    mins = mins.reshape(blocks, 8).T
    max_scale = np.zeros(blocks, dtype=F32)
    max_min = np.zeros(blocks, dtype=F32)
    for j in range(8):
        max_scale = np.where(scales[j] > max_scale, scales[j], max_scale)
        max_min = np.where(mins[j] > max_min, mins[j], max_min)
    with np.errstate(divide="ignore"):
        inv_scale = np.where(max_scale > 0, F32(63) / max_scale, F32(0))
        inv_min = np.where(max_min > 0, F32(63) / max_min, F32(0))
    ls = np.minimum(_rint(inv_scale * scales).astype(np.uint8), 63)
    lm = np.minimum(_rint(inv_min * mins).astype(np.uint8), 63)
    packed = _scales_min_k4(ls, lm)
    d = (max_scale / F32(63)).astype(np.float16)
    dmin = (max_min / F32(63)).astype(np.float16)
    d32, dmin32 = d.astype(F32), dmin.astype(F32)
    levels = levels.T.reshape(blocks, 8, 32).transpose(1, 2, 0).copy()  # (8, 32, blocks)
    xs = x.reshape(blocks, 8, 32).transpose(1, 2, 0)
    for j in range(8):
        sc, m = _unpack_scale_min(packed, j)
        dj = d32 * sc.astype(F32)
        dmj = dmin32 * m.astype(F32)
        nonzero = dj != 0
        safe = np.where(nonzero, dj, F32(1))
        fresh = np.clip(_rint((xs[j] + dmj) / safe), 0, nmax).astype(np.uint8)
        levels[j] = np.where(nonzero, fresh, levels[j])
    # levels: (8, 32, blocks) → (blocks, 256) in C order
    return d, dmin, packed, levels.transpose(2, 0, 1).reshape(blocks, QK_K)


def quantize_q4_k(x: np.ndarray) -> np.ndarray:
    """(blocks, 256) float32 → (blocks, 144) bytes: d, dmin, scales[12], qs[128]."""
    d, dmin, packed, levels = _quantize_qk_blocks(x, 15, -1.0, 20)
    pairs = levels.reshape(-1, 4, 2, 32)
    qs = (pairs[:, :, 0, :] | (pairs[:, :, 1, :] << 4)).reshape(-1, 128)
    return np.concatenate(
        [d.view(np.uint8).reshape(-1, 2), dmin.view(np.uint8).reshape(-1, 2), packed.T, qs], axis=1
    )


def quantize_q5_k(x: np.ndarray) -> np.ndarray:
    """(blocks, 256) float32 → (blocks, 176) bytes: d, dmin, scales[12], qh[32], qs[128]."""
    d, dmin, packed, levels = _quantize_qk_blocks(x, 31, -0.5, 15)
    pairs = levels.reshape(-1, 4, 2, 32)  # (blocks, n/64, first/second 32, 32)
    low = pairs & 0xF
    high = (pairs >> 4) & 1
    qs = (low[:, :, 0, :] | (low[:, :, 1, :] << 4)).reshape(-1, 128)
    shifts = (np.arange(4, dtype=np.uint8) * 2).reshape(1, 4, 1)
    qh = ((high[:, :, 0, :] << shifts) | (high[:, :, 1, :] << (shifts + 1))).astype(np.uint8)
    qh = np.bitwise_or.reduce(qh, axis=1)
    return np.concatenate(
        [d.view(np.uint8).reshape(-1, 2), dmin.view(np.uint8).reshape(-1, 2), packed.T, qh, qs], axis=1
    )


# -- Q6_K ---------------------------------------------------------------------------------------


def quantize_q6_k(x: np.ndarray) -> np.ndarray:
    """(blocks, 256) float32 → (blocks, 210) bytes: ql[128], qh[64], scales[16] (int8), d."""
    blocks = x.shape[0]
    sub = np.ascontiguousarray(x.reshape(blocks * 16, 16).T)  # (16, blocks·16)
    scales, levels = make_qx_quants(sub, 32)
    scales = scales.reshape(blocks, 16).T  # (16, blocks)
    levels = levels.T.reshape(blocks, 16, 16).transpose(1, 2, 0).copy()  # (16 sub, 16, blocks)
    max_scale = np.zeros(blocks, dtype=F32)
    max_abs = np.zeros(blocks, dtype=F32)
    for ib in range(16):
        a = np.abs(scales[ib])
        larger = a > max_abs
        max_abs = np.where(larger, a, max_abs)
        max_scale = np.where(larger, scales[ib], max_scale)
    empty = max_abs < GROUP_MAX_EPS
    safe_max = np.where(empty, F32(1), max_scale)
    iscale = F32(-128) / safe_max
    d = np.where(empty, F32(0), F32(1) / iscale).astype(np.float16)
    q_scales = np.minimum(_rint(iscale * scales), 127).astype(np.int8)  # (16, blocks)
    d32 = d.astype(F32)
    xs = x.reshape(blocks, 16, 16).transpose(1, 2, 0)
    for j in range(16):
        dj = d32 * q_scales[j].astype(F32)
        nonzero = dj != 0
        safe = np.where(nonzero, dj, F32(1))
        fresh = (np.clip(_rint(xs[j] / safe), -32, 31) + 32).astype(np.uint8)
        levels[j] = np.where(nonzero, fresh, levels[j])
    levels = levels.transpose(2, 0, 1).reshape(blocks, 2, 4, 32)  # (blocks, half, quarter, 32)
    low = levels & 0xF
    high = levels >> 4
    ql = np.concatenate(
        [low[:, :, 0, :] | (low[:, :, 2, :] << 4), low[:, :, 1, :] | (low[:, :, 3, :] << 4)], axis=2
    ).reshape(blocks, 128)
    qh = high[:, :, 0, :] | (high[:, :, 1, :] << 2) | (high[:, :, 2, :] << 4) | (high[:, :, 3, :] << 6)
    qh = qh.astype(np.uint8).reshape(blocks, 64)
    q_scales = np.where(empty, np.int8(0), q_scales)
    ql = np.where(empty[:, None], np.uint8(0), ql)
    qh = np.where(empty[:, None], np.uint8(0), qh)
    return np.concatenate([ql, qh, q_scales.T.view(np.uint8), d.view(np.uint8).reshape(-1, 2)], axis=1)


# -- the 32-element types -----------------------------------------------------------------------


def _signed_absmax(x: np.ndarray) -> np.ndarray:
    """C's ``if (amax < fabsf(v)) { amax = fabsf(v); max = v; }`` from (0, +0.0): the first largest."""
    amax = np.zeros(x.shape[0], dtype=F32)
    top = np.zeros(x.shape[0], dtype=F32)
    for j in range(x.shape[1]):
        a = np.abs(x[:, j])
        larger = amax < a
        amax = np.where(larger, a, amax)
        top = np.where(larger, x[:, j], top)
    return top


def _inverse(d: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.where(d != 0, F32(1) / np.where(d != 0, d, F32(1)), F32(0))


def _high_bits(q: np.ndarray) -> np.ndarray:
    """The fifth bit of 32 levels as a little-endian uint32 (qh), as 4 bytes."""
    bits = ((q >> 4) & 1).astype(np.uint32) << np.arange(32, dtype=np.uint32)
    return np.bitwise_or.reduce(bits, axis=1).astype("<u4").view(np.uint8).reshape(-1, 4)


def _nibbles(q: np.ndarray) -> np.ndarray:
    return (q[:, :16] & 0xF) | ((q[:, 16:] & 0xF) << 4)


def _symmetric(x: np.ndarray, levels: int) -> tuple[np.ndarray, np.ndarray]:
    """Q4_0 (16 levels) and Q5_0 (32): d = max / -(levels/2), q = min(levels-1, (int8)(x/d + levels/2 + 0.5))."""
    half = levels // 2
    d = _signed_absmax(x) / F32(-half)
    q = np.trunc(x * _inverse(d)[:, None] + F32(half + 0.5)).astype(np.int8)
    return d, np.minimum(q, levels - 1).astype(np.uint8)


def quantize_q4_0(x: np.ndarray) -> np.ndarray:
    """(blocks, 32) → (blocks, 18): d, qs[16]."""
    d, q = _symmetric(x, 16)
    return np.concatenate([d.astype(np.float16).view(np.uint8).reshape(-1, 2), _nibbles(q)], axis=1)


def quantize_q5_0(x: np.ndarray) -> np.ndarray:
    """(blocks, 32) → (blocks, 22): d, qh[4], qs[16]."""
    d, q = _symmetric(x, 32)
    return np.concatenate(
        [d.astype(np.float16).view(np.uint8).reshape(-1, 2), _high_bits(q), _nibbles(q)], axis=1
    )


def quantize_q5_1(x: np.ndarray) -> np.ndarray:
    """(blocks, 32) → (blocks, 24): d, m, qh[4], qs[16]; min and max taken in order, as C does."""
    lo = np.full(x.shape[0], np.finfo(F32).max, dtype=F32)
    hi = np.full(x.shape[0], -np.finfo(F32).max, dtype=F32)
    for j in range(x.shape[1]):
        lo = np.where(x[:, j] < lo, x[:, j], lo)
        hi = np.where(x[:, j] > hi, x[:, j], hi)
    d = (hi - lo) / F32(31)
    scaled = (x - lo[:, None]) * _inverse(d)[:, None]
    q = np.minimum(np.trunc(scaled + F32(0.5)).astype(np.int8), 31).astype(np.uint8)
    return np.concatenate(
        [
            d.astype(np.float16).view(np.uint8).reshape(-1, 2),
            lo.astype(np.float16).view(np.uint8).reshape(-1, 2),
            _high_bits(q),
            _nibbles(q),
        ],
        axis=1,
    )


# -- whole tensors ------------------------------------------------------------------------------

#: storage type → (quantizer of (blocks, block size) float32, block size, bytes per block)
_BLOCK_QUANTIZERS: dict[str, tuple[Callable[[np.ndarray], np.ndarray], int, int]] = {
    "Q4_K": (quantize_q4_k, QK_K, 144),
    "Q5_K": (quantize_q5_k, QK_K, 176),
    "Q6_K": (quantize_q6_k, QK_K, 210),
    "Q4_0": (quantize_q4_0, 32, 18),
    "Q5_0": (quantize_q5_0, 32, 22),
    "Q5_1": (quantize_q5_1, 32, 24),
}
PORTED_TYPES = tuple(_BLOCK_QUANTIZERS)


def quantize_ported(array: np.ndarray, qtype: str) -> np.ndarray:
    """A float32 tensor → its GGUF bytes, shaped (rows, bytes per row), as llama.cpp writes them.

    Rows are independent in llama.cpp's formats, so the tensor is cut into chunks of blocks,
    quantized on several threads (numpy releases the GIL); the result is the same as quantizing it
    in one piece.
    """
    quantize, block, size = _BLOCK_QUANTIZERS[qtype]
    data = np.ascontiguousarray(array, dtype=F32)
    if data.shape[-1] % block:
        raise ValueError(f"{qtype} needs rows that are a multiple of {block} long, not {data.shape[-1]}")
    flat = data.reshape(-1, block)
    chunk = _CHUNK_BLOCKS * (QK_K // block)
    out = np.empty((flat.shape[0], size), dtype=np.uint8)

    def one(start: int) -> None:
        stop = min(start + chunk, flat.shape[0])
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            out[start:stop] = quantize(flat[start:stop])

    starts = range(0, flat.shape[0], chunk)
    workers = min(len(starts), max(1, min(8, os.cpu_count() or 1)))
    if workers == 1:
        for start in starts:
            one(start)
    else:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(one, starts))
    return out.reshape(*data.shape[:-1], data.shape[-1] // block * size)
