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
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

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


@njit(nogil=True, cache=True, fastmath=FASTMATH)
def silu_mul(gate, up, out):
    rows, width = gate.shape
    for t in range(rows):
        for i in range(width):
            g = gate[t, i]
            out[t, i] = g / (np.float32(1.0) + np.exp(-g)) * up[t, i]


def silu_mul_numpy(gate, up, out) -> None:
    out[:] = gate * (np.float32(0.5) + np.float32(0.5) * np.tanh(np.float32(0.5) * gate)) * up


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


@njit(nogil=True, cache=True, fastmath=FASTMATH, inline="always")
def _attend_kv_head(q, keys, values, first_pos, n_keys, modulo, scores, out, g, group, scale):
    d = q.shape[1]
    start = first_pos % modulo  # key j sits in slot start + j, wrapped once at most (n_keys <= modulo)
    for h in range(g * group, (g + 1) * group):
        slot = start
        for j in range(n_keys):
            s = np.float32(0.0)
            for i in range(d):
                s += q[h, i] * keys[slot, g, i]
            scores[h, j] = s * scale
            slot += 1
            if slot == modulo:
                slot = 0
        best = np.float32(-np.inf)  # float32: a float64 max would make every exp float64
        for j in range(n_keys):
            best = max(best, scores[h, j])
        total = np.float32(0.0)
        for j in range(n_keys):
            p = np.exp(scores[h, j] - best)
            scores[h, j] = p
            total += p
        inverse_total = np.float32(1.0) / total
        for i in range(d):
            out[h, i] = np.float32(0.0)
        slot = start
        for j in range(n_keys):
            p = scores[h, j] * inverse_total
            for i in range(d):
                out[h, i] += p * values[slot, g, i]
            slot += 1
            if slot == modulo:
                slot = 0


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


def attention_decode_numpy(q, keys, values, first_pos, n_keys, modulo, scores, out) -> None:
    slots = (first_pos + np.arange(n_keys)) % modulo
    group = q.shape[0] // keys.shape[1]
    k = np.repeat(keys[slots], group, axis=1)  # [n, H, d]
    v = np.repeat(values[slots], group, axis=1)
    s = np.einsum("hd,nhd->hn", q, k) / np.float32(np.sqrt(q.shape[1]))  # [H, n]
    p = np.exp(s - s.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    out[:] = np.einsum("hn,nhd->hd", p, v)
