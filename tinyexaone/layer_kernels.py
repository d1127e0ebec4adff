"""Numba kernels for the small per-layer steps of decoding, each beside its plain NumPy twin.

A decode step (one new token) runs about ten of these per layer, so they exist to cut Python
and NumPy call overhead, not arithmetic. Contract: inputs are float32, C-contiguous and of the
documented shapes (the model builds them; nothing here validates), except the KV cache buffers.

The KV cache buffers are (codes, scales or None) in the layouts the attention kernels read:
keys as codes [KV, d, capacity] ("key-transposed": dimension i of KV head g is one row over the
positions, so a query's scores over consecutive positions are one vectorised loop per
dimension), values as codes [KV, capacity, d] (each KV head's rows contiguous); scales, where
the type has them, are [KV, capacity]. Three types (cache.py names them): float32 codes and no
scales ("f32"); float16 bits as uint16 codes and no scales ("f16"; Numba has no float16 type,
so `float_to_half` / `half_to_float` convert with LLVM's fptrunc / fpext); int8 codes with one
float32 scale per position and KV head, value = code * scale ("q8"; `kernels.quantize_rows_numpy`
states the rounding). Each kernel is written once: Numba specialises it per type through
`_element`, `_row_scale`, `_store_key` and `_store_value`. Twins: `encode_rows_numpy` and
`decode_rows_numpy` (positions-first rows [..., d]), `key_layout` and `value_layout` (rows to
the kernels' layouts).

- `add_rms_norm(h, a, weight, eps)`: h += weight * a / sqrt(mean(a^2) + eps), row by row, in
  place (the reorder-norm residual update). Twin: `add_rms_norm_numpy`.
  `add_rms_norm_rows` is the same with the rows in parallel (prefill), as is `silu_mul_rows`.
- `qk_norm_rope_rows(q, k, q_norm, k_norm, cos, sin, eps, rotate)`: prefill's q [T, H, d] and k
  [T, KV, d] normed and rotated in place, row t by cos/sin [T, d], rows in parallel (the step of
  `decode_attention` below, without the store). Twin: `model.rms_norm` then `rope.apply_rope`.
- `silu_mul(gate, up, out)`: out = silu(gate) * up. Twin: `silu_mul_numpy`.
- `decode_attention(q, k, v, q_norm, k_norm, cos, sin, eps, rotate, keys, key_scales, values,
  value_scales, table, scores, out)`: one new token of each of B sequences, each with its own
  cache, in one launch. For sequence b: per-head RMSNorm of q[b] [H, d] (in place) and k[b]
  [KV, d], RoPE (split-half, by cos[b], sin[b] [d]) on both when `rotate`, k[b] and v[b]
  written into cache slot table[b, SLOT] in the cache's type, then one query per head over the
  table[b, N_KEYS] cached positions table[b, FIRST_POS] .. + N_KEYS - 1, stored at index
  `position % table[b, MODULO]` of the buffers' position axis; GQA (head h reads KV head
  h // (H/KV)), softmax in float32; out[b] [H, d]. Sequence b's buffers are found through
  table[b] (int64 [B, TABLE_COLUMNS]): the data addresses of its key codes [KV, d, CAPACITY],
  key scales [KV, CAPACITY], value codes [KV, CAPACITY, d] and value scales (0 where the type
  has none), and their CAPACITY. keys, key_scales, values and value_scales are one sequence's
  buffers, read only for their types: every sequence's must be of those types, and the caller
  keeps the buffers alive for the call (cache.decode_slots builds the table from the caches).
  Parallel over (sequence, KV head) pairs (`decode_attention_serial`: on the calling thread,
  for short caches); `scores` [B, H, >= max N_KEYS] is scratch. Twins: `qk_norm_rope_store_numpy`
  then `attention_decode_numpy` (over the decoded, float32, cache) per sequence.
- `attention_prefill(q, keys, key_scales, values, value_scales, first_query_pos, first_key_pos,
  window, n_chunks, out)`: causal (and sliding-window) attention of T queries over buffers whose
  index 0 is position first_key_pos, parallel over queries, each through the decode kernel's
  per-head step. Twin: `model.attention` (NumPy, BLAS score matrices) over the decoded cache.
- `exp_nonpositive(x)`: the exponential the softmaxes use (a vectorisable polynomial); twin
  np.exp.
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import carray, njit, prange, types
from numba.extending import intrinsic, overload

from .attention_tiles import ROWS, WIDTH, score_tile, value_tile
from .kernels import FASTMATH, half_to_float, quantize_row, quantize_rows_numpy


# --- the KV cache's element types ---------------------------------------------------------------


@intrinsic
def float_to_half(typingctx, value):
    """The uint16 bits of float32 `value` rounded to float16 (LLVM fptrunc): to nearest, ties to
    even, through subnormals, too large to infinity; bit for bit `value.astype(np.float16)` except
    that a signalling NaN comes back quiet. The inverse of `kernels.half_to_float`."""
    if value != types.float32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(builder.fptrunc(args[0], ir.HalfType()), ir.IntType(16))

    return types.uint16(types.float32), codegen


def encode_rows_numpy(x: np.ndarray, code_dtype) -> tuple[np.ndarray, np.ndarray | None]:
    """x [..., d] float32 -> (codes [..., d] of `code_dtype`, scales [...] for int8 else None): the
    cache rows `_store_key` and `_store_value` write, bit for bit."""
    if code_dtype == np.int8:
        return quantize_rows_numpy(x)
    if code_dtype == np.uint16:
        return x.astype(np.float16).view(np.uint16), None
    return x.astype(np.float32), None


def decode_rows_numpy(codes: np.ndarray, scales: np.ndarray | None) -> np.ndarray:
    """The float32 values [..., d] of cache rows codes [..., d] (scales [...] for int8): what the
    kernels read through `_element` and `_row_scale`."""
    if codes.dtype == np.int8:
        return codes.astype(np.float32) * scales[..., None]
    if codes.dtype == np.uint16:
        return codes.view(np.float16).astype(np.float32)
    return codes


def key_layout(codes: np.ndarray, scales: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    """Positions-first key rows (codes [n, KV, d], scales [n, KV] or None) in the kernels' key
    layout: codes [KV, d, n], scales [KV, n] (C-contiguous copies)."""
    return (np.ascontiguousarray(codes.transpose(1, 2, 0)),
            None if scales is None else np.ascontiguousarray(scales.T))


def value_layout(codes: np.ndarray, scales: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    """Positions-first value rows in the kernels' value layout: codes [KV, n, d], scales [KV, n]."""
    return (np.ascontiguousarray(codes.transpose(1, 0, 2)),
            None if scales is None else np.ascontiguousarray(scales.T))


def _element(codes, a, b, c):
    """codes[a, b, c] as float32: the value itself (f32, f16), or the code (q8; times
    `_row_scale` it is the value)."""


@overload(_element, inline="always")
def _element_of(codes, a, b, c):
    if codes.dtype == types.uint16:
        return lambda codes, a, b, c: half_to_float(codes[a, b, c])
    if codes.dtype == types.int8:
        return lambda codes, a, b, c: np.float32(codes[a, b, c])
    if codes.dtype == types.float32:
        return lambda codes, a, b, c: codes[a, b, c]
    return None


def _row_scale(scales, g, s):
    """The scale of position s of KV head g: scales[g, s] (q8), or 1 where there are none (f32, f16)."""


@overload(_row_scale, inline="always")
def _row_scale_of(scales, g, s):
    if isinstance(scales, types.NoneType):
        return lambda scales, g, s: np.float32(1.0)
    return lambda scales, g, s: scales[g, s]


def _encode_into(x, row):
    """Write x [d] float32 into `row` [d] (a view of a cache buffer) in its type
    (`encode_rows_numpy`); return the q8 scale, or 1 for the types without scales."""


@overload(_encode_into, inline="always")
def _encode_into_of(x, row):
    if row.dtype == types.int8:
        return lambda x, row: quantize_row(x, row)
    if row.dtype == types.uint16:
        def encode(x, row):
            for i in range(x.shape[0]):
                row[i] = float_to_half(x[i])
            return np.float32(1.0)
    elif row.dtype == types.float32:
        def encode(x, row):
            for i in range(x.shape[0]):
                row[i] = x[i]
            return np.float32(1.0)
    else:
        return None
    return encode


def _set_scale(scales, g, s, scale):
    """scales[g, s] = scale where the type has scales (q8)."""


@overload(_set_scale, inline="always")
def _set_scale_of(scales, g, s, scale):
    if isinstance(scales, types.NoneType):
        return lambda scales, g, s, scale: None

    def store(scales, g, s, scale):
        scales[g, s] = scale
    return store


@njit(nogil=True, cache=True, inline="always")
def _store_key(x, codes, scales, g, s):
    """Write x [d] float32 as position s of KV head g of keys [KV, d, capacity]."""
    _set_scale(scales, g, s, _encode_into(x, codes[g, :, s]))


@njit(nogil=True, cache=True, inline="always")
def _store_value(x, codes, scales, g, s):
    """Write x [d] float32 as position s of KV head g of values [KV, capacity, d]."""
    _set_scale(scales, g, s, _encode_into(x, codes[g, s]))


@njit(nogil=True, cache=True, fastmath=FASTMATH)
def _add_rms_norm_row(h, a, weight, eps, t):
    """Row t of `add_rms_norm`: one compiled function for the serial and row-parallel kernels, so
    both round alike, bit for bit."""
    width = a.shape[1]
    total = np.float32(0.0)
    for i in range(width):
        total += a[t, i] * a[t, i]
    inv = np.float32(1.0) / np.sqrt(total / np.float32(width) + np.float32(eps))
    for i in range(width):
        h[t, i] += weight[i] * (a[t, i] * inv)


@njit(nogil=True, cache=True, fastmath=FASTMATH)
def add_rms_norm(h, a, weight, eps):
    for t in range(a.shape[0]):
        _add_rms_norm_row(h, a, weight, eps, t)


@njit(parallel=True, nogil=True, cache=True, fastmath=FASTMATH)
def add_rms_norm_rows(h, a, weight, eps):
    """`add_rms_norm` with the rows shared among the Numba threads (prefill)."""
    for t in prange(a.shape[0]):
        _add_rms_norm_row(h, a, weight, eps, t)


def add_rms_norm_numpy(h, a, weight, eps) -> None:
    h += weight * (a / np.sqrt(np.mean(np.square(a), axis=-1, keepdims=True) + np.float32(eps)))


@njit(nogil=True, cache=True, fastmath=FASTMATH, inline="always")
def _norm_rope_head(x, weight, cos, sin, eps, rotate, scratch):
    d = x.shape[0]
    half = d // 2
    total = np.float32(0.0)
    for i in range(d):
        total += x[i] * x[i]
    inv = np.float32(1.0) / np.sqrt(total / np.float32(d) + np.float32(eps))
    for i in range(d):
        scratch[i] = weight[i] * (x[i] * inv)
    if rotate:
        for i in range(half):
            x[i] = scratch[i] * cos[i] - scratch[i + half] * sin[i]
            x[i + half] = scratch[i + half] * cos[i + half] + scratch[i] * sin[i + half]
    else:
        for i in range(d):
            x[i] = scratch[i]


@njit(parallel=True, nogil=True, cache=True, fastmath=FASTMATH)
def qk_norm_rope_rows(q, k, q_norm, k_norm, cos, sin, eps, rotate):
    """Prefill's q [T, H, d] and k [T, KV, d], in place: `decode_attention`'s per-head RMSNorm
    and RoPE (by row t of cos, sin [T, d], when `rotate`), without the store; rows in parallel."""
    for t in prange(q.shape[0]):
        scratch = np.empty(q.shape[2], np.float32)
        for h in range(q.shape[1]):
            _norm_rope_head(q[t, h], q_norm, cos[t], sin[t], eps, rotate, scratch)
        for g in range(k.shape[1]):
            _norm_rope_head(k[t, g], k_norm, cos[t], sin[t], eps, rotate, scratch)


def qk_norm_rope_store_numpy(q, k, v, q_norm, k_norm, cos, sin, eps, rotate, keys, key_scales, values, value_scales,
                             slot) -> None:
    """One sequence's norm, rotation and store of `decode_attention`: q [H, d] and k [KV, d] in
    place, then k and v [KV, d] into cache slot `slot` of the buffers."""

    def norm(x, w):
        return w * (x / np.sqrt(np.mean(np.square(x), axis=-1, keepdims=True) + np.float32(eps)))

    q[:], k[:] = norm(q, q_norm), norm(k, k_norm)
    if rotate:
        half = q.shape[-1] // 2
        for x in (q, k):
            rotated = np.concatenate([-x[:, half:], x[:, :half]], axis=-1)
            x[:] = x * cos + rotated * sin
    for x, codes, scales, axis in ((k, keys, key_scales, 2), (v, values, value_scales, 1)):
        row_codes, row_scales = encode_rows_numpy(x, codes.dtype)  # [KV, d], [KV]
        codes[(slice(None),) * axis + (slot,)] = row_codes
        if scales is not None:
            scales[:, slot] = row_scales


@intrinsic
def _bits_to_float(typingctx, bits):
    """The float32 whose bits are the int32 `bits` (a bit cast; vectorises)."""
    if bits != types.int32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(types.int32), codegen


@intrinsic
def _float_to_bits(typingctx, value):
    """The int32 bits of float32 `value` (a bit cast; vectorises)."""
    if value != types.float32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return types.int32(types.float32), codegen


@njit(nogil=True, cache=True, inline="always")
def _ordered(bits):
    """float32 bits -> an int32 in the floats' order (negative values' magnitude bits flipped);
    its own inverse. An integer maximum over these vectorises where a float one does not."""
    return np.int32(bits ^ ((bits >> np.int32(31)) & np.int32(0x7FFFFFFF)))


@njit(nogil=True, cache=True, inline="always")
def _row_max(row, start, stop):
    """max(row[start:stop]) of a float32 row (stop > start); NaNs take no part, the caller's
    exponentials carry them."""
    best = np.int32(-0x7FFFFFFF - 1)
    for j in range(start, stop):
        best = max(best, _ordered(_float_to_bits(row[j])))
    return _bits_to_float(_ordered(np.int32(best)))


LOG2_E = np.float32(1.4426950408889634)
LN2_HIGH = np.float32(0.693359375)  # ln 2 split so that n * LN2_HIGH is exact for |n| < 2^9
LN2_LOW = np.float32(-2.12194440e-4)


@njit(nogil=True, cache=True, inline="always")
def exp_nonpositive(x):
    """exp(x) in float32 for x <= 0 (softmax after subtracting the maximum), within 3e-7
    relative of np.exp down to x = -87, 0 below (where float32 has only subnormals left), NaN
    for NaN.
    Plain float arithmetic, so loops over it vectorise; np.exp compiles to a libm call per
    element, which made the exponentials a third of attention's time."""
    clamped = max(x, np.float32(-87.0))
    n = np.floor(clamped * LOG2_E + np.float32(0.5))
    r = (clamped - n * LN2_HIGH) - n * LN2_LOW  # |r| <= ln2 / 2
    p = np.float32(1.0 / 720.0)
    p = p * r + np.float32(1.0 / 120.0)
    p = p * r + np.float32(1.0 / 24.0)
    p = p * r + np.float32(1.0 / 6.0)
    p = p * r + np.float32(0.5)
    p = p * r + np.float32(1.0)
    p = p * r + np.float32(1.0)
    scaled = p * _bits_to_float(np.int32((np.int32(n) + np.int32(127)) << np.int32(23)))  # p * 2^n
    if x != x:
        return x  # NaN stays NaN, as with np.exp
    return scaled if x >= np.float32(-87.0) else np.float32(0.0)


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def silu_mul(gate, up, out):
    """out = silu(gate) * up, element by element (out may be gate, but then the loop does not vectorise:
    6.7 ms against 1.7 ms for [512, 4096] on Zen 4). error_model="numpy": without
    it every division carries Python's zero-division check, which keeps the loop from
    vectorising (about 9x slower)."""
    for t in range(gate.shape[0]):
        _silu_mul_row(gate[t], up[t], out[t])


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy", inline="always")
def _silu_mul_row(gate, up, out):
    for i in range(gate.shape[0]):
        g = gate[i]
        e = exp_nonpositive(-abs(g))  # exp(-|g|) <= 1: sigmoid without overflow, vectorised
        sigmoid = np.float32(1.0) / (np.float32(1.0) + e) if g >= 0 else e / (np.float32(1.0) + e)
        out[i] = g * sigmoid * up[i]


@njit(parallel=True, nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def silu_mul_rows(gate, up, out):
    """`silu_mul` with the rows shared among the Numba threads (prefill)."""
    for t in prange(gate.shape[0]):
        _silu_mul_row(gate[t], up[t], out[t])


def silu_mul_numpy(gate, up, out) -> None:
    out[:] = gate * (np.float32(0.5) + np.float32(0.5) * np.tanh(np.float32(0.5) * gate)) * up


KEY_BLOCK = 256  # positions per pass of the scores: the group's score rows (4 KB for 4 heads) stay in L1


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def _span_scores(q, keys, key_scales, g, heads, slot0, j0, count, scores):
    """scores[h, j0 + j] = q[h] . key (slot0 + j) of KV head g, for j < count and h in heads.
    With keys [KV, d, capacity], each dimension is one pass over consecutive positions for every
    head of the group, so the loop vectorises over positions (no horizontal sums), and a block
    of KEY_BLOCK positions is finished before the next, its score rows kept in L1."""
    d = q.shape[1]
    for b0 in range(0, count, KEY_BLOCK):
        b1 = min(count, b0 + KEY_BLOCK)
        for h in heads:
            for j in range(b0, b1):
                scores[h, np.uint64(j0 + j)] = np.float32(0.0)
        for h in heads:
            i = 0
            while i + 4 <= d:  # four dimensions per pass: one load and store of the scores per four products
                q0, q1, q2, q3 = q[h, i], q[h, i + 1], q[h, i + 2], q[h, i + 3]
                for j in range(b0, b1):  # unsigned indices: no negative-index wrap, so the loop vectorises
                    s = np.uint64(slot0 + j)
                    scores[h, np.uint64(j0 + j)] += (q0 * _element(keys, g, i, s) + q1 * _element(keys, g, i + 1, s)) + (
                        q2 * _element(keys, g, i + 2, s) + q3 * _element(keys, g, i + 3, s))
                i += 4
            while i < d:
                qi = q[h, i]
                for j in range(b0, b1):
                    scores[h, np.uint64(j0 + j)] += qi * _element(keys, g, i, np.uint64(slot0 + j))
                i += 1
        for h in heads:
            for j in range(b0, b1):
                scores[h, np.uint64(j0 + j)] *= _row_scale(key_scales, g, np.uint64(slot0 + j))


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def _span_values(values, value_scales, g, heads, slot0, j0, count, scores, out):
    """out[h] += sum over j < count of scores[h, j0 + j] * value (slot0 + j) of KV head g, four
    positions per pass over each output row."""
    d = out.shape[1]
    j = 0
    while j + 4 <= count:
        s = slot0 + j
        c0, c1 = _row_scale(value_scales, g, s), _row_scale(value_scales, g, s + 1)
        c2, c3 = _row_scale(value_scales, g, s + 2), _row_scale(value_scales, g, s + 3)
        for h in heads:
            p0, p1 = scores[h, j0 + j] * c0, scores[h, j0 + j + 1] * c1
            p2, p3 = scores[h, j0 + j + 2] * c2, scores[h, j0 + j + 3] * c3
            for i in range(d):
                out[h, i] += (p0 * _element(values, g, s, i) + p1 * _element(values, g, s + 1, i)) + (
                    p2 * _element(values, g, s + 2, i) + p3 * _element(values, g, s + 3, i))
        j += 4
    while j < count:
        s = slot0 + j
        c0 = _row_scale(value_scales, g, s)
        for h in heads:
            p0 = scores[h, j0 + j] * c0
            for i in range(d):
                out[h, i] += p0 * _element(values, g, s, i)
        j += 1


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def _attend_kv_head(q, keys, key_scales, values, value_scales, first_pos, n_keys, modulo, scores, out, g, group,
                    scale):
    """Heads g * group .. (g + 1) * group - 1 of q [H, d] over the keys of KV head g (see
    `decode_attention`), reading the cache in its own type: a score is q . codes times the key's
    scale, a value row enters as its codes times probability * scale. The n_keys positions are
    at most two runs of the buffers (the ring wraps once at most: n_keys <= modulo): keys 0 ..
    n_first - 1 from index first_pos % modulo on, the rest from index 0. NaN scores (a corrupt
    model) give NaN outputs: error_model="numpy" makes 1 / 0 infinity instead of a
    ZeroDivisionError."""
    d = q.shape[1]
    heads = range(g * group, (g + 1) * group)
    start = first_pos % modulo
    n_first = min(n_keys, modulo - start)
    _span_scores(q, keys, key_scales, g, heads, start, 0, n_first, scores)
    _span_scores(q, keys, key_scales, g, heads, 0, n_first, n_keys - n_first, scores)
    for h in heads:
        best = np.float32(-np.inf)  # float32: a float64 max would make the exponentials float64
        for j in range(n_keys):
            best = max(best, scores[h, j])
        total = np.float32(0.0)
        for j in range(n_keys):
            p = exp_nonpositive((scores[h, j] - best) * scale)
            scores[h, j] = p
            total += p
        inverse_total = np.float32(1.0) / total
        for j in range(n_keys):
            scores[h, j] *= inverse_total
        for i in range(d):
            out[h, i] = np.float32(0.0)
    _span_values(values, value_scales, g, heads, start, 0, n_first, scores, out)
    _span_values(values, value_scales, g, heads, 0, n_first, n_keys - n_first, scores, out)


# The columns of decode_attention's table, one row per sequence.
KEY_CODES, KEY_SCALES, VALUE_CODES, VALUE_SCALES, CAPACITY, SLOT, FIRST_POS, N_KEYS, MODULO = range(9)
TABLE_COLUMNS = 9


@intrinsic
def _pointer_at(typingctx, address, like):
    """A pointer to elements of `like`'s dtype at the int64 `address` (LLVM inttoptr)."""
    if address != types.int64 or not isinstance(like, types.Array):
        return None
    pointer = types.CPointer(like.dtype)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(pointer))

    return pointer(address, like), codegen


def _buffer_at(address, like, shape):
    """The C-contiguous array of `shape` and `like`'s dtype at `address`; None where `like` is None."""


@overload(_buffer_at, inline="always")
def _buffer_at_of(address, like, shape):
    if isinstance(like, types.NoneType):
        return lambda address, like, shape: None
    return lambda address, like, shape: carray(_pointer_at(address, like), shape)


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def _decode_task(task, q, k, v, q_norm, k_norm, cos, sin, eps, rotate, keys, key_scales, values, value_scales, table,
                 scores, out):
    """KV head g of sequence b (task = b * KV + g) of `decode_attention`: one compiled function for
    the parallel and serial kernels, so both round alike, bit for bit."""
    kv_heads, d = k.shape[1], k.shape[2]
    group = q.shape[1] // kv_heads
    b, g = task // kv_heads, task % kv_heads
    row = table[b]
    capacity = row[CAPACITY]
    seq_keys = _buffer_at(row[KEY_CODES], keys, (kv_heads, d, capacity))  # [KV, d, capacity]
    seq_key_scales = _buffer_at(row[KEY_SCALES], key_scales, (kv_heads, capacity))  # [KV, capacity] or None
    seq_values = _buffer_at(row[VALUE_CODES], values, (kv_heads, capacity, d))  # [KV, capacity, d]
    seq_value_scales = _buffer_at(row[VALUE_SCALES], value_scales, (kv_heads, capacity))
    scratch = np.empty(d, np.float32)
    for h in range(g * group, (g + 1) * group):
        _norm_rope_head(q[b, h], q_norm, cos[b], sin[b], eps, rotate, scratch)
    _norm_rope_head(k[b, g], k_norm, cos[b], sin[b], eps, rotate, scratch)
    _store_key(k[b, g], seq_keys, seq_key_scales, g, row[SLOT])
    _store_value(v[b, g], seq_values, seq_value_scales, g, row[SLOT])
    _attend_kv_head(q[b], seq_keys, seq_key_scales, seq_values, seq_value_scales, row[FIRST_POS], row[N_KEYS],
                    row[MODULO], scores[b], out[b], g, group, np.float32(1.0 / math.sqrt(d)))


@njit(parallel=True, nogil=True, cache=True, fastmath=FASTMATH)
def decode_attention(q, k, v, q_norm, k_norm, cos, sin, eps, rotate, keys, key_scales, values, value_scales, table,
                     scores, out):
    for task in prange(k.shape[0] * k.shape[1]):
        _decode_task(task, q, k, v, q_norm, k_norm, cos, sin, eps, rotate, keys, key_scales, values, value_scales,
                     table, scores, out)


@njit(nogil=True, cache=True, fastmath=FASTMATH)
def decode_attention_serial(q, k, v, q_norm, k_norm, cos, sin, eps, rotate, keys, key_scales, values, value_scales,
                            table, scores, out):
    """`decode_attention` on the calling thread, for caches too small to repay a parallel launch."""
    for task in range(k.shape[0] * k.shape[1]):
        _decode_task(task, q, k, v, q_norm, k_norm, cos, sin, eps, rotate, keys, key_scales, values, value_scales,
                     table, scores, out)


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def _attend_query_block(q, keys, key_scales, values, value_scales, t0, n_block, first_query_pos, first_key_pos,
                        window, g, scale, q_rows, key_tail, scores, row_totals, out_rows, out):
    """Queries t0 .. t0 + n_block - 1 and the heads of KV head g as the rows (query k, head h)
    -> k * group + h of the tiles of attention_tiles.py: their scores over the union of the
    keys they see (each row's softmax then covers only its own keys; the rest get probability
    0), the values weighted by the unnormalised probabilities, each row divided by its total
    at the end. q_rows [R, d] (rows past n_block * group stay zero), scores [R, >= the union
    rounded up to 16], out_rows [R, d], R a multiple of 8."""
    group, d = q.shape[1] // keys.shape[0], q.shape[2]
    n_rows = n_block * group
    last = first_query_pos + t0 + n_block - 1 - first_key_pos  # index of the block's last key
    lowest = first_query_pos + t0 - first_key_pos  # the first query's own key
    lowest = max(0, lowest - window + 1) if window > 0 else 0
    n_keys = last - lowest + 1
    for k in range(n_block):
        for h in range(group):
            for i in range(d):
                q_rows[k * group + h, i] = q[t0 + k, g * group + h, i]
    q_rows[n_rows:] = 0  # a short last block's unused rows
    n_vectors = n_keys // WIDTH
    tail = n_keys - WIDTH * n_vectors  # the last partial vector of positions, copied into key_tail
    for i in range(d):
        for j in range(tail):
            key_tail[0, i, j] = keys[g, i, lowest + WIDTH * n_vectors + j]
    for r0 in range(0, q_rows.shape[0], ROWS):
        score_tile(q_rows, r0, keys, g, lowest, n_vectors, scores, 0)
        if tail:
            score_tile(q_rows, r0, key_tail, 0, 0, 1, scores, WIDTH * n_vectors)
    for r in range(n_rows):
        if key_scales is not None:  # q8: the codes' products times each key's scale
            for j in range(n_keys):
                scores[r, j] *= key_scales[g, lowest + j]
    for r in range(n_rows):
        own = first_query_pos + t0 + r // group - first_key_pos  # this row's query's own key
        first = max(lowest, own - window + 1) if window > 0 else lowest
        seen, stop = first - lowest, own - lowest + 1  # the row's keys: seen .. stop - 1
        row = scores[r, seen:stop]  # a view from 0: a loop from a variable start does not vectorise
        best = _row_max(row, 0, row.shape[0])
        total = np.float32(0.0)
        for j in range(row.shape[0]):
            p = exp_nonpositive((row[j] - best) * scale)
            total += p
            row[j] = p
        scores[r, :seen] = 0
        scores[r, stop:n_keys] = 0
        if value_scales is not None:  # q8: each value row's scale joins its probability
            for j in range(seen, stop):
                scores[r, j] *= value_scales[g, lowest + j]
        row_totals[r] = total
    for r0 in range(0, q_rows.shape[0], ROWS):
        value_tile(scores, r0, values, g, lowest, n_keys, out_rows)
    for r in range(n_rows):
        inverse_total = np.float32(1.0) / row_totals[r]
        for i in range(d):
            out[t0 + r // group, g * group + r % group, i] = out_rows[r, i] * inverse_total


@njit(nogil=True, cache=True, fastmath=FASTMATH)
def _attend_blocks(q, keys, key_scales, values, value_scales, first_query_pos, first_key_pos, window, chunk, n_chunks,
                   scale, out):
    """attention_prefill's tiled path for the query blocks chunk, chunk + n_chunks, ... (a
    function of its own: inside the parallel loop's body the softmax loops do not vectorise)."""
    n_queries, heads, d = q.shape
    kv_heads, n_stored = keys.shape[0], keys.shape[2]
    group = heads // kv_heads
    per_block = max(1, ROWS // group)
    n_rows = (per_block * group + ROWS - 1) // ROWS * ROWS
    n_blocks = (n_queries + per_block - 1) // per_block
    q_rows = np.zeros((n_rows, d), np.float32)
    scores = np.zeros((n_rows, (n_stored + WIDTH - 1) // WIDTH * WIDTH), np.float32)
    row_totals = np.empty(n_rows, np.float32)
    key_tail = np.zeros((1, d, WIDTH), keys.dtype)
    out_rows = np.empty((n_rows, d), np.float32)
    for g in range(kv_heads):  # one KV head's keys and values at a time: they stay in L2
        for block in range(chunk, n_blocks, n_chunks):
            t0 = block * per_block
            _attend_query_block(q, keys, key_scales, values, value_scales, t0, min(per_block, n_queries - t0),
                                first_query_pos, first_key_pos, window, g, scale, q_rows, key_tail, scores,
                                row_totals, out_rows, out)


@njit(parallel=True, nogil=True, cache=True, fastmath=FASTMATH)
def attention_prefill(q, keys, key_scales, values, value_scales, first_query_pos, first_key_pos, window, n_chunks,
                      out):
    """Causal GQA attention for T queries at once; q [T, H, d], the cache buffers (keys [KV, d, S],
    values [KV, S, d], scales [KV, S]) holding positions first_key_pos .. at indices 0 .., at least
    up to the last query's position; window 0 = none; out [T, H, d]. Where d is a multiple of 16,
    blocks of consecutive queries (8 // group of them, at least one) go through the register
    tiles of attention_tiles.py (`_attend_query_block`); otherwise query t (position
    first_query_pos + t) runs the decode kernel's `_attend_kv_head` over the keys it sees.
    Queries (or blocks) are dealt to n_chunks chunks round-robin, so each thread gets early
    (short) and late (long) rows alike."""
    n_queries, heads, d = q.shape
    kv_heads, n_stored = keys.shape[0], keys.shape[2]
    group = heads // kv_heads
    scale = np.float32(1.0 / math.sqrt(d))
    if d % WIDTH == 0:
        for chunk in prange(n_chunks):
            _attend_blocks(q, keys, key_scales, values, value_scales, first_query_pos, first_key_pos, window, chunk,
                           n_chunks, scale, out)
        return
    for chunk in prange(n_chunks):
        scores = np.empty((heads, n_stored), np.float32)
        for t in range(chunk, n_queries, n_chunks):
            last = first_query_pos + t - first_key_pos  # index of the query's own key
            first = max(0, last - window + 1) if window > 0 else 0
            for g in range(kv_heads):
                _attend_kv_head(q[t], keys, key_scales, values, value_scales, first, last - first + 1, n_stored, scores,
                                out[t], g, group, scale)


def attention_decode_numpy(q, keys, values, first_pos, n_keys, modulo, scores, out) -> None:
    """One sequence's attention step of `decode_attention` over float32 keys and values [capacity,
    KV, d] (a decoded cache)."""
    slots = (first_pos + np.arange(n_keys)) % modulo
    group = q.shape[0] // keys.shape[1]
    k = np.repeat(keys[slots], group, axis=1)  # [n, H, d]
    v = np.repeat(values[slots], group, axis=1)
    s = np.einsum("hd,nhd->hn", q, k) / np.float32(np.sqrt(q.shape[1]))  # [H, n]
    p = np.exp(s - s.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    out[:] = np.einsum("hn,nhd->hd", p, v)
