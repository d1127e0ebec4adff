"""BF16 matrices used in place, straight from a memory-mapped Hugging Face checkpoint.

`Bf16Weight(bits)` wraps the raw uint16 bits [out, in] of a BF16 tensor (a read-only memory map:
never copied, never written) and implements the `MatrixWeight` protocol of `weights.py`. A BF16
value is the top half of a float32, so widening is a 16-bit shift (`safetensors_file.widen_bf16`,
the NumPy twin of the kernels' widening). For a few input rows (decode),
`bf16_matmul_rows` widens each weight row once into a per-thread scratch and reuses it for
every input row (`bf16_matmul_rows_serial` does the same on the calling thread for small
matrices, where waking the thread pool costs more than the work); for many rows (prefill) the matrix is widened tile by tile and multiplied by
NumPy BLAS outside jitted code. Every kernel has a NumPy twin. Parallel kernels are
entered under `kernels.COMPUTE_LOCK`.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .errors import TinyExaoneError
from .kernels import COMPUTE_LOCK, FASTMATH, SERIAL_BELOW, chunk_count
from .safetensors_file import widen_bf16

FEW_ROWS = 8  # below this many input rows, the fused Numba kernel; from it on, tiles + BLAS
TILE_ELEMENTS = 1 << 21  # weights per widened float32 tile (8 MB)


@njit(parallel=True, nogil=True, cache=True, fastmath=FASTMATH)
def bf16_matmul_rows(bits, x, out, n_chunks):
    """out[t, n] = sum_k widen(bits[n, k]) * x[t, k]; bits [N, K] uint16, x [T, K], out [T, N]."""
    n_rows, k_dim = bits.shape
    t_rows = x.shape[0]
    for chunk in prange(n_chunks):
        start = chunk * n_rows // n_chunks
        stop = (chunk + 1) * n_rows // n_chunks
        wide = np.empty(k_dim, np.uint32)  # [K] scratch for one widened row
        row = wide.view(np.float32)
        for n in range(start, stop):
            for k in range(k_dim):
                wide[k] = np.uint32(bits[n, k]) << np.uint32(16)
            for t in range(t_rows):
                acc = np.float32(0.0)
                for k in range(k_dim):
                    acc += row[k] * x[t, k]
                out[t, n] = acc
    return out


@njit(nogil=True, cache=True, fastmath=FASTMATH)
def bf16_matmul_rows_serial(bits, x, out):
    """`bf16_matmul_rows` on the calling thread, for matrices too small to repay a parallel launch."""
    k_dim = bits.shape[1]
    wide = np.empty(k_dim, np.uint32)
    row = wide.view(np.float32)
    for n in range(bits.shape[0]):
        for k in range(k_dim):
            wide[k] = np.uint32(bits[n, k]) << np.uint32(16)
        for t in range(x.shape[0]):
            acc = np.float32(0.0)
            for k in range(k_dim):
                acc += row[k] * x[t, k]
            out[t, n] = acc
    return out


def bf16_matmul_rows_numpy(bits: np.ndarray, x: np.ndarray) -> np.ndarray:
    """NumPy twin of `bf16_matmul_rows`: x [T, K] @ widen(bits)^T -> [T, N]."""
    return x @ widen_bf16(bits).T


class Bf16Weight:
    """A BF16 matrix [out, in] used as y = x @ W^T without a float32 copy of W."""

    def __init__(self, bits: np.ndarray):
        if bits.dtype != np.uint16 or bits.ndim != 2 or not bits.flags.c_contiguous:
            raise TinyExaoneError("Bf16Weight needs a C-contiguous uint16 [out, in] array")
        self.bits = bits  # [out, in] uint16, BF16 bit patterns
        self.shape = bits.shape
        self.nbytes = bits.nbytes

    def matmul(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)  # [T, in]
        if x.shape[0] < FEW_ROWS:
            out = np.empty((x.shape[0], self.shape[0]), np.float32)  # [T, out]
            if self.shape[0] * self.shape[1] < SERIAL_BELOW:
                return bf16_matmul_rows_serial(self.bits, x, out)
            with COMPUTE_LOCK:
                return bf16_matmul_rows(self.bits, x, out, chunk_count(self.shape[0]))
        out = np.empty((x.shape[0], self.shape[0]), np.float32)  # [T, out]
        tile_rows = max(1, TILE_ELEMENTS // self.shape[1])
        with COMPUTE_LOCK:
            for start in range(0, self.shape[0], tile_rows):
                stop = min(start + tile_rows, self.shape[0])
                np.matmul(x, widen_bf16(self.bits[start:stop]).T, out=out[:, start:stop])
        return out

    def rows(self, ids: np.ndarray) -> np.ndarray:
        return widen_bf16(self.bits[ids])  # [T, in]

    def dequantize(self) -> np.ndarray:
        """The whole matrix as float32 [out, in] (a copy)."""
        return widen_bf16(self.bits)
