"""Where a decode token's time goes: layer matmuls, the output head, everything else (not a test).

Usage: python tools/profile_decode.py MODEL [--threads N] [--tokens N] [--batch B]
MODEL is any model path `tinyexaone` takes (e.g. the synthetic 1.2B file `tinyexaone bench
--synthetic 1.2b` writes into its cache folder). Decodes --tokens steps after a short prompt,
each one token of each of --batch sequences (`Model.forward_batch`; 1: plain decode), and prints
the tokens/s and the milliseconds per step in quantized matmuls of the layers, in the head, in
the decode attention kernel (QK-norm, RoPE, cache write and attention of every sequence), and
outside all three (norms, Python), timed around `quantized.FusedMatmul` and
`layer_kernels.decode_attention` calls.
"""

import argparse
import time

import numba
import numpy as np

from tinyexaone import model as model_module
from tinyexaone import quantized
from tinyexaone.loading import open_model


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("--threads", type=int, default=numba.config.NUMBA_NUM_THREADS)
    parser.add_argument("--tokens", type=int, default=40)
    parser.add_argument("--batch", type=int, default=1, help="sequences decoded together")
    args = parser.parse_args()
    numba.set_num_threads(args.threads)
    model, _ = open_model(args.model)
    head_rows = model.weights.lm_head.shape[0]
    seconds = {"layers": 0.0, "head": 0.0, "attention": 0.0}
    untimed = quantized.FusedMatmul.__call__

    def timed(plan, x, outs, inputs):
        start = time.perf_counter()
        result = untimed(plan, x, outs, inputs)
        seconds["head" if plan.weights[0].shape[0] == head_rows else "layers"] += time.perf_counter() - start
        return result

    quantized.FusedMatmul.__call__ = timed
    for name in ("decode_attention", "decode_attention_serial"):
        kernel = getattr(model_module, name)

        def timed_attention(*kernel_args, kernel=kernel):
            start = time.perf_counter()
            kernel(*kernel_args)
            seconds["attention"] += time.perf_counter() - start

        setattr(model_module, name, timed_attention)
    rng = np.random.default_rng(0)
    vocab = model.config.vocab_size
    caches = [model.new_cache() for _ in range(args.batch)]
    for cache in caches:
        model.forward(rng.integers(0, vocab, 8), cache)
    for _ in range(3):  # compile / warm up
        model.forward_batch(rng.integers(0, vocab, args.batch), caches)
    seconds.update(layers=0.0, head=0.0, attention=0.0)
    start = time.perf_counter()
    for _ in range(args.tokens):
        model.forward_batch(rng.integers(0, vocab, args.batch), caches)
    total = time.perf_counter() - start
    per_step = {name: value / args.tokens * 1e3 for name, value in seconds.items()}
    other = total / args.tokens * 1e3 - sum(per_step.values())
    print(f"decode {args.batch} x {args.tokens} tokens: {args.batch * args.tokens / total:.1f} tok/s, per step: "
          f"layer matmuls {per_step['layers']:.2f} ms, head {per_step['head']:.2f} ms, attention "
          f"{per_step['attention']:.2f} ms, other {other:.2f} ms ({args.threads} threads)")


if __name__ == "__main__":
    main()
