"""Decode matrix products of 30 layers at the EXAONE-4.0-1.2B shape, for several software-prefetch
settings of the integer tile dots (not part of the tests).

Usage: python tools/bench_prefetch.py [--bits 8] [--threads 2] [--rounds 2] [--variants 64:3,128:2]
A variant is BLOCKS:LOCALITY: how many blocks ahead each block asks for its row group's bytes
(`integer_dot.PREFETCH_BLOCKS`) and llvm.prefetch's locality (`PREFETCH_LOCALITY`: 3 = into L1,
2 and 1 = into L2 on x86, 0 = non-temporal). Each variant runs in its own process with an empty
Numba cache, since both are compiled into the kernels; the variants alternate for `--rounds`
rounds. A run times the 4 planned products of each of 30 distinct layers (q/k/v fused, o,
gate/up fused, down: 1.14 GB of int8, 0.60 GB of int4, more than any cache) for one token, as
decode runs them, and prints the best and median of 12 passes in ms and GB/s.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time


def one_variant(bits: int, threads: int, blocks: int, locality: int) -> str:
    import numba
    import numpy as np

    from tinyexaone import integer_dot

    integer_dot.PREFETCH_BLOCKS, integer_dot.PREFETCH_LOCALITY = blocks, locality
    from tinyexaone.benchmarks import random_weight
    from tinyexaone.quantized import FusedMatmul, activation_buffers

    numba.set_num_threads(threads)
    shapes = [[(2048, 2048), (512, 2048), (512, 2048)], [(2048, 2048)], [(4096, 2048), (4096, 2048)], [(2048, 4096)]]
    layers = [[FusedMatmul([random_weight(bits, 32, shape, seed=1000 * layer + i) for i, shape in enumerate(group)])
               for group in shapes] for layer in range(30)]
    buffers = [(np.ones((1, plan.n_in), np.float32), [np.empty((1, w.shape[0]), np.float32) for w in plan.weights],
                activation_buffers(1, plan.n_in)) for plan in layers[0]]
    nbytes = sum(w.nbytes for plans in layers for plan in plans for w in plan.weights)

    def one_token():
        for plans in layers:
            for plan, (x, outs, inputs) in zip(plans, buffers):
                plan(x, outs, inputs)

    one_token()  # compile
    seconds = []
    for _ in range(12):
        start = time.perf_counter()
        one_token()
        seconds.append(time.perf_counter() - start)
    seconds.sort()
    best, median = seconds[0], seconds[len(seconds) // 2]
    return (f"int{bits} {threads} threads, {blocks} blocks ahead, locality {locality}: {nbytes / 1e6:.0f} MB, "
            f"best {best * 1e3:.2f} ms ({nbytes / best / 1e9:.1f} GB/s), median {median * 1e3:.2f} ms "
            f"({nbytes / median / 1e9:.1f} GB/s)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bits", type=int, default=8, choices=(4, 8))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--variants", default="64:3,128:2", help="BLOCKS:LOCALITY,...")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        blocks, locality = (int(v) for v in args.one.split(":"))
        print(one_variant(args.bits, args.threads, blocks, locality), flush=True)
        return
    for _ in range(args.rounds):
        for variant in args.variants.split(","):
            with tempfile.TemporaryDirectory() as cache:
                subprocess.run([sys.executable, __file__, "--bits", str(args.bits), "--threads", str(args.threads),
                                "--one", variant], env={**os.environ, "NUMBA_CACHE_DIR": cache}, check=True)


if __name__ == "__main__":
    main()
