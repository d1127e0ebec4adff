"""Micro-benchmarks of the quantized matrix kernels, reusable by `tinyexaone bench`.

`read_bandwidth(threads)` measures the machine's large-read bandwidth (NumPy max over 512 MB,
split over that many threads) so kernel throughput can be quoted as a share of it.
`blas_rate()` measures the float32 multiply-add rate of NumPy's BLAS at a prefill shape: the
compute ceiling a prefill of dequantized weights could reach on this machine.
`random_weight(bits, group_size, shape, affine=False)` builds a `QuantizedWeight` (int4k, or int6k
at 6 bits, with `affine`) with random codes and scales directly (no float intermediate), so real 1.2B shapes cost
only their stored size; `random_affine_scales` makes int4k's scale bytes (also valid int6k bytes:
float16 d first, any int8 sub-scales).
`time_matvec` / `time_matmul` time `QuantizedWeight.matmul` for one or many input rows and
return seconds, billions of weights per second and GB/s of weight bytes. Timings are the best
of several repeats, which filters out interference from other processes on a shared machine.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .quantized import AFFINE_HEADER, QuantizedWeight, expected_arrays

# the distinct matrix shapes of EXAONE-4.0-1.2B ([out, in]) and how often each runs per token
SHAPES_1P2B = {
    "q/o 2048x2048": ((2048, 2048), 60),
    "k/v 512x2048": ((512, 2048), 60),
    "gate/up 4096x2048": ((4096, 2048), 60),
    "down 2048x4096": ((2048, 4096), 30),
    "head 102400x2048": ((102400, 2048), 1),
}


def best_time(run, repeats: int, clock=time.perf_counter) -> float:
    """Smallest time of `repeats` calls of run(), by `clock` (wall time by default).

    With one Numba thread and one BLAS thread all work runs on the calling thread, so
    clock=time.thread_time measures its CPU time, unaffected by other processes' time slices.
    """
    best = float("inf")
    for _ in range(repeats):
        start = clock()
        run()
        best = min(best, clock() - start)
    return best


def read_bandwidth(threads: int, nbytes: int = 512 << 20, repeats: int = 5) -> float:
    """Large-read bandwidth in GB/s: NumPy max over `nbytes`, split across `threads` Python
    threads (NumPy releases the GIL inside the reduction)."""
    values = np.ones(nbytes // 4, np.float32)
    parts = np.array_split(values, threads)
    with ThreadPoolExecutor(threads) as pool:
        seconds = best_time(lambda: list(pool.map(np.max, parts)), repeats)
    return values.nbytes / seconds / 1e9


def blas_rate(n_tokens: int = 512, shape=(4096, 2048), repeats: int = 3) -> float:
    """Billions of float32 multiply-adds per second of x [n_tokens, in] @ W^T (W [out, in]) by
    NumPy's BLAS with its own thread count (all cores unless OPENBLAS_NUM_THREADS says otherwise)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n_tokens, shape[1]), np.float32)
    w = rng.standard_normal(shape, np.float32)
    seconds = best_time(lambda: x @ w.T, repeats)
    return n_tokens * shape[0] * shape[1] / seconds / 1e9


def random_affine_scales(rng: np.random.Generator, shape) -> np.ndarray:
    """int4k scale bytes [..., 128]: d and dmin float16 in [0.0001, 0.0003), random 6-bit codes."""
    scales = rng.integers(0, 256, shape, np.uint8)
    header = (0.0001 + 0.0002 * rng.random(tuple(shape[:-1]) + (AFFINE_HEADER // 2,), np.float32)).astype(np.float16)
    scales[..., :AFFINE_HEADER] = header.view(np.uint8)
    return scales


def random_weight(bits: int, group_size: int, shape, seed: int = 0, affine: bool = False) -> QuantizedWeight:
    """A QuantizedWeight of random codes and float16 scales around 0.01 (for timing only)."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for name, (dtype, array_shape) in expected_arrays(bits, group_size, shape, affine=affine).items():
        if name == "scales":
            arrays[name] = (random_affine_scales(rng, array_shape) if affine
                            else (rng.random(array_shape, np.float32) * 0.02).astype(np.float16))
        else:
            arrays[name] = rng.integers(0, 256, array_shape, np.uint8).view(dtype)
    return QuantizedWeight.from_arrays(bits, group_size, shape, arrays, affine)


def time_matmul(weight: QuantizedWeight, n_tokens: int, repeats: int = 20, clock=time.perf_counter) -> dict[str, float]:
    """Time weight.matmul on n_tokens random rows; G weights/s counts weights x tokens."""
    x = np.random.default_rng(1).standard_normal((n_tokens, weight.shape[1])).astype(np.float32)
    out = np.empty((n_tokens, weight.shape[0]), np.float32)
    weight.matmul(x, out=out)  # compile / warm up
    seconds = best_time(lambda: weight.matmul(x, out=out), repeats, clock)
    n_weights = weight.shape[0] * weight.shape[1]
    return {
        "seconds": seconds,
        "gws": n_weights * n_tokens / seconds / 1e9,
        "gbs": weight.nbytes / seconds / 1e9,
    }
