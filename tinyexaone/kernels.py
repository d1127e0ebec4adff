"""Numba kernels for the quantized matrices of `quantized.py`, each with a plain NumPy twin.

Contract: the kernels trust their inputs (shapes, dtypes, C-contiguity, as laid out in
`quantized.py`); callers validate first. Weight arrays are only read, never written, so
read-only memory maps are fine. Scales are passed as the raw bits of their float16 values
(a uint16 view): Numba has no float16 type, so the IR widens them with LLVM's own
`fpext half -> float`.

One definition serves int4, int6, int8, int4k and int6k (the code array's dtype and dimensions
pick the unpacking, the scale array's the per-block float step: float16 bits for the symmetric
kinds, the super-block bytes of int4k and int6k, see integer_dot.py), decode and prefill alike:
- `quantize_activations(x, x_codes, x_sums, x_scales)`: x [T, 32 B] float32 -> int8 codes per
  32-element block with a float32 scale (max|x| / 127, round to nearest:
  `quantize_rows_numpy` on rows of 32 is the exact rule) and each block's code sum, as llama.cpp
  quantizes its activations to q8. The rounding adds at most scale / 2 per element, about 0.5%
  rms of the output, far below int4's weight error and about int8's (tests/test_quantized.py).
- `matmul(codes, scale_bits, x_codes, x_sums, x_scales, out, n_chunks)`: out [T, N] = x W^T.
  The row groups (8 interleaved rows each) are split into n_chunks chunks over the Numba
  threads; each group meets the tokens four at a time (`integer_dot.tile_dot_4`, the rest one
  by one), so a weight chunk unpacked once serves four tokens and, in decode, every weight byte
  is read from memory once per token, in file order. `matmul_serial` runs on the calling thread
  (small matrices), `matmul_fused` runs one decode token through a tuple of matrices sharing it
  (q/k/v, gate/up) in one launch.
- `matmul_numpy(w_codes, w_scales, x, w_offsets=None)`: the NumPy twin (exact integer block sums,
  then the same float32 scaling, with int4k's offsets; only the order of the float sums differs).

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

from .integer_dot import ROWS, TILE_TOKENS, tile_dot_1, tile_dot_4

# LLVM fast-math flags without nnan/ninf: NaN and infinity keep their meaning (layer_kernels.py
# and bf16.py use them; the integer kernels here need none).
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
    """float32 value of the float16 whose bits are the uint16 `bits` (exact; the KV cache's
    float16 reads in layer_kernels.py)."""
    if bits != types.uint16:
        return None

    def codegen(context, builder, signature, args):
        return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())

    return types.float32(types.uint16), codegen


def half_bits_to_float_numpy(bits: np.ndarray) -> np.ndarray:
    """uint16 bits of float16 values -> float32 values (what `half_to_float` computes)."""
    return bits.view(np.float16).astype(np.float32)


def quantize_rows_numpy(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """x [..., d] float32 -> (codes [..., d] int8, scales [...] float32), one symmetric scale per
    row (llama.cpp's q8_0 rule): scale = max|x| / 127 and code = rint(x * (127 / max|x|)),
    rounding half to even, so |code| <= 127 and x ~= code * scale. A zero row gets scale 0 and
    codes 0; a row holding NaN or infinity gets scale NaN and codes 0 (it stays non-finite).
    `quantize_row` does exactly these float32 operations. The matrix inputs are quantized per
    32-element block (rows of 32), the q8 KV cache per head row (layer_kernels.py)."""
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        peak = np.abs(x).max(axis=-1)  # [...]
        finite = np.isfinite(x).all(axis=-1)
        scales = np.where(finite, peak / np.float32(127.0), np.float32(np.nan)).astype(np.float32)
        inverse = np.where(finite & (peak > 0), np.float32(127.0) / peak, np.float32(0.0)).astype(np.float32)
        codes = np.rint(np.where(finite[..., None], x, np.float32(0.0)) * inverse[..., None]).astype(np.int8)
    return codes, scales


@intrinsic
def _magnitude_bits(typingctx, value):
    """The bits of |value| (float32) as an int32: for finite values their order is the order of
    the magnitudes, and infinity and NaN are the values >= 0x7f800000."""
    if value != types.float32:
        return None

    def codegen(context, builder, signature, args):
        return builder.and_(builder.bitcast(args[0], ir.IntType(32)), ir.Constant(ir.IntType(32), 0x7FFFFFFF))

    return types.int32(types.float32), codegen


@intrinsic
def _float_of_bits(typingctx, bits):
    if bits != types.int32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(types.int32), codegen


@njit(nogil=True, cache=True, fastmath=False)
def quantize_row(x, codes):
    """x [d] float32 -> codes [d] int8, returning the row's scale: `quantize_rows_numpy` for one
    row, the same float32 operations. The peak is found on the magnitudes' bits (an integer
    maximum, which vectorises, where a float one does not without fast-math; the same value),
    which also tell a row holding infinity or NaN. fastmath=False is explicit because a callee
    without the option inherits its first caller's fast-math (Numba's ConfigStack), and `arcp`
    would turn peak / 127 into peak * (1 / 127), one ulp off; the rounding must match bit for bit."""
    peak_bits = np.int32(0)
    for i in range(x.shape[0]):
        peak_bits = max(peak_bits, _magnitude_bits(x[i]))
    if peak_bits >= np.int32(0x7F800000):
        codes[:] = 0
        return np.float32(np.nan)
    peak = _float_of_bits(peak_bits)
    inverse = np.float32(127.0) / peak if peak > 0 else np.float32(0.0)
    for i in range(x.shape[0]):
        codes[i] = np.int8(np.rint(x[i] * inverse))
    return peak / np.float32(127.0)


@njit(nogil=True, cache=True, inline="always")
def _quantize_token(x, x_codes, x_sums, x_scales, t):
    """Row t of x as 32-element blocks: codes, scales and code sums."""
    for b in range(x_scales.shape[1]):
        codes = x_codes[t, b]
        x_scales[t, b] = quantize_row(x[t, 32 * b:32 * b + 32], codes)
        total = 0
        for e in range(32):
            total += np.int32(codes[e])
        x_sums[t, b] = total


@njit(parallel=True, nogil=True, cache=True)
def quantize_activations(x, x_codes, x_sums, x_scales):
    """x [T, 32 B] float32 -> x_codes [T, B, 32] int8, x_sums [T, B] int32, x_scales [T, B] float32."""
    for t in prange(x.shape[0]):
        _quantize_token(x, x_codes, x_sums, x_scales, t)


@njit(nogil=True, cache=True)
def quantize_activations_serial(x, x_codes, x_sums, x_scales):
    """`quantize_activations` on the calling thread."""
    for t in range(x.shape[0]):
        _quantize_token(x, x_codes, x_sums, x_scales, t)


@njit(nogil=True, cache=True, inline="always")
def _scale_shift(codes, scale_bits):
    """log2 of the blocks per scale (1, 2 or 4 blocks: group sizes 32, 64, 128; 8 for int4k's
    super-blocks)."""
    shift = 0
    while (codes.shape[1] >> shift) > scale_bits.shape[1]:
        shift += 1
    return shift


@njit(nogil=True, cache=True)
def _groups_times_x(codes, scale_bits, x_codes, x_sums, x_scales, out, first_group, stop_group, tile):
    """out[:, 8 g : 8 g + 8] for row groups first_group .. stop_group - 1 (the last may be partial)."""
    shift = _scale_shift(codes, scale_bits)
    n_tokens, n_out = out.shape
    for g in range(first_group, stop_group):
        rows = min(ROWS, n_out - ROWS * g)
        t0 = 0
        while t0 < n_tokens:
            if t0 + TILE_TOKENS <= n_tokens:
                tile_dot_4(codes, scale_bits, g, x_codes, x_sums, x_scales, t0, shift, tile)
                n = TILE_TOKENS
            else:
                tile_dot_1(codes, scale_bits, g, x_codes, x_sums, x_scales, t0, shift, tile)
                n = 1
            for k in range(n):
                for r in range(rows):
                    out[t0 + k, ROWS * g + r] = tile[k, r]
            t0 += n


@njit(parallel=True, nogil=True, cache=True)
def matmul(codes, scale_bits, x_codes, x_sums, x_scales, out, n_chunks):
    """out [T, N] = x W^T for W = (codes, scale_bits) and x quantized by `quantize_activations`."""
    n_groups = codes.shape[0]
    per_chunk = (n_groups + n_chunks - 1) // n_chunks
    for chunk in prange(n_chunks):
        tile = np.empty((TILE_TOKENS, ROWS), np.float32)
        first = chunk * per_chunk
        _groups_times_x(codes, scale_bits, x_codes, x_sums, x_scales, out, first, min(n_groups, first + per_chunk), tile)
    return out


@njit(nogil=True, cache=True)
def matmul_serial(codes, scale_bits, x_codes, x_sums, x_scales, out):
    """`matmul` on the calling thread only, for matrices too small to repay a parallel launch."""
    tile = np.empty((TILE_TOKENS, ROWS), np.float32)
    _groups_times_x(codes, scale_bits, x_codes, x_sums, x_scales, out, 0, codes.shape[0], tile)
    return out


@njit(parallel=True, nogil=True, cache=True)
def matmul_fused(codes, scale_bits, x_codes, x_sums, x_scales, outs, n_chunks):
    """outs[m] [T, N_m] = x W_m^T for a tuple of matrices of one width sharing x, in one launch:
    the row groups of all matrices, in order, are split into n_chunks chunks."""
    n_total = 0
    for code in codes:
        n_total += code.shape[0]
    per_chunk = (n_total + n_chunks - 1) // n_chunks
    for chunk in prange(n_chunks):
        tile = np.empty((TILE_TOKENS, ROWS), np.float32)
        first, stop = chunk * per_chunk, min(n_total, (chunk + 1) * per_chunk)
        offset = 0
        for m in range(len(codes)):  # numba unrolls the loop over the tuple
            n_groups = codes[m].shape[0]
            low, high = max(first, offset), min(stop, offset + n_groups)
            if low < high:
                _groups_times_x(codes[m], scale_bits[m], x_codes, x_sums, x_scales, outs[m], low - offset,
                                high - offset, tile)
            offset += n_groups
    return outs


def matmul_numpy(w_codes: np.ndarray, w_scales: np.ndarray, x: np.ndarray,
                 w_offsets: np.ndarray | None = None) -> np.ndarray:
    """NumPy twin of `matmul`: x [T, K] float32 -> x W^T [T, N] float32 for integer codes
    w_codes [N, K] and float32 scales w_scales [N, G] (quantized.unpack_codes / unpack_scales),
    x quantized per 32-element block by `quantize_rows_numpy`. With `w_offsets` (int4k: codes
    0..15, w_scales and w_offsets [N, B] from quantized.unpack_affine) each block is
    w = scale * code - offset, so its term is x_scale (scale sum(code x) - offset sum(x)). With
    w_scales [N, 2 B] (int6k: one step per 16 elements, quantized.unpack_sub_scales) a block's
    term is x_scale (step_0 sum_0(code x) + step_1 sum_1(code x)) over its two halves."""
    n_out = w_codes.shape[0]
    blocks = w_codes.reshape(n_out, -1, 32).astype(np.int64)  # [N, B, 32]
    if w_scales.shape[1] == 2 * blocks.shape[1]:
        out = np.empty((x.shape[0], n_out), np.float32)
        halves = blocks.reshape(n_out, -1, 2, 16)  # [N, B, 2, 16]
        steps = w_scales.astype(np.float32).reshape(n_out, -1, 2)  # [N, B, 2]
        for t in range(x.shape[0]):
            x_codes, x_scales = quantize_rows_numpy(x[t].reshape(-1, 32))  # [B, 32], [B]
            half_sums = np.einsum("nbhe,bhe->nbh", halves, x_codes.reshape(-1, 2, 16).astype(np.int64))  # exact
            terms = (half_sums.astype(np.float32) * steps).sum(axis=2, dtype=np.float32) * x_scales  # [N, B]
            out[t] = terms.sum(axis=1, dtype=np.float64).astype(np.float32)
        return out
    scales = np.repeat(w_scales.astype(np.float32), blocks.shape[1] // w_scales.shape[1], axis=1)  # [N, B]
    out = np.empty((x.shape[0], n_out), np.float32)
    for t in range(x.shape[0]):
        x_codes, x_scales = quantize_rows_numpy(x[t].reshape(-1, 32))  # [B, 32], [B]
        block_sums = np.einsum("nbe,be->nb", blocks, x_codes.astype(np.int64))  # [N, B], exact
        if w_offsets is None:
            terms = block_sums.astype(np.float32) * (scales * x_scales)  # [N, B] float32
        else:
            x_sums = x_codes.astype(np.int32).sum(axis=1).astype(np.float32)  # [B]
            terms = (block_sums.astype(np.float32) * scales - w_offsets.astype(np.float32) * x_sums) * x_scales
        out[t] = terms.sum(axis=1, dtype=np.float64).astype(np.float32)
    return out
