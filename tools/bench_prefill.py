"""Compare the two prefill paths for quantized matrices (not part of the tests).

(a) a blocked Numba kernel: dequantize 4 rows into a float32 scratch, then reuse it for every
    token, four row accumulators sharing each load of x;
(b) what `QuantizedWeight.matmul` does: dequantize tiles of rows to float32 in Numba, then
    multiply them with NumPy BLAS outside jitted code.
Also times (c) the decode kernel once per token, to place the switch-over `PREFILL_MIN_TOKENS`.
Usage: python tools/bench_prefill.py [--threads N]
"""

import argparse
import time

import numba
import numpy as np
from numba import njit, prange

from tinyexaone import kernels
from tinyexaone.benchmarks import best_time, random_weight

ROWS = 4  # rows dequantized together in (a)


@njit(parallel=True, nogil=True, cache=True, fastmath=kernels.FASTMATH)
def q4_matmul_blocked(nibbles, scale_bits, x, out):
    """out [T, N] = x [T, K] W^T, W int4, x in stored column order; N a multiple of ROWS."""
    n_rows, n_tokens, n_cols = nibbles.shape[0], x.shape[0], x.shape[1]
    for tile in prange(n_rows // ROWS):
        scratch = np.empty((ROWS, n_cols), np.float32)
        kernels.q4_dequantize_serial(nibbles, scale_bits, tile * ROWS, scratch)  # stored column order
        for t in range(n_tokens):
            acc0 = acc1 = acc2 = acc3 = np.float32(0.0)
            for k in range(n_cols):
                xk = x[t, k]
                acc0 += scratch[0, k] * xk
                acc1 += scratch[1, k] * xk
                acc2 += scratch[2, k] * xk
                acc3 += scratch[3, k] * xk
            out[t, tile * ROWS] = acc0
            out[t, tile * ROWS + 1] = acc1
            out[t, tile * ROWS + 2] = acc2
            out[t, tile * ROWS + 3] = acc3
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=numba.config.NUMBA_NUM_THREADS)
    parser.add_argument("--cpu-time", action="store_true",
                        help="time CPU seconds of this thread (use with --threads 1 and OPENBLAS_NUM_THREADS=1)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    numba.set_num_threads(args.threads)
    clock = time.thread_time if args.cpu_time else time.perf_counter
    print(f"threads {numba.get_num_threads()}")
    for shape in ((2048, 2048), (4096, 2048)):
        weight = random_weight(4, 32, shape)
        n_weights = shape[0] * shape[1]
        for n_tokens in (2, 4, 8, 16, 64, 512):
            x = np.random.default_rng(0).standard_normal((n_tokens, shape[1])).astype(np.float32)
            out = np.empty((n_tokens, shape[0]), np.float32)
            chunks = kernels.chunk_count(shape[0])

            def per_token():
                for t in range(n_tokens):
                    kernels.q4_matvec(weight._codes, weight._scale_bits, x[t], out[t], chunks)

            def blocked():
                q4_matmul_blocked(weight._codes, weight._scale_bits, kernels.stored_order(x), out)

            def tiles_blas():
                weight._matmul_tiles(x, out)

            line = [f"int4 g32 {shape[0]}x{shape[1]} T={n_tokens:<4}"]
            for name, run in (("matvec/token", per_token), ("blocked Numba", blocked), ("tiles+BLAS", tiles_blas)):
                if name == "matvec/token" and n_tokens > 64:
                    continue
                run()
                seconds = best_time(run, args.repeats, clock)
                line.append(f"{name} {n_weights * n_tokens / seconds / 1e9:6.1f} G w*tok/s")
            print("  ".join(line))


if __name__ == "__main__":
    main()
