"""Time the quantized matvec kernels at the real EXAONE-4.0-1.2B shapes (not part of the tests).

Usage: python tools/bench_kernels.py [--threads N] [--repeats N] [--tokens T] [--schemes 4:32,4k:32,8:32]
(`4k:32` is the affine int4k kind, `6:32` int6, `6k:32` int6k.)
Prints the read bandwidth of this machine and, per scheme and shape, G weights/s, GB/s of
weight bytes and their share of the read bandwidth measured in the same run.
"""

import argparse
import time

import numba

from tinyexaone.benchmarks import SHAPES_1P2B, random_weight, read_bandwidth, time_matmul


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=numba.config.NUMBA_NUM_THREADS)
    parser.add_argument("--cpu-time", action="store_true",
                        help="time CPU seconds of this thread (use with --threads 1 and OPENBLAS_NUM_THREADS=1)")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--tokens", type=int, default=1)
    parser.add_argument("--schemes", default="4:32,4:64,4:128,8:32,8:128", help="bits:group_size,...")
    args = parser.parse_args()
    numba.set_num_threads(args.threads)
    clock = time.thread_time if args.cpu_time else time.perf_counter
    bandwidth = read_bandwidth(args.threads)
    print(f"threading layer {numba.threading_layer()}, threads {numba.get_num_threads()}")
    print(f"read bandwidth (NumPy max, {args.threads} threads): {bandwidth:.1f} GB/s")
    schemes = [item.split(":") for item in args.schemes.split(",")]
    for kind, group in schemes:
        bits, group_size, affine = int(kind.rstrip("k")), int(group), kind.endswith("k")
        for label, (shape, _) in SHAPES_1P2B.items():
            if label.startswith("head") and bits == 4:
                continue
            weight = random_weight(bits, group_size, shape, affine=affine)
            r = time_matmul(weight, args.tokens, args.repeats, clock)
            share = 100 * r["gbs"] / bandwidth
            print(f"int{kind:<2} g{group_size:<3} {label:<18} T={args.tokens:<4} {r['seconds']*1e3:8.3f} ms "
                  f"{r['gws']:6.1f} G w/s {r['gbs']:6.1f} GB/s {share:5.0f}% of read bw")


if __name__ == "__main__":
    main()
