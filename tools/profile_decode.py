"""Where a decode token's time goes: layer matmuls, the output head, everything else (not a test).

Usage: python tools/profile_decode.py MODEL [--threads N] [--tokens N]
MODEL is any model path `tinyexaone` takes (e.g. the synthetic 1.2B file `tinyexaone bench
--synthetic 1.2b` writes into its cache folder). Decodes --tokens single tokens after a short
prompt and prints tok/s and the milliseconds per token in quantized matmuls of the layers, in
the head, and outside both (attention, norms, Python), timed around `quantized.FusedMatmul` calls.
"""

import argparse
import time

import numba
import numpy as np

from tinyexaone import quantized
from tinyexaone.loading import open_model


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("--threads", type=int, default=numba.config.NUMBA_NUM_THREADS)
    parser.add_argument("--tokens", type=int, default=40)
    args = parser.parse_args()
    numba.set_num_threads(args.threads)
    model, _ = open_model(args.model)
    head_rows = model.weights.lm_head.shape[0]
    seconds = {"layers": 0.0, "head": 0.0}
    untimed = quantized.FusedMatmul.__call__

    def timed(plan, x, outs, inputs):
        start = time.perf_counter()
        result = untimed(plan, x, outs, inputs)
        seconds["head" if plan.weights[0].shape[0] == head_rows else "layers"] += time.perf_counter() - start
        return result

    quantized.FusedMatmul.__call__ = timed
    cache = model.new_cache()
    rng = np.random.default_rng(0)
    model.forward(rng.integers(0, model.config.vocab_size, 8), cache)
    for _ in range(3):  # compile / warm up
        model.forward(rng.integers(0, model.config.vocab_size, 1), cache)
    seconds.update(layers=0.0, head=0.0)
    start = time.perf_counter()
    for _ in range(args.tokens):
        model.forward(rng.integers(0, model.config.vocab_size, 1), cache)
    total = time.perf_counter() - start
    per_token = {name: value / args.tokens * 1e3 for name, value in seconds.items()}
    other = total / args.tokens * 1e3 - per_token["layers"] - per_token["head"]
    print(f"decode {args.tokens / total:.1f} tok/s, per token: layer matmuls {per_token['layers']:.2f} ms, "
          f"head {per_token['head']:.2f} ms, other {other:.2f} ms ({args.threads} threads)")


if __name__ == "__main__":
    main()
