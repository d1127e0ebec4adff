"""Compare prefill paths for quantized matrices (not part of the tests).

(a) the blocked Numba kernel that `QuantizedWeight.matmul` uses for many rows (`kernels.q4_matmul`);
(b) dequantize tiles of rows to float32 in Numba (`kernels.q4_dequantize`), then multiply them
    with NumPy BLAS outside jitted code;
(c) the decode kernel over all rows in one launch, to place `quantized.PREFILL_MIN_TOKENS`.
Usage: python tools/bench_prefill.py [--threads N] [--cpu-time]
With --threads 1 --cpu-time (and OPENBLAS_NUM_THREADS=1) it measures per-core efficiency;
with 2 threads and wall time it shows how the BLAS and Numba pools interact.
"""

import argparse
import time

import numba
import numpy as np

from tinyexaone import kernels
from tinyexaone.benchmarks import best_time, random_weight

TILE_ELEMENTS = 1 << 20  # weights per dequantized float32 tile in (b): 4 MB


def tiles_and_blas(weight, x, out):
    """(b): out = x @ W^T through float32 tiles of W and NumPy BLAS."""
    n_out, n_in = weight.shape
    tile_rows = min(n_out, max(1, TILE_ELEMENTS // n_in))
    tile = np.empty((tile_rows, n_in), np.float32)  # [rows, K], columns in stored order
    x_stored = kernels.stored_order(x)
    for start in range(0, n_out, tile_rows):
        rows = min(tile_rows, n_out - start)
        kernels.q4_dequantize(weight._codes, weight._scale_bits, start, tile[:rows], kernels.chunk_count(rows))
        np.matmul(x_stored, tile[:rows].T, out=out[:, start : start + rows])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=numba.config.NUMBA_NUM_THREADS)
    parser.add_argument("--cpu-time", action="store_true",
                        help="time CPU seconds of this thread (use with --threads 1 and OPENBLAS_NUM_THREADS=1)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    numba.set_num_threads(args.threads)
    clock = time.thread_time if args.cpu_time else time.perf_counter
    print(f"threads {numba.get_num_threads()}, {'CPU' if args.cpu_time else 'wall'} time")
    for shape in ((2048, 2048), (4096, 2048)):
        weight = random_weight(4, 32, shape)
        n_weights = shape[0] * shape[1]
        for n_tokens in (2, 4, 8, 16, 64, 512):
            x = np.random.default_rng(0).standard_normal((n_tokens, shape[1])).astype(np.float32)
            out = np.empty((n_tokens, shape[0]), np.float32)
            chunks = kernels.chunk_count(shape[0])

            def integer_matvec():  # the decode kernel, all rows in one launch
                kernels.q4_matvec(weight._codes, weight._scale_bits, x, out, chunks)

            def blocked():
                kernels.q4_matmul(weight._codes, weight._scale_bits, kernels.stored_order(x), out, chunks)

            line = [f"int4 g32 {shape[0]}x{shape[1]} T={n_tokens:<4}"]
            for name, run in (("integer matvec", integer_matvec), ("blocked Numba", blocked),
                              ("tiles+BLAS", lambda: tiles_and_blas(weight, x, out))):
                if name == "integer matvec" and n_tokens > 64:
                    continue
                run()
                seconds = best_time(run, args.repeats, clock)
                line.append(f"{name} {n_weights * n_tokens / seconds / 1e9:6.1f} G w*tok/s")
            print("  ".join(line))


if __name__ == "__main__":
    main()
