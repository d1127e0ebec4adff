"""Codes, 6-bit sub-scales and minimums of the affine int4 format "int4k" (quantized.py), Q4_K's scheme.

A row is cut into super-blocks of 256 elements, each into 8 blocks of 32. Block j of a
super-block is stored as w ~= d * sc_j * q - dmin * m_j with codes q in 0..15, 6-bit codes
sc_j, m_j in 0..63 and two float16 numbers d, dmin per super-block: 4 + 0.5 bits per weight.
`fit_affine` chooses them for a matrix [N, K] (K a multiple of 256), with column weights
v [K] >= 0 (ones without calibration; with it the mean square of each input column's
activations):

1. per block x [32]: the range [lo, hi] = [min(min x, 0), max x] (the range always holds 0, so
   the minimum is never negative). A block with hi = lo (all zero, or one negative value) is
   (a, c) = (0, lo) exactly. Otherwise the first candidate is the range itself, a = (hi - lo) / 15
   and c = lo with the codes clip(rint((x - lo) * 15 / (hi - lo)), 0, 15); then, for each of the
   `STEPS` trials t = -1, -0.9, ..., 1, with b the minimum c of the best candidate so far (lo at
   first; skipped while hi <= b), the codes l = clip(rint((x - b) * (15 + t) / (hi - b)), 0, 15)
   and the weighted least-squares (a, c) of x ~= a l + c (c forced to 0 and a refitted when the
   fit puts c above 0; where the weighted codes take one level, so no line is determined,
   a = sum v l x / sum v l^2, c = 0 for a positive weighted sum of x, else a = 0 and c = its
   weighted mean). A candidate replaces the best when its weighted squared error
   sum v (a l + c - x)^2 is lower (the first on a tie); the best is kept as a = max(a, 0) and
   m = max(-c, 0). (llama.cpp's make_qkx2_quants, whose trials start from the best minimum so
   far, with the unweighted error: on Gaussian weights numpy.random.default_rng(0) 1024x2048 it
   gives 0.0708 relative error against Q4_K's 0.0713; trials that all start from lo gave 0.0712,
   and weighting elements by rms + |x| as llama.cpp does reproduces Q4_K's own codes.)
2. per super-block: d = max_j a_j / 63 and dmin = max_j m_j / 63, each rounded to float16
   (through float32, to nearest), sc_j = clip(rint(a_j / d), 0, 63), m_j = clip(rint(m_j / dmin),
   0, 63) (0 where d or dmin is 0);
3. the final codes against the stored numbers: q = clip(rint((x + dmin m_j) / (d sc_j)), 0, 15)
   (0 where d sc_j is 0), in float64 from the float16 values.

`fit_affine_numpy` states the rule in NumPy (float64, all blocks at once), the reference the
tests hold `fit_affine` (a parallel Numba kernel, one row per task, sums reassociated) to; the two
can differ only where two trial errors tie to rounding. Both raise TinyExaoneError for NaN or
infinite weights, |w| > 65504 (float16's range) and bad column weights.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .errors import TinyExaoneError
from .kernels import COMPUTE_LOCK, half_to_float
from .layer_kernels import float_to_half
from .scale_fit import column_weights

BLOCK = 32
SUPER_BLOCK = 256
STEPS = 21  # trial scales (15 + t) / (hi - lo) for t = -1, -0.9, ..., 1
LEVELS = 15.0  # the largest code
SUB_LEVELS = 63.0  # the largest 6-bit sub-scale or minimum code
FLOAT16_MAX = 65504.0
SINGULAR = 1e-12  # det <= this x w wll: the codes of weight take one level (a constant block), no line fit
SUMS = {"reassoc", "nsz", "contract"}  # fast-math for sums only (no reciprocal division, no nnan/ninf)


def _check(matrix: np.ndarray, weights) -> np.ndarray:
    """The column weights (float64 [K], ones when None) after checking the matrix and them."""
    if matrix.ndim != 2 or matrix.shape[1] % SUPER_BLOCK:
        raise TinyExaoneError(f"int4k needs an input size that is a multiple of {SUPER_BLOCK}, got shape {matrix.shape}")
    if not np.isfinite(matrix).all():
        raise TinyExaoneError("cannot quantize a matrix with NaN or infinite values")
    if np.abs(matrix).max(initial=0.0) > FLOAT16_MAX:
        raise TinyExaoneError(f"weights are too large for int4k's float16 scales (|w| > {FLOAT16_MAX:.0f})")
    return column_weights(weights, matrix.shape[1])


def _to_half(values: np.ndarray) -> np.ndarray:
    """float16 of float64 values, through float32 (what the kernel's float_to_half(float32) does)."""
    return values.astype(np.float32).astype(np.float16)


def fit_affine_numpy(matrix: np.ndarray, weights=None):
    """(codes uint8 [N, K], d float16 [N, K / 256], dmin float16 [N, K / 256], sc uint8 [N, K / 32],
    m uint8 [N, K / 32]) of matrix [N, K]; see the module doc."""
    v = _check(matrix, weights)
    n_rows, in_dim = matrix.shape
    x = matrix.astype(np.float64).reshape(-1, BLOCK)  # [N * B, 32]
    v = np.tile(v.reshape(-1, BLOCK), (n_rows, 1))  # [N * B, 32]
    lo, hi = np.minimum(x.min(axis=1), 0.0), x.max(axis=1)  # [N * B]
    flat = hi <= lo  # all zero, or one negative value: (0, lo) exactly
    span = np.where(flat, 1.0, hi - lo)
    l = np.clip(np.rint((x - lo[:, None]) * (LEVELS / span)[:, None]), 0.0, LEVELS)  # the range's codes [N * B, 32]
    best_a, best_c = np.where(flat, 0.0, span / LEVELS), lo.copy()
    best = (v * (best_a[:, None] * l + best_c[:, None] - x) ** 2).sum(axis=1)
    w, wx = v.sum(axis=1), (v * x).sum(axis=1)
    for step in range(STEPS):
        base = best_c  # the best minimum so far
        open_ = ~flat & (hi > base)
        scale = (LEVELS - 1.0 + 0.1 * step) / np.where(open_, hi - base, 1.0)
        l = np.clip(np.rint((x - base[:, None]) * scale[:, None]), 0.0, LEVELS)  # [N * B, 32]
        wl, wll, wlx = (v * l).sum(axis=1), (v * l * l).sum(axis=1), (v * l * x).sum(axis=1)
        det = w * wll - wl * wl
        solvable = det > SINGULAR * w * wll
        safe = np.where(solvable, det, 1.0)
        a = np.where(solvable, (w * wlx - wl * wx) / safe, 0.0)
        c = np.where(solvable, (wll * wx - wl * wlx) / safe, 0.0)
        through_zero = np.where(solvable, c > 0, wx > 0) & (wll > 0)
        a = np.where(through_zero, wlx / np.where(wll > 0, wll, 1.0), a)
        c = np.where(through_zero, 0.0, np.where(solvable, c, np.minimum(wx / np.where(w > 0, w, 1.0), 0.0)))
        c = np.minimum(c, 0.0)
        error = (v * (a[:, None] * l + c[:, None] - x) ** 2).sum(axis=1)
        better = open_ & (error < best)
        best, best_a, best_c = np.where(better, error, best), np.where(better, a, best_a), np.where(better, c, best_c)
    a = np.maximum(best_a, 0.0).reshape(-1, SUPER_BLOCK // BLOCK)  # [N * S, 8]
    m = np.maximum(-best_c, 0.0).reshape(-1, SUPER_BLOCK // BLOCK)
    d, dmin = _to_half(a.max(axis=1) / SUB_LEVELS), _to_half(m.max(axis=1) / SUB_LEVELS)  # [N * S]
    d64, dmin64 = d.astype(np.float64)[:, None], dmin.astype(np.float64)[:, None]
    sc = np.where(d64 > 0, np.clip(np.rint(a / np.where(d64 > 0, d64, 1.0)), 0, SUB_LEVELS), 0.0)  # [N * S, 8]
    mc = np.where(dmin64 > 0, np.clip(np.rint(m / np.where(dmin64 > 0, dmin64, 1.0)), 0, SUB_LEVELS), 0.0)
    step_size, offset = (d64 * sc).reshape(-1, 1), (dmin64 * mc).reshape(-1, 1)  # [N * B, 1]
    q = np.where(step_size > 0, np.clip(np.rint((x + offset) / np.where(step_size > 0, step_size, 1.0)), 0, LEVELS), 0.0)
    return (q.astype(np.uint8).reshape(n_rows, in_dim), d.reshape(n_rows, -1), dmin.reshape(n_rows, -1),
            sc.astype(np.uint8).reshape(n_rows, -1), mc.astype(np.uint8).reshape(n_rows, -1))


@njit(nogil=True, cache=True, fastmath=SUMS)
def _fit_block(x, v):
    """(a, m) of block x [32] with column weights v [32]: step 1 of the module doc."""
    lo, hi = 0.0, -np.inf
    w = wx = 0.0
    for i in range(x.size):
        value = np.float64(x[i])
        lo, hi = min(lo, value), max(hi, value)
        w += v[i]
        wx += v[i] * value
    if hi <= lo:
        return 0.0, -lo
    best_a, best_c = (hi - lo) / LEVELS, lo  # the range's candidate
    best = 0.0
    for i in range(x.size):
        value = np.float64(x[i])
        l = min(max(np.rint((value - lo) * (LEVELS / (hi - lo))), 0.0), LEVELS)
        best += v[i] * (best_a * l + best_c - value) ** 2
    for step in range(STEPS):
        base = best_c  # the best minimum so far
        if hi <= base:
            continue
        scale = (LEVELS - 1.0 + 0.1 * step) / (hi - base)
        wl = wll = wlx = 0.0
        for i in range(x.size):
            value = np.float64(x[i])
            l = min(max(np.rint((value - base) * scale), 0.0), LEVELS)
            wl += v[i] * l
            wll += v[i] * l * l
            wlx += v[i] * l * value
        det = w * wll - wl * wl
        solvable = det > SINGULAR * w * wll
        a = (w * wlx - wl * wx) / det if solvable else 0.0
        c = (wll * wx - wl * wlx) / det if solvable else (min(wx / w, 0.0) if w > 0 else 0.0)
        if ((c > 0) if solvable else (wx > 0)) and wll > 0:
            a, c = wlx / wll, 0.0
        c = min(c, 0.0)
        error = 0.0
        for i in range(x.size):
            value = np.float64(x[i])
            l = min(max(np.rint((value - base) * scale), 0.0), LEVELS)
            error += v[i] * (a * l + c - value) ** 2
        if error < best:
            best, best_a, best_c = error, a, c
    return max(best_a, 0.0), max(-best_c, 0.0)


@njit(nogil=True, cache=True)
def _sub_code(value, unit):
    return min(max(np.rint(value / unit), 0.0), SUB_LEVELS) if unit > 0 else 0.0


@njit(parallel=True, nogil=True, cache=True)
def _fit_rows(matrix, v, codes, d_bits, dmin_bits, sc, mc):
    n_rows, in_dim = matrix.shape
    per_super = SUPER_BLOCK // BLOCK
    for n in prange(n_rows):
        a = np.empty(per_super)
        m = np.empty(per_super)
        for s in range(in_dim // SUPER_BLOCK):
            for j in range(per_super):
                start = s * SUPER_BLOCK + j * BLOCK
                a[j], m[j] = _fit_block(matrix[n, start:start + BLOCK], v[start:start + BLOCK])
            d_bits[n, s] = float_to_half(np.float32(a.max() / SUB_LEVELS))
            dmin_bits[n, s] = float_to_half(np.float32(m.max() / SUB_LEVELS))
            d, dmin = np.float64(half_to_float(d_bits[n, s])), np.float64(half_to_float(dmin_bits[n, s]))
            for j in range(per_super):
                b = s * per_super + j
                sc[n, b] = np.uint8(_sub_code(a[j], d))
                mc[n, b] = np.uint8(_sub_code(m[j], dmin))
                step_size, offset = d * np.float64(sc[n, b]), dmin * np.float64(mc[n, b])
                for i in range(b * BLOCK, (b + 1) * BLOCK):
                    q = min(max(np.rint((np.float64(matrix[n, i]) + offset) / step_size), 0.0), LEVELS) if step_size > 0 else 0.0
                    codes[n, i] = np.uint8(q)


def fit_affine(matrix: np.ndarray, weights=None):
    """fit_affine_numpy's result from the Numba kernel (float32 or float64 matrix [N, K])."""
    v = _check(np.asarray(matrix), weights)
    matrix = np.ascontiguousarray(matrix, dtype=np.float32 if matrix.dtype == np.float32 else np.float64)
    n_rows, in_dim = matrix.shape
    codes = np.empty((n_rows, in_dim), np.uint8)
    d_bits = np.empty((n_rows, in_dim // SUPER_BLOCK), np.uint16)
    dmin_bits = np.empty_like(d_bits)
    sc = np.empty((n_rows, in_dim // BLOCK), np.uint8)
    mc = np.empty_like(sc)
    with COMPUTE_LOCK:
        _fit_rows(matrix, v, codes, d_bits, dmin_bits, sc, mc)
    return codes, d_bits.view(np.float16), dmin_bits.view(np.float16), sc, mc
