"""Decode speed with a compact file's weights read into memory against memory-mapped (not a test).

Usage: python tools/bench_weights_memory.py MODEL [--rounds 16] [--tokens 24] [--threads N]

Loads MODEL twice in one process, once as `tinyexaone.load` does by default (the data region read
into anonymous memory, huge pages where the kernel gives them: tinyexaone/resident.py) and once
with `mmap=True`, then alternates the two for --rounds rounds of --tokens one-token decode steps
each, so a drifting machine affects both alike. Prints each load's time, how much of the copy
is in huge pages, and per form the median and best milliseconds per token with every round's.
"""

from __future__ import annotations

import argparse
import time

import numba
import numpy as np

from tinyexaone.loading import open_model
from tinyexaone.resident import huge_page_bytes


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("--rounds", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=24)
    parser.add_argument("--threads", type=int, default=numba.config.NUMBA_NUM_THREADS)
    args = parser.parse_args()
    numba.set_num_threads(args.threads)
    models = {}
    for name, mmap in (("in memory", False), ("memory-mapped", True)):
        start = time.perf_counter()
        models[name] = open_model(args.model, mmap=mmap)[0]
        print(f"load {name}: {time.perf_counter() - start:.2f} s")
    huge = huge_page_bytes(getattr(models["in memory"].weights.lm_head, "_codes", np.zeros(1)))
    print(f"huge pages in the copy: {'unknown' if huge is None else f'{huge / 1e6:.0f} MB'}")
    for model in models.values():  # compile and warm up
        model.forward([1, 2, 3], model.new_cache())
    times = {name: [] for name in models}
    for _ in range(args.rounds):
        for name, model in models.items():
            cache = model.new_cache()
            model.forward([1], cache)
            start = time.perf_counter()
            for i in range(args.tokens):
                model.forward([2 + i], cache)
            times[name].append((time.perf_counter() - start) / args.tokens * 1e3)
    print(f"{args.model}, {args.threads} threads, {args.rounds} rounds of {args.tokens} tokens")
    for name, values in times.items():
        print(f"{name:>14}: median {np.median(values):6.2f} ms/token, best {min(values):6.2f}  "
              + " ".join(f"{v:.1f}" for v in values))


if __name__ == "__main__":
    main()
