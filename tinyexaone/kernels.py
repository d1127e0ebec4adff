"""Numba kernels for the quantized matrices of `quantized.py`, each with a plain NumPy twin.

Contract: the kernels trust their inputs (shapes, dtypes, C-contiguity, as laid out in
`quantized.py`); callers validate first. Weight arrays are only read, never written, so
read-only memory maps are fine. Scales are passed as the raw bits of their float16 values
(a uint16 view): Numba has no float16, so the kernels widen them with integer shifts and one
multiply by 2**112, which is exact for every finite float16 including subnormals.

- `q4_matvec` / `q8_matvec`: decode, out[n] = sum_k W[n, k] x[k] for one input vector.
  Vector lanes run across the 32-element blocks of a row (the layout stores element e of all
  blocks contiguously); the 16 or 32 steps within a block are unrolled by LLVM, so each lane's
  accumulator stays in a register and the per-group scale is applied once per block sum.
  int4 uses b*x_lo + (b >> 4)*(x_hi - 16 x_lo) = lo*x_lo + hi*x_hi (b = lo + 16 hi), which saves
  the mask, and folds the -8 offset into a per-block sum of x.
- `q4_dequantize` / `q8_dequantize`: rows [start, start + R) as float32 [R, K], for the prefill
  path (dequantized tiles multiplied by NumPy BLAS outside jitted code).

All parallel kernels must be entered while holding `COMPUTE_LOCK` (see quantized.py): Numba's
workqueue threading layer aborts the process on concurrent parallel calls, and the NumPy BLAS
pool must never run beside the Numba pool.
"""

from __future__ import annotations

import threading

import numba
import numpy as np
from numba import njit, prange

# LLVM fast-math flags without nnan/ninf: NaN and infinity keep their meaning.
FASTMATH = {"contract", "reassoc", "nsz", "arcp", "afn"}
HALF_TO_FLOAT = np.float32(2.0**112)  # rescales float16 bits shifted into a float32 exponent
COMPUTE_LOCK = threading.Lock()
CHUNKS_PER_THREAD = 4  # row chunks per Numba thread: a few, so a stalled thread costs little


def chunk_count(n_rows: int) -> int:
    """How many row chunks a parallel kernel splits n_rows into (its `n_chunks` argument)."""
    return max(1, min(n_rows, numba.get_num_threads() * CHUNKS_PER_THREAD))


def half_bits_to_float_numpy(bits: np.ndarray) -> np.ndarray:
    """NumPy twin of the kernels' float16 widening: uint16 bits -> float32 values."""
    return bits.view(np.float16).astype(np.float32)


@njit(nogil=True, cache=True, fastmath=FASTMATH)
def _widen_scales(scale_bits, wide_bits, wide):
    """wide[:] = float16 `scale_bits` [G] as float32 / 2**112 (caller multiplies by 2**112).

    `wide` is a float32 view of the uint32 buffer `wide_bits`.
    """
    for g in range(scale_bits.shape[0]):
        h = np.uint32(scale_bits[g])
        wide_bits[g] = ((h & np.uint32(0x7FFF)) << np.uint32(13)) | ((h & np.uint32(0x8000)) << np.uint32(16))
    return wide


@njit(nogil=True, cache=True, fastmath=FASTMATH)
def _scaled_row_sum(block_dots, scale_bits, wide_bits, wide):
    """sum over groups g of scale[g] * (sum of the block dots of group g)."""
    n_groups = scale_bits.shape[0]
    per_group = block_dots.shape[0] // n_groups
    _widen_scales(scale_bits, wide_bits, wide)
    total = np.float32(0.0)
    if per_group == 1:
        for g in range(n_groups):
            total += wide[g] * block_dots[g]
    else:
        for g in range(n_groups):
            part = np.float32(0.0)
            for t in range(per_group):
                part += block_dots[g * per_group + t]
            total += wide[g] * part
    return total * HALF_TO_FLOAT


@njit(parallel=True, nogil=True, cache=True, fastmath=FASTMATH)
def q4_matvec(nibbles, scale_bits, x, out, n_chunks):
    """out [N] = W x for int4 W (nibbles [N, 16, B], scale_bits [N, G] uint16), x [32 B]."""
    n_rows, _, n_blocks = nibbles.shape
    n_groups = scale_bits.shape[1]
    x_low = np.empty((16, n_blocks), np.float32)  # x of each block's first half, [j, block]
    x_high = np.empty((16, n_blocks), np.float32)  # x of the second half minus 16 x_low
    offsets = np.empty(n_blocks, np.float32)  # 8 * sum of x over the block
    for b in range(n_blocks):
        total = np.float32(0.0)
        for j in range(16):
            lo = x[32 * b + j]
            hi = x[32 * b + 16 + j]
            x_low[j, b] = lo
            x_high[j, b] = hi - np.float32(16.0) * lo
            total += lo + hi
        offsets[b] = np.float32(8.0) * total
    per_chunk = (n_rows + n_chunks - 1) // n_chunks
    for chunk in prange(n_chunks):
        block_dots = np.empty(n_blocks, np.float32)
        wide_bits = np.empty(n_groups, np.uint32)
        wide = wide_bits.view(np.float32)
        for n in range(chunk * per_chunk, min(n_rows, (chunk + 1) * per_chunk)):
            for b in range(n_blocks):
                acc = np.float32(0.0)
                for j in range(16):
                    v = np.int32(nibbles[n, j, b])
                    acc += np.float32(v) * x_low[j, b] + np.float32(v >> 4) * x_high[j, b]
                block_dots[b] = acc - offsets[b]
            out[n] = _scaled_row_sum(block_dots, scale_bits[n], wide_bits, wide)
    return out


def q4_matvec_numpy(nibbles: np.ndarray, scale_bits: np.ndarray, x: np.ndarray) -> np.ndarray:
    """NumPy twin of `q4_matvec`: W x [N] in float32."""
    return q4_dequantize_numpy(nibbles, scale_bits) @ x


@njit(parallel=True, nogil=True, cache=True, fastmath=FASTMATH)
def q8_matvec(quants, scale_bits, x, out, n_chunks):
    """out [N] = W x for int8 W (quants [N, 32, B] int8, scale_bits [N, G] uint16), x [32 B]."""
    n_rows, _, n_blocks = quants.shape
    n_groups = scale_bits.shape[1]
    x_blocked = np.empty((32, n_blocks), np.float32)  # x[32 b + e] at [e, b]
    for b in range(n_blocks):
        for e in range(32):
            x_blocked[e, b] = x[32 * b + e]
    per_chunk = (n_rows + n_chunks - 1) // n_chunks
    for chunk in prange(n_chunks):
        block_dots = np.empty(n_blocks, np.float32)
        wide_bits = np.empty(n_groups, np.uint32)
        wide = wide_bits.view(np.float32)
        for n in range(chunk * per_chunk, min(n_rows, (chunk + 1) * per_chunk)):
            for b in range(n_blocks):
                acc = np.float32(0.0)
                for e in range(32):
                    acc += np.float32(quants[n, e, b]) * x_blocked[e, b]
                block_dots[b] = acc
            out[n] = _scaled_row_sum(block_dots, scale_bits[n], wide_bits, wide)
    return out


def q8_matvec_numpy(quants: np.ndarray, scale_bits: np.ndarray, x: np.ndarray) -> np.ndarray:
    """NumPy twin of `q8_matvec`: W x [N] in float32."""
    return q8_dequantize_numpy(quants, scale_bits) @ x


@njit(parallel=True, nogil=True, cache=True, fastmath=FASTMATH)
def q4_dequantize(nibbles, scale_bits, start, out, n_chunks):
    """out [R, K] = float32 rows start .. start + R of an int4 matrix."""
    n_out = out.shape[0]
    n_blocks = nibbles.shape[2]
    n_groups = scale_bits.shape[1]
    per_group = n_blocks // n_groups
    per_chunk = (n_out + n_chunks - 1) // n_chunks
    for chunk in prange(n_chunks):
        wide_bits = np.empty(n_groups, np.uint32)
        wide = wide_bits.view(np.float32)
        for r in range(chunk * per_chunk, min(n_out, (chunk + 1) * per_chunk)):
            n = start + r
            _widen_scales(scale_bits[n], wide_bits, wide)
            for b in range(n_blocks):
                scale = wide[b // per_group] * HALF_TO_FLOAT
                for j in range(16):
                    v = np.int32(nibbles[n, j, b])
                    out[r, 32 * b + j] = np.float32((v & 15) - 8) * scale
                    out[r, 32 * b + 16 + j] = np.float32((v >> 4) - 8) * scale
    return out


def q4_dequantize_numpy(nibbles: np.ndarray, scale_bits: np.ndarray) -> np.ndarray:
    """NumPy twin of `q4_dequantize` over all rows: float32 [N, K]."""
    n_rows, _, n_blocks = nibbles.shape
    blocked = nibbles.transpose(0, 2, 1)  # [N, B, 16]
    codes = np.concatenate([blocked & 15, blocked >> 4], axis=2).astype(np.float32) - 8  # [N, B, 32]
    return _apply_scales(codes.reshape(n_rows, -1), scale_bits)


@njit(parallel=True, nogil=True, cache=True, fastmath=FASTMATH)
def q8_dequantize(quants, scale_bits, start, out, n_chunks):
    """out [R, K] = float32 rows start .. start + R of an int8 matrix."""
    n_out = out.shape[0]
    n_blocks = quants.shape[2]
    n_groups = scale_bits.shape[1]
    per_group = n_blocks // n_groups
    per_chunk = (n_out + n_chunks - 1) // n_chunks
    for chunk in prange(n_chunks):
        wide_bits = np.empty(n_groups, np.uint32)
        wide = wide_bits.view(np.float32)
        for r in range(chunk * per_chunk, min(n_out, (chunk + 1) * per_chunk)):
            n = start + r
            _widen_scales(scale_bits[n], wide_bits, wide)
            for b in range(n_blocks):
                scale = wide[b // per_group] * HALF_TO_FLOAT
                for e in range(32):
                    out[r, 32 * b + e] = np.float32(quants[n, e, b]) * scale
    return out


def q8_dequantize_numpy(quants: np.ndarray, scale_bits: np.ndarray) -> np.ndarray:
    """NumPy twin of `q8_dequantize` over all rows: float32 [N, K]."""
    codes = quants.transpose(0, 2, 1).astype(np.float32)  # [N, B, 32]
    return _apply_scales(codes.reshape(quants.shape[0], -1), scale_bits)


def _apply_scales(codes: np.ndarray, scale_bits: np.ndarray) -> np.ndarray:
    """codes [N, K] times their group scales [N, G] (float16 bits) -> float32 [N, K]."""
    n_rows, n_groups = scale_bits.shape
    scales = half_bits_to_float_numpy(scale_bits)  # [N, G]
    return (codes.reshape(n_rows, n_groups, -1) * scales[:, :, None]).reshape(n_rows, -1)
