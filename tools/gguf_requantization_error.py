"""What requantizing a GGUF's tensors to our int8 / int4 g32 adds to their error (not a test).

Usage: python tools/gguf_requantization_error.py ORIGINAL.gguf QUANTIZED.gguf [QUANTIZED.gguf ...]
ORIGINAL is an F32 (or BF16) GGUF of a model, each QUANTIZED a `llama-quantize` of it. For each
quantized file and tensor type, prints the median over its matrices of the relative error
||W - W0|| / ||W0|| of the file's own values W (dequantized by gguf-py) against the original W0,
the error our int4 g32 and int8 g32 requantization of W adds (||Q(W) - W|| / ||W||), and the total
against the original (||Q(W) - W0|| / ||W0||). docs/gguf.md quotes its output.
"""

import statistics
import sys
from collections import defaultdict

import gguf
import numpy as np

from tinyexaone.quantized import quantize


def relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def main() -> None:
    original = {t.name: t for t in gguf.GGUFReader(sys.argv[1]).tensors}
    print(f"{'file':<28} {'type':<7} {'n':>3} {'own':>7} {'+int4':>7} {'total4':>7} {'+int8':>7} {'total8':>7}")
    for path in sys.argv[2:]:
        rows = defaultdict(list)
        for tensor in gguf.GGUFReader(path).tensors:
            if len(tensor.data.shape) < 2 or tensor.tensor_type in (gguf.GGMLQuantizationType.F32,):
                continue
            w0 = gguf.quants.dequantize(np.array(original[tensor.name].data), original[tensor.name].tensor_type)
            w = gguf.quants.dequantize(np.array(tensor.data), tensor.tensor_type).reshape(w0.shape)
            q4, q8 = quantize(w, 4, 32).dequantize(), quantize(w, 8, 32).dequantize()
            rows[tensor.tensor_type.name].append((relative(w, w0), relative(q4, w), relative(q4, w0),
                                                  relative(q8, w), relative(q8, w0)))
        for kind, values in rows.items():
            medians = [statistics.median(column) for column in zip(*values)]
            print(f"{path.rsplit('/', 1)[-1]:<28} {kind:<7} {len(values):>3} " + " ".join(f"{m:7.4f}" for m in medians))


if __name__ == "__main__":
    main()
