"""Numba kernels for the quantized matrices of `quantized.py`, each with a plain NumPy twin.

Contract: the kernels trust their inputs (shapes, dtypes, C-contiguity, as laid out in
`quantized.py`); callers validate first. Weight arrays are only read, never written, so
read-only memory maps are fine. Scales are passed as the raw bits of their float16 values
(a uint16 view): Numba has no float16 type, so `half_to_float` widens them with LLVM's own
`fpext half -> float` (portable IR; one vcvtph2ps per 8 scales on x86 with F16C).

- `q4_matvec` / `q8_matvec`: decode, out[n] = sum_k W[n, k] x[k] for one input vector;
  `*_matvec_fused` do the same for a tuple of matrices sharing x (q/k/v, gate/up) in one launch.
  Vector lanes run across the 32-element blocks of a row (the layout stores element e of all
  blocks contiguously); the 16 or 32 steps within a block are unrolled by LLVM, so each lane's
  accumulators stay in registers; a second, short pass applies the group scales to the
  block sums.
  int4 folds the codes' -8 offset into a per-block sum of x, subtracted once per block, and
  skips the low-nibble mask by using byte * x_lo + (byte >> 4) * (x_hi - 16 x_lo).
- `q4_matmul` / `q8_matmul`: prefill, out = x W^T for many tokens. Each thread dequantizes
  PREFILL_ROWS rows into a float32 tile (the `*_dequantize_serial` helpers) and multiplies it
  with every token, two tokens per pass. Measured against dequantized tiles + NumPy BLAS
  (tools/bench_prefill.py, docs/performance.md): BLAS is 1.1-1.6x faster per core alone from
  64 tokens on, but at 2 threads its runs were 3-40x slower than this kernel and left
  OpenBLAS workers spinning that slowed the next Numba kernel.
- `q4_dequantize` / `q8_dequantize`: rows [start, start + R) as float32 [R, K], columns in the
  stored order (column e * B + b holds element 32 b + e) so loads and stores are contiguous;
  x is permuted the same way once (`stored_order`). `*_serial` run on the calling thread (the
  prefill kernels use them); the parallel ones serve the BLAS comparison in tools/.

All parallel kernels must be entered while holding `COMPUTE_LOCK` (see quantized.py): Numba's
workqueue threading layer aborts the process on concurrent parallel calls from two Python
threads, and a NumPy BLAS call must never run beside a Numba parallel region.
"""

from __future__ import annotations

import threading

import numba
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

# LLVM fast-math flags without nnan/ninf: NaN and infinity keep their meaning. The matvec
# kernels use CONTRACT only (FMA contraction): with "reassoc" LLVM folds their four independent
# accumulators back into one serial FMA chain, which measured 1.4-2x slower. The per-row helpers
# are inlined at Numba level: as separate LLVM functions their scratch arrays lose the
# no-alias facts of local allocations and the block loop ran 1.6x slower.
FASTMATH = {"contract", "reassoc", "nsz", "arcp", "afn"}
CONTRACT = {"contract"}
COMPUTE_LOCK = threading.Lock()
SERIAL_BELOW = 1 << 18  # weights: a decode matvec this small runs on the calling thread, since
# waking the pool costs more than the work (~10 us idle, a scheduler tick when the cores are busy)
CHUNKS_PER_THREAD = 4  # row chunks per Numba thread: a few, so a stalled thread costs little


def chunk_count(n_rows: int) -> int:
    """How many row chunks a parallel kernel splits n_rows into (its `n_chunks` argument)."""
    return max(1, min(n_rows, numba.get_num_threads() * CHUNKS_PER_THREAD))


@intrinsic
def half_to_float(typingctx, bits):
    """float32 value of the float16 whose bits are the uint16 `bits` (exact)."""
    if bits != types.uint16:
        return None

    def codegen(context, builder, signature, args):
        return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())

    return types.float32(types.uint16), codegen


def half_bits_to_float_numpy(bits: np.ndarray) -> np.ndarray:
    """NumPy twin of `half_to_float`: uint16 bits -> float32 values."""
    return bits.view(np.float16).astype(np.float32)


@njit(nogil=True, cache=True, fastmath=FASTMATH)
def _scaled_row_sum(block_dots, scale_bits, n):
    """sum over groups g of scale[n, g] * (sum of the block dots [B] of group g)."""
    n_groups = scale_bits.shape[1]
    per_group = block_dots.shape[0] // n_groups
    total = np.float32(0.0)
    if per_group == 1:
        for g in range(n_groups):
            total += half_to_float(scale_bits[n, g]) * block_dots[g]
    else:
        for g in range(n_groups):
            part = np.float32(0.0)
            for t in range(per_group):
                part += block_dots[g * per_group + t]
            total += half_to_float(scale_bits[n, g]) * part
    return total


@njit(nogil=True, cache=True, fastmath=CONTRACT, inline="always")
def _q4_prepare(x, x_low, x_high, offsets):
    """Split x [32 B] per block: x_low [16, B] = first halves, x_high [16, B] = second halves
    minus 16 x_low, offsets [B] = 8 * the block's sum (the codes' +8 bias)."""
    for b in range(offsets.shape[0]):
        total = np.float32(0.0)
        for j in range(16):
            low, high = x[32 * b + j], x[32 * b + 16 + j]
            x_low[j, b] = low
            x_high[j, b] = high - np.float32(16.0) * low
            total += low + high
        offsets[b] = np.float32(8.0) * total


@njit(nogil=True, cache=True, fastmath=CONTRACT, inline="always")
def _q4_row(nibbles, scale_bits, n, x_low, x_high, offsets, block_dots):
    """Row n of an int4 matrix times x (prepared by `_q4_prepare`); block_dots [B] is scratch."""
    for b in range(block_dots.shape[0]):
        # four independent accumulators: a single chain of 32 FMAs is latency-bound
        acc0 = acc1 = acc2 = acc3 = np.float32(0.0)
        for j in range(8):
            # byte = low + 16 high, so byte * x_lo + high * (x_hi - 16 x_lo) = low x_lo + high x_hi:
            # no mask for the low nibble (34% faster than masking, ~16x the rounding error)
            v = np.int32(nibbles[n, j, b])
            w = np.int32(nibbles[n, j + 8, b])
            acc0 += np.float32(v) * x_low[j, b]
            acc1 += np.float32(v >> 4) * x_high[j, b]
            acc2 += np.float32(w) * x_low[j + 8, b]
            acc3 += np.float32(w >> 4) * x_high[j + 8, b]
        block_dots[b] = (acc0 + acc1) + (acc2 + acc3) - offsets[b]
    return _scaled_row_sum(block_dots, scale_bits, n)


@njit(nogil=True, cache=True, fastmath=CONTRACT, inline="always")
def _q8_prepare(x, x_blocked):
    """x_blocked [32, B] = x [32 B] with element e of block b at [e, b]."""
    for b in range(x_blocked.shape[1]):
        for e in range(32):
            x_blocked[e, b] = x[32 * b + e]


@njit(nogil=True, cache=True, fastmath=CONTRACT, inline="always")
def _q8_row(quants, scale_bits, n, x_blocked, block_dots):
    """Row n of an int8 matrix times x (prepared by `_q8_prepare`); block_dots [B] is scratch."""
    for b in range(block_dots.shape[0]):
        acc0 = acc1 = acc2 = acc3 = np.float32(0.0)  # independent FMA chains
        for e in range(8):
            acc0 += np.float32(quants[n, e, b]) * x_blocked[e, b]
            acc1 += np.float32(quants[n, e + 8, b]) * x_blocked[e + 8, b]
            acc2 += np.float32(quants[n, e + 16, b]) * x_blocked[e + 16, b]
            acc3 += np.float32(quants[n, e + 24, b]) * x_blocked[e + 24, b]
        block_dots[b] = (acc0 + acc1) + (acc2 + acc3)
    return _scaled_row_sum(block_dots, scale_bits, n)


@njit(parallel=True, nogil=True, cache=True, fastmath=CONTRACT)
def q4_matvec(nibbles, scale_bits, x, out, n_chunks):
    """out [N] = W x for int4 W (nibbles [N, 16, B], scale_bits [N, G] uint16), x [32 B]."""
    n_rows, _, n_blocks = nibbles.shape
    x_low = np.empty((16, n_blocks), np.float32)
    x_high = np.empty((16, n_blocks), np.float32)
    offsets = np.empty(n_blocks, np.float32)
    _q4_prepare(x, x_low, x_high, offsets)
    per_chunk = (n_rows + n_chunks - 1) // n_chunks
    for chunk in prange(n_chunks):
        block_dots = np.empty(n_blocks, np.float32)
        for n in range(chunk * per_chunk, min(n_rows, (chunk + 1) * per_chunk)):
            out[n] = _q4_row(nibbles, scale_bits, n, x_low, x_high, offsets, block_dots)
    return out


@njit(parallel=True, nogil=True, cache=True, fastmath=CONTRACT)
def q4_matvec_fused(nibbles, scale_bits, x, outs, n_chunks):
    """outs[m] [N_m] = W_m x for a tuple of int4 matrices sharing x, in one parallel launch."""
    n_blocks = nibbles[0].shape[2]
    x_low = np.empty((16, n_blocks), np.float32)
    x_high = np.empty((16, n_blocks), np.float32)
    offsets = np.empty(n_blocks, np.float32)
    _q4_prepare(x, x_low, x_high, offsets)
    n_total = 0
    for out in outs:
        n_total += out.shape[0]
    per_chunk = (n_total + n_chunks - 1) // n_chunks
    for chunk in prange(n_chunks):
        block_dots = np.empty(n_blocks, np.float32)
        row, first_of_matrix, m = chunk * per_chunk, 0, 0
        while row < min(n_total, (chunk + 1) * per_chunk):
            while row >= first_of_matrix + outs[m].shape[0]:
                first_of_matrix += outs[m].shape[0]
                m += 1
            n = row - first_of_matrix
            outs[m][n] = _q4_row(nibbles[m], scale_bits[m], n, x_low, x_high, offsets, block_dots)
            row += 1
    return outs


@njit(nogil=True, cache=True, fastmath=CONTRACT)
def q4_matvec_serial(nibbles, scale_bits, x, out):
    """`q4_matvec` on the calling thread only, for matrices too small to repay a parallel launch."""
    n_rows, _, n_blocks = nibbles.shape
    x_low = np.empty((16, n_blocks), np.float32)
    x_high = np.empty((16, n_blocks), np.float32)
    offsets = np.empty(n_blocks, np.float32)
    _q4_prepare(x, x_low, x_high, offsets)
    block_dots = np.empty(n_blocks, np.float32)
    for n in range(n_rows):
        out[n] = _q4_row(nibbles, scale_bits, n, x_low, x_high, offsets, block_dots)
    return out


def q4_matvec_numpy(nibbles: np.ndarray, scale_bits: np.ndarray, x: np.ndarray) -> np.ndarray:
    """NumPy twin of `q4_matvec` (and of each output of `q4_matvec_fused`): W x [N] in float32."""
    return q4_dequantize_numpy(nibbles, scale_bits) @ x


@njit(parallel=True, nogil=True, cache=True, fastmath=CONTRACT)
def q8_matvec(quants, scale_bits, x, out, n_chunks):
    """out [N] = W x for int8 W (quants [N, 32, B] int8, scale_bits [N, G] uint16), x [32 B]."""
    n_rows, _, n_blocks = quants.shape
    x_blocked = np.empty((32, n_blocks), np.float32)
    _q8_prepare(x, x_blocked)
    per_chunk = (n_rows + n_chunks - 1) // n_chunks
    for chunk in prange(n_chunks):
        block_dots = np.empty(n_blocks, np.float32)
        for n in range(chunk * per_chunk, min(n_rows, (chunk + 1) * per_chunk)):
            out[n] = _q8_row(quants, scale_bits, n, x_blocked, block_dots)
    return out


@njit(parallel=True, nogil=True, cache=True, fastmath=CONTRACT)
def q8_matvec_fused(quants, scale_bits, x, outs, n_chunks):
    """outs[m] [N_m] = W_m x for a tuple of int8 matrices sharing x, in one parallel launch."""
    n_blocks = quants[0].shape[2]
    x_blocked = np.empty((32, n_blocks), np.float32)
    _q8_prepare(x, x_blocked)
    n_total = 0
    for out in outs:
        n_total += out.shape[0]
    per_chunk = (n_total + n_chunks - 1) // n_chunks
    for chunk in prange(n_chunks):
        block_dots = np.empty(n_blocks, np.float32)
        row, first_of_matrix, m = chunk * per_chunk, 0, 0
        while row < min(n_total, (chunk + 1) * per_chunk):
            while row >= first_of_matrix + outs[m].shape[0]:
                first_of_matrix += outs[m].shape[0]
                m += 1
            n = row - first_of_matrix
            outs[m][n] = _q8_row(quants[m], scale_bits[m], n, x_blocked, block_dots)
            row += 1
    return outs


@njit(nogil=True, cache=True, fastmath=CONTRACT)
def q8_matvec_serial(quants, scale_bits, x, out):
    """`q8_matvec` on the calling thread only, for matrices too small to repay a parallel launch."""
    n_rows, _, n_blocks = quants.shape
    x_blocked = np.empty((32, n_blocks), np.float32)
    _q8_prepare(x, x_blocked)
    block_dots = np.empty(n_blocks, np.float32)
    for n in range(n_rows):
        out[n] = _q8_row(quants, scale_bits, n, x_blocked, block_dots)
    return out


def q8_matvec_numpy(quants: np.ndarray, scale_bits: np.ndarray, x: np.ndarray) -> np.ndarray:
    """NumPy twin of `q8_matvec`: W x [N] in float32."""
    return q8_dequantize_numpy(quants, scale_bits) @ x


def stored_order(x: np.ndarray) -> np.ndarray:
    """Columns of x [T, K] permuted to the stored order: column e * B + b is x[:, 32 b + e]."""
    n_tokens, n_cols = x.shape
    return np.ascontiguousarray(x.reshape(n_tokens, n_cols // 32, 32).transpose(0, 2, 1)).reshape(n_tokens, n_cols)


@njit(nogil=True, cache=True, fastmath=FASTMATH)
def _block_scales(scale_bits, n, out):
    """out [B] = the float32 scale of each 32-element block of row n."""
    per_group = out.shape[0] // scale_bits.shape[1]
    for b in range(out.shape[0]):
        out[b] = half_to_float(scale_bits[n, b // per_group])


@njit(nogil=True, cache=True, fastmath=FASTMATH)
def q4_dequantize_serial(nibbles, scale_bits, start, out):
    """out [R, K] = rows start .. start + R of an int4 matrix, columns in stored order, this thread."""
    n_blocks = nibbles.shape[2]
    scales = np.empty(n_blocks, np.float32)
    for r in range(out.shape[0]):
        n = start + r
        _block_scales(scale_bits, n, scales)
        for j in range(16):
            for b in range(n_blocks):
                v = np.int32(nibbles[n, j, b])
                high = np.float32(v >> 4)
                low = np.float32(v) - np.float32(16.0) * high
                out[r, j * n_blocks + b] = (low - np.float32(8.0)) * scales[b]
                out[r, (16 + j) * n_blocks + b] = (high - np.float32(8.0)) * scales[b]
    return out


@njit(parallel=True, nogil=True, cache=True, fastmath=FASTMATH)
def q4_dequantize(nibbles, scale_bits, start, out, n_chunks):
    """`q4_dequantize_serial` with the rows split over the Numba threads."""
    n_out = out.shape[0]
    per_chunk = (n_out + n_chunks - 1) // n_chunks
    for chunk in prange(n_chunks):
        first, stop = chunk * per_chunk, min(n_out, (chunk + 1) * per_chunk)
        if first < stop:
            q4_dequantize_serial(nibbles, scale_bits, start + first, out[first:stop])
    return out


def q4_dequantize_numpy(nibbles: np.ndarray, scale_bits: np.ndarray) -> np.ndarray:
    """All rows of an int4 matrix as float32 [N, K] in natural column order (the twin of
    `q4_dequantize` up to `stored_order`)."""
    n_rows, _, n_blocks = nibbles.shape
    blocked = nibbles.transpose(0, 2, 1)  # [N, B, 16]
    codes = np.concatenate([blocked & 15, blocked >> 4], axis=2).astype(np.float32) - 8  # [N, B, 32]
    return _apply_scales(codes.reshape(n_rows, -1), scale_bits)


@njit(nogil=True, cache=True, fastmath=FASTMATH)
def q8_dequantize_serial(quants, scale_bits, start, out):
    """out [R, K] = rows start .. start + R of an int8 matrix, columns in stored order, this thread."""
    n_blocks = quants.shape[2]
    scales = np.empty(n_blocks, np.float32)
    for r in range(out.shape[0]):
        n = start + r
        _block_scales(scale_bits, n, scales)
        for e in range(32):
            for b in range(n_blocks):
                out[r, e * n_blocks + b] = np.float32(quants[n, e, b]) * scales[b]
    return out


@njit(parallel=True, nogil=True, cache=True, fastmath=FASTMATH)
def q8_dequantize(quants, scale_bits, start, out, n_chunks):
    """`q8_dequantize_serial` with the rows split over the Numba threads."""
    n_out = out.shape[0]
    per_chunk = (n_out + n_chunks - 1) // n_chunks
    for chunk in prange(n_chunks):
        first, stop = chunk * per_chunk, min(n_out, (chunk + 1) * per_chunk)
        if first < stop:
            q8_dequantize_serial(quants, scale_bits, start + first, out[first:stop])
    return out


def q8_dequantize_numpy(quants: np.ndarray, scale_bits: np.ndarray) -> np.ndarray:
    """All rows of an int8 matrix as float32 [N, K] in natural column order (the twin of
    `q8_dequantize` up to `stored_order`)."""
    codes = quants.transpose(0, 2, 1).astype(np.float32)  # [N, B, 32]
    return _apply_scales(codes.reshape(quants.shape[0], -1), scale_bits)


PREFILL_ROWS = 4  # weight rows dequantized together by the prefill kernels
# (4 rows x 2 tokens = 8 vector accumulators and 6 loads per step: fits 16 AVX2 registers)


@njit(nogil=True, cache=True, fastmath=FASTMATH, inline="always")
def _tile_times_x(tile, x, out, first_row, n_valid):
    """out[t, first_row + r] = tile[r] . x[t] for r < n_valid; tile [PREFILL_ROWS, K] (rows past
    n_valid are zero), x [T, K] in the tile's column order. Two tokens share each tile load."""
    n_tokens, n_cols = x.shape
    for t in range(0, n_tokens - 1, 2):
        a0 = a1 = a2 = a3 = b0 = b1 = b2 = b3 = np.float32(0.0)
        for k in range(n_cols):
            xa, xb = x[t, k], x[t + 1, k]
            a0 += tile[0, k] * xa
            a1 += tile[1, k] * xa
            a2 += tile[2, k] * xa
            a3 += tile[3, k] * xa
            b0 += tile[0, k] * xb
            b1 += tile[1, k] * xb
            b2 += tile[2, k] * xb
            b3 += tile[3, k] * xb
        sums = (a0, a1, a2, a3)
        for r in range(n_valid):
            out[t, first_row + r] = sums[r]
        sums = (b0, b1, b2, b3)
        for r in range(n_valid):
            out[t + 1, first_row + r] = sums[r]
    if n_tokens % 2:
        t = n_tokens - 1
        a0 = a1 = a2 = a3 = np.float32(0.0)
        for k in range(n_cols):
            xa = x[t, k]
            a0 += tile[0, k] * xa
            a1 += tile[1, k] * xa
            a2 += tile[2, k] * xa
            a3 += tile[3, k] * xa
        sums = (a0, a1, a2, a3)
        for r in range(n_valid):
            out[t, first_row + r] = sums[r]


@njit(parallel=True, nogil=True, cache=True, fastmath=FASTMATH)
def q4_matmul(nibbles, scale_bits, x_stored, out, n_chunks):
    """out [T, N] = x W^T for int4 W and many tokens; x_stored [T, K] in stored column order.

    Each thread dequantizes PREFILL_ROWS rows at a time into a float32 tile that stays in L1
    and multiplies it with every token: the decoding cost is paid once per weight, not per token.
    """
    n_rows, n_cols = nibbles.shape[0], x_stored.shape[1]
    n_tiles = (n_rows + PREFILL_ROWS - 1) // PREFILL_ROWS
    per_chunk = (n_tiles + n_chunks - 1) // n_chunks
    for chunk in prange(n_chunks):
        tile = np.zeros((PREFILL_ROWS, n_cols), np.float32)
        for tile_index in range(chunk * per_chunk, min(n_tiles, (chunk + 1) * per_chunk)):
            first = tile_index * PREFILL_ROWS
            n_valid = min(PREFILL_ROWS, n_rows - first)
            q4_dequantize_serial(nibbles, scale_bits, first, tile[:n_valid])
            _tile_times_x(tile, x_stored, out, first, n_valid)
    return out


@njit(parallel=True, nogil=True, cache=True, fastmath=FASTMATH)
def q8_matmul(quants, scale_bits, x_stored, out, n_chunks):
    """`q4_matmul` for an int8 matrix."""
    n_rows, n_cols = quants.shape[0], x_stored.shape[1]
    n_tiles = (n_rows + PREFILL_ROWS - 1) // PREFILL_ROWS
    per_chunk = (n_tiles + n_chunks - 1) // n_chunks
    for chunk in prange(n_chunks):
        tile = np.zeros((PREFILL_ROWS, n_cols), np.float32)
        for tile_index in range(chunk * per_chunk, min(n_tiles, (chunk + 1) * per_chunk)):
            first = tile_index * PREFILL_ROWS
            n_valid = min(PREFILL_ROWS, n_rows - first)
            q8_dequantize_serial(quants, scale_bits, first, tile[:n_valid])
            _tile_times_x(tile, x_stored, out, first, n_valid)
    return out


def matmul_numpy(dequantized: np.ndarray, x: np.ndarray) -> np.ndarray:
    """NumPy twin of `q4_matmul` / `q8_matmul`: x [T, K] @ W^T with W from `*_dequantize_numpy`."""
    return x @ dequantized.T


def _apply_scales(codes: np.ndarray, scale_bits: np.ndarray) -> np.ndarray:
    """codes [N, K] times their group scales [N, G] (float16 bits) -> float32 [N, K]."""
    n_rows, n_groups = scale_bits.shape
    scales = half_bits_to_float_numpy(scale_bits)  # [N, G]
    return (codes.reshape(n_rows, n_groups, -1) * scales[:, :, None]).reshape(n_rows, -1)
