"""Codes and float16 scales of the symmetric group-wise format (quantized.py): absmax codes, fitted scale.

For one group x [g] of a row (weights), column weights v [g] >= 0 (1 without calibration, the
mean square of each input column's activations with it) and codes in [-qn, qn - 1] (qn = 8 for
int4, 32 for int6, 128 for int8), `fit_scales` returns

1. the **absmax codes** q = clip(rint(x / s0)) (ties to even; 0 for an all-zero group), where s0
   is the plain absmax scale: signed so that the group's largest-magnitude element goes towards
   the wide end -qn, its magnitude the smallest float16 for which every element rounds with
   error <= |s0| / 2;
2. the scale s: the weighted least-squares scale of those codes, sum v x q / sum v q^2, rounded to
   float16 (through float32, to nearest), unless its weighted squared error
   E(s) = sum v (q s - x)^2 is not below E(s0), in which case s = s0. So the error is never more
   than absmax's, and w ~= q * s.

Why the codes stay absmax's (measured, docs/quantization.md): choosing codes by least squared
error instead (llama.cpp's make_qx_quants: several trial scales -m / (qn + delta), clipped, each
refitted, the least error kept) lowers the weight error of int4 g32 by 5% on Gaussian weights but
raised the output KL against the float model by 13% on the trained demo model and 1% on a
heavy-tailed random one, over six re-draws each; refitting only the scale lowered KL by 5%.

**Searched scales** (`fit_search_scales`, int6k's groups of 16; llama.cpp's make_qx_quants with
its x^2 element weights, as its Q6_K uses): a group of zeros has scale 0 and codes 0; otherwise,
with M the group's element of largest magnitude (the first on a tie) and element weights
u = v x^2, each trial t of 0, -9, ..., -1, 1, ..., 9 takes the codes l = clip(rint(x (-(qn + t / 10) / M)),
-qn, qn - 1) and their weighted least-squares scale s_t = sum u x l / sum u l^2 (0 where
sum u l^2 = 0); the trial with the largest s_t sum u x l (the weighted squared error its codes
remove; the first trial always counts, then only a larger value replaces it) gives the scale,
rounded to float16. On Student-t(4) weights int6k goes from 0.0238 (this module's plain rule at
groups of 16) to 0.0229 relative error, Q6_K's own.

`fit_sub_scales` makes int6k's two-level scales (quantized.py) from the searched scales.

`fit_scales_numpy` and `fit_search_scales_numpy` are the plain NumPy statements of the rules
(float64), the references the tests hold the kernels to; `fit_scales` and `fit_search_scales` run
them as parallel Numba kernels, one row per task, whose sums may be reassociated (vectorized)
while divisions and roundings stay exact, so kernel and statement can differ only where two
errors tie to rounding. All raise TinyExaoneError for NaN/infinite
weights, weights whose scales would overflow float16, and bad column weights.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .errors import TinyExaoneError
from .kernels import COMPUTE_LOCK, half_to_float
from .layer_kernels import float_to_half

FLOAT16_MAX = 65504.0
SUMS = {"reassoc", "nsz", "contract"}  # fast-math for sums only: no reciprocal division (arcp), no nnan/ninf


def _check(matrix: np.ndarray, weights, bits: int, headroom: int = 1) -> np.ndarray:
    """The column weights (float64 [K], ones when None) after checking the matrix and them."""
    if not np.isfinite(matrix).all():
        raise TinyExaoneError("cannot quantize a matrix with NaN or infinite values")
    limit = FLOAT16_MAX * (2 ** (bits - 1) - headroom)  # the fitted scale stays a finite float16
    if np.abs(matrix).max(initial=0.0) > limit:
        raise TinyExaoneError(f"weights are too large for float16 quantization scales (|w| > {limit:.0f} at int{bits})")
    return column_weights(weights, matrix.shape[1])


def column_weights(weights, in_dim: int) -> np.ndarray:
    """The calibration weights of a matrix's in_dim input columns as float64 [in_dim] (ones when
    None), after checking they are finite and non-negative (every fit here and in affine_fit.py)."""
    if weights is None:
        return np.ones(in_dim)
    weights = np.asarray(weights, np.float64)
    if weights.shape != (in_dim,) or not np.isfinite(weights).all() or (weights < 0).any():
        raise TinyExaoneError(f"column weights must be {in_dim} finite non-negative numbers")
    return weights


def fit_scales_numpy(matrix: np.ndarray, bits: int, group_size: int, weights=None) -> tuple[np.ndarray, np.ndarray]:
    """(scales float16 [N, K / group_size], codes int8 [N, K]) of matrix [N, K]; see the module doc."""
    v = _check(matrix, weights, bits)
    n_rows, in_dim = matrix.shape
    qn = 2 ** (bits - 1)
    x = matrix.astype(np.float64).reshape(n_rows, in_dim // group_size, group_size)  # [N, G, g]
    v = v.reshape(in_dim // group_size, group_size)  # [G, g]
    low, high = x.min(axis=-1), x.max(axis=-1)  # [N, G]
    positive = np.maximum(-low / (qn + 0.5), high / (qn - 0.5))  # low towards -qn
    negative = np.maximum(high / (qn + 0.5), -low / (qn - 0.5))  # high towards -qn
    wanted = np.where(negative < positive, -negative, positive)
    s0 = wanted.astype(np.float16)
    short = np.abs(s0.astype(np.float64)) < np.abs(wanted)  # rounded towards zero: one float16 step out
    s0[short] = np.nextafter(s0[short], np.copysign(np.float16(np.inf), wanted[short]).astype(np.float16))
    s0 = s0.astype(np.float64)
    safe = np.where(s0 == 0, 1.0, s0)[..., None]
    q = np.where(s0[..., None] == 0, 0.0, np.clip(np.rint(x / safe), -qn, qn - 1))  # [N, G, g]
    xq, qq = (v * x * q).sum(axis=-1), (v * q * q).sum(axis=-1)
    fitted = np.where(qq > 0, xq / np.where(qq > 0, qq, 1.0), 0.0)
    s1 = fitted.astype(np.float32).astype(np.float16).astype(np.float64)
    error = lambda s: (v * (q * s[..., None] - x) ** 2).sum(axis=-1)  # noqa: E731
    scales = np.where(error(s1) < error(s0), s1, s0)
    return scales.astype(np.float16), q.astype(np.int8).reshape(n_rows, in_dim)


@njit(nogil=True, cache=True, fastmath=SUMS)
def _fit_group(x, v, qn: float, codes) -> np.uint16:
    """The float16 bits of group x's scale (the module doc's rule); writes its codes."""
    low, high = np.inf, -np.inf
    for i in range(x.size):
        low, high = min(low, np.float64(x[i])), max(high, np.float64(x[i]))
    positive = max(-low / (qn + 0.5), high / (qn - 0.5))
    negative = max(high / (qn + 0.5), -low / (qn - 0.5))
    wanted = -negative if negative < positive else positive
    bits = float_to_half(np.float32(wanted))
    if abs(np.float64(half_to_float(bits))) < abs(wanted):
        bits = np.uint16(bits + 1)  # one float16 step away from zero, either sign
    s0 = np.float64(half_to_float(bits))
    xq = qq = 0.0
    for i in range(x.size):
        value = np.float64(x[i])
        q = min(max(np.rint(value / s0), -qn), qn - 1.0) if s0 != 0.0 else 0.0
        codes[i] = np.int8(q)
        xq += v[i] * value * q
        qq += v[i] * q * q
    if qq == 0.0:
        return bits
    s1 = np.float64(half_to_float(float_to_half(np.float32(xq / qq))))
    e0 = e1 = 0.0
    for i in range(x.size):
        value, q = np.float64(x[i]), np.float64(codes[i])
        e0 += v[i] * (q * s0 - value) ** 2
        e1 += v[i] * (q * s1 - value) ** 2
    return float_to_half(np.float32(s1)) if e1 < e0 else bits


@njit(parallel=True, nogil=True, cache=True)
def _fit_rows(matrix, v, qn, group_size, scale_bits, codes):
    n_rows, in_dim = matrix.shape
    for n in prange(n_rows):
        for j in range(in_dim // group_size):
            group = slice(j * group_size, (j + 1) * group_size)
            scale_bits[n, j] = _fit_group(matrix[n, group], v[group], qn, codes[n, group])


def _run_rows(kernel, matrix: np.ndarray, v, bits: int, group_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(float16 scales [N, K / group_size], int8 codes [N, K]) from a row-fitting kernel."""
    matrix = np.ascontiguousarray(matrix, dtype=np.float32 if matrix.dtype == np.float32 else np.float64)
    n_rows, in_dim = matrix.shape
    scale_bits = np.empty((n_rows, in_dim // group_size), np.uint16)
    codes = np.empty((n_rows, in_dim), np.int8)
    with COMPUTE_LOCK:
        kernel(matrix, v, float(2 ** (bits - 1)), group_size, scale_bits, codes)
    return scale_bits.view(np.float16), codes


def fit_scales(matrix: np.ndarray, bits: int, group_size: int, weights=None) -> tuple[np.ndarray, np.ndarray]:
    """fit_scales_numpy's result from the Numba kernel (float32 or float64 matrix [N, K])."""
    return _run_rows(_fit_rows, matrix, _check(matrix, weights, bits), bits, group_size)


SEARCH_TRIALS = (0,) + tuple(t for t in range(-9, 10) if t)  # tenths added to qn, in llama.cpp's order
SEARCH_HEADROOM = 2  # |w| <= 65504 (qn - 2): a searched scale (about |M| / (qn - 0.9)) stays a finite float16


def fit_search_scales_numpy(matrix: np.ndarray, bits: int, group_size: int, weights=None) -> tuple[np.ndarray, np.ndarray]:
    """(scales float16 [N, K / group_size], codes int8 [N, K]: those of the chosen trial) of matrix
    [N, K] by the searched rule (module doc)."""
    v = _check(matrix, weights, bits, SEARCH_HEADROOM)
    n_rows, in_dim = matrix.shape
    qn = 2 ** (bits - 1)
    x = matrix.astype(np.float64).reshape(n_rows, in_dim // group_size, group_size)  # [N, G, g]
    u = v.reshape(in_dim // group_size, group_size) * x * x  # element weights [N, G, g]
    top = np.take_along_axis(x, np.abs(x).argmax(axis=-1)[..., None], axis=-1)  # [N, G, 1]
    safe_top = np.where(top == 0, 1.0, top)
    best = np.full(top.shape[:2], -1.0)  # the first trial is always taken
    scales, codes = np.zeros(top.shape[:2]), np.zeros(x.shape)
    for t in SEARCH_TRIALS:
        inverse = -(qn + 0.1 * t) / safe_top  # [N, G, 1]
        l = np.where(top == 0, 0.0, np.clip(np.rint(x * inverse), -qn, qn - 1))  # [N, G, g]
        ulx, ull = (u * x * l).sum(axis=-1), (u * l * l).sum(axis=-1)
        fitted = np.where(ull > 0, ulx / np.where(ull > 0, ull, 1.0), 0.0)
        better = fitted * ulx > best  # (sum u x l)^2 / sum u l^2: the error its codes remove
        best, scales = np.where(better, fitted * ulx, best), np.where(better, fitted, scales)
        codes = np.where(better[..., None], l, codes)
    return scales.astype(np.float32).astype(np.float16), codes.astype(np.int8).reshape(n_rows, in_dim)


@njit(nogil=True, cache=True, fastmath=SUMS)
def _search_group(x, v, qn: float, codes, u, ux) -> np.uint16:
    """The float16 bits of group x's searched scale (the module doc's rule); writes its codes.
    u, ux: scratch [g] for the element weights v x^2 and v x^3."""
    top = 0.0
    for i in range(x.size):
        value = np.float64(x[i])
        if abs(value) > abs(top):
            top = value
        u[i] = v[i] * value * value
        ux[i] = u[i] * value
    if top == 0.0:
        codes[:] = 0
        return np.uint16(0)
    best, scale, chosen = -1.0, 0.0, 0.0
    for t in SEARCH_TRIALS:
        inverse = -(qn + 0.1 * t) / top
        ulx = ull = 0.0
        for i in range(x.size):
            l = min(max(np.rint(np.float64(x[i]) * inverse), -qn), qn - 1.0)
            ulx += ux[i] * l
            ull += u[i] * l * l
        fitted = ulx / ull if ull > 0 else 0.0
        if fitted * ulx > best:
            best, scale, chosen = fitted * ulx, fitted, inverse
    for i in range(x.size):
        codes[i] = np.int8(min(max(np.rint(np.float64(x[i]) * chosen), -qn), qn - 1.0))
    return float_to_half(np.float32(scale))


@njit(parallel=True, nogil=True, cache=True)
def _search_rows(matrix, v, qn, group_size, scale_bits, codes):
    n_rows, in_dim = matrix.shape
    for n in prange(n_rows):
        u, ux = np.empty(group_size), np.empty(group_size)
        for j in range(in_dim // group_size):
            group = slice(j * group_size, (j + 1) * group_size)
            scale_bits[n, j] = _search_group(matrix[n, group], v[group], qn, codes[n, group], u, ux)


def fit_search_scales(matrix: np.ndarray, bits: int, group_size: int, weights=None) -> tuple[np.ndarray, np.ndarray]:
    """fit_search_scales_numpy's result from the Numba kernel (float32 or float64 matrix [N, K])."""
    return _run_rows(_search_rows, matrix, _check(matrix, weights, bits, SEARCH_HEADROOM), bits, group_size)


SUB_BLOCK = 16  # int6k: elements per int8 sub-scale
SUPER = 256  # int6k: elements per float16 d


def fit_sub_scales(matrix: np.ndarray, weights=None, fit=fit_search_scales) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """int6k's (codes int8 [N, K] in -32..31, d float16 [N, K / 256], sub-scales int8 [N, K / 16])
    of matrix [N, K] (K a multiple of 256; llama.cpp's Q6_K scheme): each block of 16 gets the
    module doc's searched scale s at 6 bits (`fit`: fit_search_scales or fit_search_scales_numpy), each 256 a float16
    d = max |s| / 127 (rounded to float16) and the sub-scales rint(s / d) in -127..127, and the
    codes are then rounded again against the stored step float32(d) * sub (clipped to -32..31; 0
    where the step is 0), so w ~= d * sub * q."""
    scales, _ = fit(matrix, 6, SUB_BLOCK, weights)  # [N, K / 16] float16
    n_rows, in_dim = matrix.shape
    per_super = scales.astype(np.float32).reshape(n_rows, in_dim // SUPER, SUPER // SUB_BLOCK)  # [N, S, 16]
    d = (np.abs(per_super).max(axis=2) / np.float32(127.0)).astype(np.float16)  # [N, S]
    d32 = d.astype(np.float32)[:, :, None]
    safe = np.where(d32 > 0, d32, np.float32(1.0))
    sub = np.where(d32 > 0, np.clip(np.rint(per_super / safe), -127, 127), 0).astype(np.int8)  # [N, S, 16]
    steps = (d32 * sub.astype(np.float32)).reshape(n_rows, -1, 1)  # [N, K / 16, 1]
    x = np.asarray(matrix, np.float32).reshape(n_rows, -1, SUB_BLOCK)  # [N, K / 16, 16]
    with np.errstate(divide="ignore", invalid="ignore"):
        codes = np.where(steps != 0, np.clip(np.rint(x / np.where(steps != 0, steps, 1)), -32, 31), 0)
    return codes.astype(np.int8).reshape(n_rows, in_dim), d, sub.reshape(n_rows, -1)
