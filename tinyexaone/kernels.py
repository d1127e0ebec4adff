"""Numba kernels for the quantized matrices of `quantized.py`, each with a plain NumPy twin.

Contract: the kernels trust their inputs (shapes, dtypes, C-contiguity, as laid out in
`quantized.py`); callers validate first. Weight arrays are only read, never written, so
read-only memory maps are fine. Scales are passed as the raw bits of their float16 values
(a uint16 view): Numba has no float16 type, so `half_to_float` widens them with LLVM's own
`fpext half -> float` (portable IR; one vcvtph2ps per 8 scales on x86 with F16C).

- `q4_matvec` / `q8_matvec`: decode and short prompts, out[t, n] = sum_k W[n, k] x[t, k] for a
  few input rows (each weight row read once for all of them); `*_matvec_fused` do it for one
  input vector and a tuple of matrices sharing it (q/k/v, gate/up) in one launch; `*_serial`
  for one vector on the calling thread.
  x is first quantized per 32-element block to int8-range codes and a float32 scale (max|x| / 127,
  round to nearest: `quantize_activation_numpy` is the exact rule), as llama.cpp does, so the
  block dot products are integer: 16-bit multiplies and adds, widened to 32 bits at the block's
  end, then one float multiply by the activation and weight scales per block. The integer part
  is explicit LLVM vector IR (integer_dot.py) in generic vector operations, except that when
  Numba compiles for AVX2 (`integer_dot.integer_dot_path`) int4 pairs its products with x86's
  vpmaddubsw and int8 with vpmaddwd (LLVM does not form them from generic IR). The generic IR is
  the portable path (16-bit multiply-adds in block order) and is tested on every machine.
  Vector lanes run across blocks (the layout stores element e of all blocks contiguously):
  32 blocks per int4 step (Q4_LANES: one 32-byte load per row; on AVX2 the low and high
  nibbles of a block are paired by an in-lane interleave), 16 per int8 step (LANES); blocks
  past the last full step take a scalar loop.
  Both prefetch the same bytes of the next row. The rounding of x adds at most scale / 2 per
  element, about 0.5% rms of the output, far below int4's weight error and about int8's;
  measured end to end in tests/test_quantized.py.
  int4 codes enter as unsigned nibbles 0..15: the -8 offset is subtracted once per block as
  8 * (sum of the block's activation codes).
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

from .integer_dot import LANES, Q4_LANES, q4_lanes_dot, q8_lanes_dot

# LLVM fast-math flags without nnan/ninf: NaN and infinity keep their meaning. The decode
# matvec kernels use none: Numba compiles a helper called from a fast-math kernel with the
# caller's flags, and "arcp" changed the activation scales by an ulp against their NumPy twin.
FASTMATH = {"contract", "reassoc", "nsz", "arcp", "afn"}
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


def quantize_activation_numpy(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """x [32 B] float32 -> (codes [B, 32] int16 in [-127, 127], scales [B] float32) with
    x ~= codes * scale per 32-element block: scale = max|x| / 127, codes = rint(x * (127 / max|x|)).
    A block holding NaN or infinity gets scale NaN (and codes 0), so the result stays non-finite.
    The Numba kernels quantize with exactly these float32 operations (`_quantize_block`)."""
    blocks = x.reshape(-1, 32).astype(np.float32)  # [B, 32]
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        peak = np.abs(blocks).max(axis=1)  # [B]
        finite = np.isfinite(blocks).all(axis=1)
        scales = np.where(finite, peak / np.float32(127.0), np.float32(np.nan)).astype(np.float32)
        inverse = np.where(finite & (peak > 0), np.float32(127.0) / peak, np.float32(0.0)).astype(np.float32)
        codes = np.rint(np.where(finite[:, None], blocks, 0) * inverse[:, None]).astype(np.int16)
    return codes, scales


@njit(nogil=True, cache=True)
def _quantize_block(x, b, codes):
    """Block b of x as int8-range codes [32] (int16) and its scale: `quantize_activation_numpy`
    for one block, same float32 operations (no fast-math: the rounding must match bit for bit)."""
    peak = np.float32(0.0)
    finite = True
    for e in range(32):
        value = x[32 * b + e]
        if not np.isfinite(value):
            finite = False
        elif abs(value) > peak:
            peak = abs(value)
    if not finite:
        codes[:] = 0
        return np.float32(np.nan)
    inverse = np.float32(127.0) / peak if peak > 0 else np.float32(0.0)
    for e in range(32):
        codes[e] = np.int16(np.rint(x[32 * b + e] * inverse))
    return peak / np.float32(127.0)


@njit(nogil=True, cache=True)
def _q4_prepare(x, x_pairs, x_codes, x_scales, offsets):
    """Quantize x [32 B] for the int4 kernels: x_codes [32, B] int8 (element e of block b at
    [e, b], for the scalar tail); x_pairs [16, 2 B] int8, the codes in the vector steps' order:
    for the step at block f, x_pairs[j, 2 f + 2 k + s] holds element j + 16 s of block
    f + integer_dot.Q4_BLOCKS_A[k] and x_pairs[j, 2 f + 32 + 2 k + s] that of block
    f + integer_dot.Q4_BLOCKS_B[k] (the formulas below);
    x_scales [B]; offsets [B] = 8 * the block's code sum (the int4 codes' +8 bias)."""
    codes = np.empty(32, np.int16)
    n_blocks = x_scales.shape[0]
    for b in range(n_blocks):
        x_scales[b] = _quantize_block(x, b, codes)
        total = 0
        for e in range(32):
            x_codes[e, b] = codes[e]
            total += np.int32(codes[e])
        offsets[b] = np.float32(8 * total)
    for first in range(0, n_blocks - n_blocks % Q4_LANES, Q4_LANES):
        for k in range(16):
            block_a = first + (k if k < 8 else k + 8)
            block_b = first + (k + 8 if k < 8 else k + 16)
            for j in range(16):
                for s in range(2):
                    x_pairs[j, 2 * first + 2 * k + s] = x_codes[j + 16 * s, block_a]
                    x_pairs[j, 2 * first + 32 + 2 * k + s] = x_codes[j + 16 * s, block_b]


@njit(nogil=True, cache=True, inline="always")
def _q4_row(nibbles, scale_bits, n, x_pairs, x_codes, x_scales, offsets):
    """Row n of an int4 matrix times the activation quantized by `_q4_prepare`."""
    n_blocks = nibbles.shape[2]
    per_group = n_blocks // scale_bits.shape[1]
    vector_blocks = n_blocks - n_blocks % Q4_LANES
    total = np.float32(0.0)
    for first in range(0, vector_blocks, Q4_LANES):
        total += q4_lanes_dot(nibbles, scale_bits, n, first, x_pairs, x_codes, x_scales, offsets, per_group)
    for b in range(vector_blocks, n_blocks):  # fewer than Q4_LANES blocks left
        lane_sum = np.int32(0)
        for j in range(16):
            packed = np.int32(nibbles[n, j, b])
            lane_sum += (packed & 15) * np.int32(x_codes[j, b]) + (packed >> 4) * np.int32(x_codes[j + 16, b])
        total += (np.float32(lane_sum) - offsets[b]) * x_scales[b] * half_to_float(scale_bits[n, b // per_group])
    return total


@njit(nogil=True, cache=True)
def _q8_prepare(x, x_pairs, x_codes, x_scales):
    """Quantize x [32 B] for the int8 kernels: x_codes [32, B] int16 (element e of block b at
    [e, b]: the generic path and the scalar tail); x_pairs [16, 2 B] int16, the codes in the AVX2
    steps' order: for the step at block f, x_pairs[p, 2 f + 2 k + s] holds element 2 p + s of
    block f + integer_dot.Q8_BLOCKS_A[k] and x_pairs[p, 2 f + 16 + 2 k + s] that of block
    f + integer_dot.Q8_BLOCKS_B[k] (the formulas below); x_scales [B]."""
    codes = np.empty(32, np.int16)
    n_blocks = x_scales.shape[0]
    for b in range(n_blocks):
        x_scales[b] = _quantize_block(x, b, codes)
        for e in range(32):
            x_codes[e, b] = codes[e]
    for first in range(0, n_blocks - n_blocks % LANES, LANES):
        for k in range(8):
            block_a = first + (k if k < 4 else k + 4)
            block_b = first + (k + 4 if k < 4 else k + 8)
            for p in range(16):
                for s in range(2):
                    x_pairs[p, 2 * first + 2 * k + s] = x_codes[2 * p + s, block_a]
                    x_pairs[p, 2 * first + 16 + 2 * k + s] = x_codes[2 * p + s, block_b]


@njit(nogil=True, cache=True, inline="always")
def _q8_row(quants, scale_bits, n, x_pairs, x_codes, x_scales):
    """Row n of an int8 matrix times the activation quantized by `_q8_prepare`."""
    n_blocks = quants.shape[2]
    per_group = n_blocks // scale_bits.shape[1]
    vector_blocks = n_blocks - n_blocks % LANES
    total = np.float32(0.0)
    for first in range(0, vector_blocks, LANES):
        total += q8_lanes_dot(quants, scale_bits, n, first, x_pairs, x_codes, x_scales, per_group)
    for b in range(vector_blocks, n_blocks):
        lane_sum = np.int32(0)
        for e in range(32):
            lane_sum += np.int32(quants[n, e, b]) * np.int32(x_codes[e, b])
        total += np.float32(lane_sum) * x_scales[b] * half_to_float(scale_bits[n, b // per_group])
    return total


@njit(parallel=True, nogil=True, cache=True)
def q4_matvec(nibbles, scale_bits, x, out, n_chunks):
    """out [T, N] = x W^T for int4 W (nibbles [N, 16, B], scale_bits [N, G] uint16) and a few
    input rows x [T, 32 B]: each weight row is read from memory once for all T rows."""
    n_rows, _, n_blocks = nibbles.shape
    n_tokens = x.shape[0]
    x_pairs = np.empty((n_tokens, 16, 2 * n_blocks), np.int8)
    x_codes = np.empty((n_tokens, 32, n_blocks), np.int8)
    x_scales = np.empty((n_tokens, n_blocks), np.float32)
    offsets = np.empty((n_tokens, n_blocks), np.float32)
    for t in range(n_tokens):
        _q4_prepare(x[t], x_pairs[t], x_codes[t], x_scales[t], offsets[t])
    per_chunk = (n_rows + n_chunks - 1) // n_chunks
    for chunk in prange(n_chunks):
        for n in range(chunk * per_chunk, min(n_rows, (chunk + 1) * per_chunk)):
            for t in range(n_tokens):
                out[t, n] = _q4_row(nibbles, scale_bits, n, x_pairs[t], x_codes[t], x_scales[t], offsets[t])
    return out


@njit(parallel=True, nogil=True, cache=True)
def q4_matvec_fused(nibbles, scale_bits, x, outs, n_chunks):
    """outs[m] [N_m] = W_m x for a tuple of int4 matrices sharing x, in one parallel launch."""
    n_blocks = nibbles[0].shape[2]
    x_pairs = np.empty((16, 2 * n_blocks), np.int8)
    x_codes = np.empty((32, n_blocks), np.int8)
    x_scales = np.empty(n_blocks, np.float32)
    offsets = np.empty(n_blocks, np.float32)
    _q4_prepare(x, x_pairs, x_codes, x_scales, offsets)
    n_total = 0
    for out in outs:
        n_total += out.shape[0]
    per_chunk = (n_total + n_chunks - 1) // n_chunks
    for chunk in prange(n_chunks):
        row, first_of_matrix, m = chunk * per_chunk, 0, 0
        while row < min(n_total, (chunk + 1) * per_chunk):
            while row >= first_of_matrix + outs[m].shape[0]:
                first_of_matrix += outs[m].shape[0]
                m += 1
            n = row - first_of_matrix
            outs[m][n] = _q4_row(nibbles[m], scale_bits[m], n, x_pairs, x_codes, x_scales, offsets)
            row += 1
    return outs


@njit(nogil=True, cache=True)
def q4_matvec_serial(nibbles, scale_bits, x, out):
    """`q4_matvec` on the calling thread only, for matrices too small to repay a parallel launch."""
    n_rows, _, n_blocks = nibbles.shape
    x_pairs = np.empty((16, 2 * n_blocks), np.int8)
    x_codes = np.empty((32, n_blocks), np.int8)
    x_scales = np.empty(n_blocks, np.float32)
    offsets = np.empty(n_blocks, np.float32)
    _q4_prepare(x, x_pairs, x_codes, x_scales, offsets)
    for n in range(n_rows):
        out[n] = _q4_row(nibbles, scale_bits, n, x_pairs, x_codes, x_scales, offsets)
    return out


def _matvec_numpy(codes: np.ndarray, scale_bits: np.ndarray, x: np.ndarray) -> np.ndarray:
    """codes [N, B, 32] (integers) times x quantized per block, with the kernels' float32 steps."""
    x_codes, x_scales = quantize_activation_numpy(x)  # [B, 32], [B]
    block_sums = np.einsum("nbe,be->nb", codes.astype(np.int64), x_codes.astype(np.int64))  # [N, B], exact
    n_rows, n_blocks = block_sums.shape
    weight_scales = np.repeat(half_bits_to_float_numpy(scale_bits), n_blocks // scale_bits.shape[1], axis=1)  # [N, B]
    terms = block_sums.astype(np.float32) * x_scales * weight_scales  # [N, B] float32
    return terms.sum(axis=1, dtype=np.float64).astype(np.float32)


def q4_matvec_numpy(nibbles: np.ndarray, scale_bits: np.ndarray, x: np.ndarray) -> np.ndarray:
    """NumPy twin of `q4_matvec` (and of each output of `q4_matvec_fused`): W x [N] in float32,
    x quantized per 32-element block as by `quantize_activation_numpy`."""
    blocked = nibbles.transpose(0, 2, 1).astype(np.int16)  # [N, B, 16]
    codes = np.concatenate([blocked & 15, blocked >> 4], axis=2) - 8  # [N, B, 32]
    return _matvec_numpy(codes, scale_bits, x)


@njit(parallel=True, nogil=True, cache=True)
def q8_matvec(quants, scale_bits, x, out, n_chunks):
    """out [T, N] = x W^T for int8 W (quants [N, 32, B] int8, scale_bits [N, G] uint16) and a
    few input rows x [T, 32 B]: each weight row is read from memory once for all T rows."""
    n_rows, _, n_blocks = quants.shape
    n_tokens = x.shape[0]
    x_pairs = np.empty((n_tokens, 16, 2 * n_blocks), np.int16)
    x_codes = np.empty((n_tokens, 32, n_blocks), np.int16)
    x_scales = np.empty((n_tokens, n_blocks), np.float32)
    for t in range(n_tokens):
        _q8_prepare(x[t], x_pairs[t], x_codes[t], x_scales[t])
    per_chunk = (n_rows + n_chunks - 1) // n_chunks
    for chunk in prange(n_chunks):
        for n in range(chunk * per_chunk, min(n_rows, (chunk + 1) * per_chunk)):
            for t in range(n_tokens):
                out[t, n] = _q8_row(quants, scale_bits, n, x_pairs[t], x_codes[t], x_scales[t])
    return out


@njit(parallel=True, nogil=True, cache=True)
def q8_matvec_fused(quants, scale_bits, x, outs, n_chunks):
    """outs[m] [N_m] = W_m x for a tuple of int8 matrices sharing x, in one parallel launch."""
    n_blocks = quants[0].shape[2]
    x_pairs = np.empty((16, 2 * n_blocks), np.int16)
    x_codes = np.empty((32, n_blocks), np.int16)
    x_scales = np.empty(n_blocks, np.float32)
    _q8_prepare(x, x_pairs, x_codes, x_scales)
    n_total = 0
    for out in outs:
        n_total += out.shape[0]
    per_chunk = (n_total + n_chunks - 1) // n_chunks
    for chunk in prange(n_chunks):
        row, first_of_matrix, m = chunk * per_chunk, 0, 0
        while row < min(n_total, (chunk + 1) * per_chunk):
            while row >= first_of_matrix + outs[m].shape[0]:
                first_of_matrix += outs[m].shape[0]
                m += 1
            n = row - first_of_matrix
            outs[m][n] = _q8_row(quants[m], scale_bits[m], n, x_pairs, x_codes, x_scales)
            row += 1
    return outs


@njit(nogil=True, cache=True)
def q8_matvec_serial(quants, scale_bits, x, out):
    """`q8_matvec` on the calling thread only, for matrices too small to repay a parallel launch."""
    n_rows, _, n_blocks = quants.shape
    x_pairs = np.empty((16, 2 * n_blocks), np.int16)
    x_codes = np.empty((32, n_blocks), np.int16)
    x_scales = np.empty(n_blocks, np.float32)
    _q8_prepare(x, x_pairs, x_codes, x_scales)
    for n in range(n_rows):
        out[n] = _q8_row(quants, scale_bits, n, x_pairs, x_codes, x_scales)
    return out


def q8_matvec_numpy(quants: np.ndarray, scale_bits: np.ndarray, x: np.ndarray) -> np.ndarray:
    """NumPy twin of `q8_matvec`: W x [N] in float32, x quantized as by `quantize_activation_numpy`."""
    return _matvec_numpy(quants.transpose(0, 2, 1), scale_bits, x)


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
