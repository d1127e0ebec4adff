"""Numba kernels for the small per-layer steps of decoding, each beside its plain NumPy twin.

A decode step (one new token) runs about ten of these per layer, so they exist to cut Python
and NumPy call overhead, not arithmetic. Contract: inputs are float32, C-contiguous and of the
documented shapes (the model builds them; nothing here validates).

- `add_rms_norm(h, a, weight, eps)`: h += weight * a / sqrt(mean(a^2) + eps), row by row, in
  place (the reorder-norm residual update). Twin: `add_rms_norm_numpy`.
- `silu_mul(gate, up, out)`: out = silu(gate) * up. Twin: `silu_mul_numpy`.
- `qk_norm_rope_store(q, k, v, q_norm, k_norm, cos, sin, eps, rotate, keys, values, slot)`:
  per-head RMSNorm of q [H, d] (in place) and k [KV, d], RoPE (split-half) on both when
  `rotate`, then k and v written into cache row `slot`. Twin: `qk_norm_rope_store_numpy`.
- `attention_decode(q, keys, values, first_pos, n_keys, modulo, scores, out)`: one query per
  head over the n_keys cached positions first_pos .. first_pos + n_keys - 1, stored in row
  `position % modulo` of keys/values [capacity, KV, d]; GQA (head h reads KV head h // (H/KV)),
  softmax in float32; out [H, d]. Parallel over KV heads (`attention_decode_serial`: on the
  calling thread, for short caches); `scores` [H, >= n_keys] is scratch. Twin:
  `attention_decode_numpy`.
- `attention_prefill(q, keys, values, first_query_pos, first_key_pos, window, n_chunks, out)`:
  causal (and sliding-window) attention of T queries, parallel over queries, each through the
  decode kernel's per-head step. Twin: `model.attention` (NumPy, BLAS score matrices).
- `exp_nonpositive(x)`: the exponential the softmaxes use (a vectorisable polynomial); twin
  np.exp.
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

from .kernels import FASTMATH


@njit(nogil=True, cache=True, fastmath=FASTMATH)
def add_rms_norm(h, a, weight, eps):
    rows, width = a.shape
    for t in range(rows):
        total = np.float32(0.0)
        for i in range(width):
            total += a[t, i] * a[t, i]
        inv = np.float32(1.0) / np.sqrt(total / np.float32(width) + np.float32(eps))
        for i in range(width):
            h[t, i] += weight[i] * (a[t, i] * inv)


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


@njit(nogil=True, cache=True, fastmath=FASTMATH)
def qk_norm_rope_store(q, k, v, q_norm, k_norm, cos, sin, eps, rotate, keys, values, slot):
    scratch = np.empty(q.shape[1], np.float32)
    for h in range(q.shape[0]):
        _norm_rope_head(q[h], q_norm, cos, sin, eps, rotate, scratch)
    for g in range(k.shape[0]):
        _norm_rope_head(k[g], k_norm, cos, sin, eps, rotate, scratch)
        for i in range(k.shape[1]):
            keys[slot, g, i] = k[g, i]
            values[slot, g, i] = v[g, i]


def qk_norm_rope_store_numpy(q, k, v, q_norm, k_norm, cos, sin, eps, rotate, keys, values, slot) -> None:
    def norm(x, w):
        return w * (x / np.sqrt(np.mean(np.square(x), axis=-1, keepdims=True) + np.float32(eps)))

    q[:], k[:] = norm(q, q_norm), norm(k, k_norm)
    if rotate:
        half = q.shape[-1] // 2
        for x in (q, k):
            rotated = np.concatenate([-x[:, half:], x[:, :half]], axis=-1)
            x[:] = x * cos + rotated * sin
    keys[slot], values[slot] = k, v


@intrinsic
def _bits_to_float(typingctx, bits):
    """The float32 whose bits are the int32 `bits` (a bit cast; vectorises)."""
    if bits != types.int32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(types.int32), codegen


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


@njit(nogil=True, cache=True, fastmath=FASTMATH)
def silu_mul(gate, up, out):
    rows, width = gate.shape
    for t in range(rows):
        for i in range(width):
            g = gate[t, i]
            e = exp_nonpositive(-abs(g))  # exp(-|g|) <= 1: sigmoid without overflow, vectorised
            sigmoid = np.float32(1.0) / (np.float32(1.0) + e) if g >= 0 else e / (np.float32(1.0) + e)
            out[t, i] = g * sigmoid * up[t, i]


def silu_mul_numpy(gate, up, out) -> None:
    out[:] = gate * (np.float32(0.5) + np.float32(0.5) * np.tanh(np.float32(0.5) * gate)) * up


@njit(nogil=True, cache=True, inline="always")
def _four_slots(position, modulo):
    """Cache rows of four consecutive keys from `position` (< 2 modulo), wrapping at modulo."""
    s0 = position - modulo if position >= modulo else position
    s1 = s0 + 1 - modulo if s0 + 1 >= modulo else s0 + 1
    s2 = s1 + 1 - modulo if s1 + 1 >= modulo else s1 + 1
    s3 = s2 + 1 - modulo if s2 + 1 >= modulo else s2 + 1
    return s0, s1, s2, s3


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def _attend_kv_head(q, keys, values, first_pos, n_keys, modulo, scores, out, g, group, scale):
    """Heads g * group .. (g + 1) * group - 1 of q [H, d] over the keys of KV head g (see
    `attention_decode`). Keys go four at a time: four independent dot products per head and
    four value rows per pass over the output row. NaN scores (a corrupt model) give NaN outputs:
    error_model="numpy" makes 1 / 0 infinity instead of a ZeroDivisionError."""
    d = q.shape[1]
    heads = range(g * group, (g + 1) * group)
    start = first_pos % modulo  # key j sits in slot start + j, wrapped once at most (n_keys <= modulo)
    j = 0
    while j < n_keys:
        s0, s1, s2, s3 = _four_slots(start + j, modulo)
        if j + 4 <= n_keys:
            for h in heads:
                a0 = a1 = a2 = a3 = np.float32(0.0)
                for i in range(d):
                    a0 += q[h, i] * keys[s0, g, i]
                    a1 += q[h, i] * keys[s1, g, i]
                    a2 += q[h, i] * keys[s2, g, i]
                    a3 += q[h, i] * keys[s3, g, i]
                scores[h, j], scores[h, j + 1], scores[h, j + 2], scores[h, j + 3] = a0, a1, a2, a3
            j += 4
        else:
            for h in heads:
                a0 = np.float32(0.0)
                for i in range(d):
                    a0 += q[h, i] * keys[s0, g, i]
                scores[h, j] = a0
            j += 1
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
    j = 0
    while j < n_keys:
        s0, s1, s2, s3 = _four_slots(start + j, modulo)
        if j + 4 <= n_keys:
            for h in heads:
                p0, p1, p2, p3 = scores[h, j], scores[h, j + 1], scores[h, j + 2], scores[h, j + 3]
                for i in range(d):
                    out[h, i] += (p0 * values[s0, g, i] + p1 * values[s1, g, i]) + (
                        p2 * values[s2, g, i] + p3 * values[s3, g, i])
            j += 4
        else:
            for h in heads:
                p0 = scores[h, j]
                for i in range(d):
                    out[h, i] += p0 * values[s0, g, i]
            j += 1


@njit(parallel=True, nogil=True, cache=True, fastmath=FASTMATH)
def attention_decode(q, keys, values, first_pos, n_keys, modulo, scores, out):
    kv_heads = keys.shape[1]
    group = q.shape[0] // kv_heads
    scale = np.float32(1.0 / math.sqrt(q.shape[1]))
    for g in prange(kv_heads):
        _attend_kv_head(q, keys, values, first_pos, n_keys, modulo, scores, out, g, group, scale)


@njit(nogil=True, cache=True, fastmath=FASTMATH)
def attention_decode_serial(q, keys, values, first_pos, n_keys, modulo, scores, out):
    """`attention_decode` on the calling thread, for caches too small to repay a parallel launch."""
    kv_heads = keys.shape[1]
    group = q.shape[0] // kv_heads
    scale = np.float32(1.0 / math.sqrt(q.shape[1]))
    for g in range(kv_heads):
        _attend_kv_head(q, keys, values, first_pos, n_keys, modulo, scores, out, g, group, scale)


@njit(parallel=True, nogil=True, cache=True, fastmath=FASTMATH)
def attention_prefill(q, keys, values, first_query_pos, first_key_pos, window, n_chunks, out):
    """Causal GQA attention for T queries at once; q [T, H, d], keys/values [S, KV, d] holding
    positions first_key_pos .. first_key_pos + S - 1; window 0 = none; out [T, H, d].
    Query t (position first_query_pos + t) runs `_attend_kv_head` over the keys it sees;
    queries are dealt to n_chunks chunks round-robin, so each thread gets early (short) and late
    (long) rows alike."""
    n_queries, heads, d = q.shape
    n_stored, kv_heads = keys.shape[0], keys.shape[1]
    group = heads // kv_heads
    scale = np.float32(1.0 / math.sqrt(d))
    for chunk in prange(n_chunks):
        scores = np.empty((heads, n_stored), np.float32)
        for t in range(chunk, n_queries, n_chunks):
            last = first_query_pos + t - first_key_pos  # index of the query's own key
            first = max(0, last - window + 1) if window > 0 else 0
            for g in range(kv_heads):
                _attend_kv_head(q[t], keys, values, first, last - first + 1, n_stored, scores, out[t], g, group, scale)


def attention_decode_numpy(q, keys, values, first_pos, n_keys, modulo, scores, out) -> None:
    slots = (first_pos + np.arange(n_keys)) % modulo
    group = q.shape[0] // keys.shape[1]
    k = np.repeat(keys[slots], group, axis=1)  # [n, H, d]
    v = np.repeat(values[slots], group, axis=1)
    s = np.einsum("hd,nhd->hn", q, k) / np.float32(np.sqrt(q.shape[1]))  # [H, n]
    p = np.exp(s - s.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    out[:] = np.einsum("hn,nhd->hd", p, v)
