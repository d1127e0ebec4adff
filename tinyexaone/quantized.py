"""Group-wise quantized matrices (int8 and int4) and their exact storage layout.

A `QuantizedWeight` stands in for `DenseWeight`: it has `shape` ([out, in]), `matmul(x)`
(x [T, in] float32 -> x @ W^T [T, out] float32) and `rows(ids)` (dequantized W[ids]).
`quantize(matrix, bits, group_size)` is the reference quantizer; `from_arrays` rebuilds a weight
from stored arrays (possibly read-only memory maps, never copied or written) after validating
them, because the Numba kernels trust their inputs.

Scheme (both widths): symmetric, one float16 scale per group of `group_size` consecutive input
elements of a row: w[n, k] ~= q[n, k] * scale[n, k // group_size], with q in [-8, 7] (int4) or
[-128, 127] (int8). The scale is signed: its sign is chosen so that the row-group's largest-
magnitude element lands on the wider negative end (-8 / -128), and its magnitude is the smallest
float16 (rounded away from zero) for which every element of the group quantizes with error at
most |scale| / 2 (round to nearest, ties to even, then clip). An all-zero group has scale 0.

Layout. Let N = out, K = in (a multiple of group_size, itself 32, 64 or 128), B = K / 32.
Each row is cut into B blocks of 32 consecutive elements; element k of a row is element
e = k % 32 of block b = k // 32. Blocks are stored "transposed": for a row, element e of every
block is contiguous, so a kernel's vector lanes run across blocks.

- int8, arrays {"quants": int8 [N, 32, B], "scales": float16 [N, K / group_size]}:
  quants[n, e, b] = q[n, 32 * b + e].
- int4, arrays {"nibbles": uint8 [N, 16, B], "scales": float16 [N, K / group_size]}:
  nibbles[n, j, b] = (q[n, 32*b + j] + 8) | ((q[n, 32*b + j + 16] + 8) << 4) for j in 0..15,
  i.e. split-half order within each 32-element block (low nibble: first half, high: second).
- scales[n, g] = the scale of elements g * group_size ... (g + 1) * group_size - 1 of row n.

Every array is C-contiguous, little-endian. Bits per weight: 8 + 16/group_size (int8) and
4 + 16/group_size (int4), e.g. 4.5 for int4 g32.

Why symmetric int4, not affine (min/max with a bias per group): measured on the tiny test model
at g32, affine lowers the rms weight error from 8.4% to 7.9% and raises the logits cosine from
0.949 to 0.958, but costs 0.5 bit per weight more (5.0 vs 4.5: the 1.2B int4 g32 file would be
~890 MB, over the 820 MB budget), 11% more bytes read per token, and ran 5% slower per core.
The signed scale already gives symmetric codes affine's use of all 16 levels on the wide side.

`matmul` enters the Numba kernels (kernels.py) under `kernels.COMPUTE_LOCK`, so calls from
several Python threads are serialised (Numba's workqueue layer aborts on concurrent use).
`matmul_fused` runs matrices that share one decode input (q/k/v, gate/up) in one launch.
"""

from __future__ import annotations

import numpy as np

from . import kernels
from .errors import TinyExaoneError

BLOCK = 32  # elements per stored block; every group size is a multiple of it
GROUP_SIZES = (32, 64, 128)
BITS = (4, 8)
FLOAT16_MAX = 65504.0
PREFILL_MIN_TOKENS = 48  # from this many input rows on, matmul uses the blocked prefill kernel: below it
# the integer matvec over all rows (each weight row read once) was faster for the 1.2B int4 layers
# (a one-off probe of whole prompts: 188 vs 285 ms at T=8, 1045 vs 1162 ms at 48, 1703 vs 1468 ms
# at 64; per matrix, `python tools/bench_prefill.py` compares the two kernels at each T)


def _check_format(bits: int, group_size: int, shape) -> tuple[int, int]:
    if bits not in BITS:
        raise TinyExaoneError(f"quantized weights must have 4 or 8 bits, got {bits}")
    if group_size not in GROUP_SIZES:
        raise TinyExaoneError(f"group size must be one of {GROUP_SIZES}, got {group_size}")
    if len(shape) != 2 or any(not isinstance(d, (int, np.integer)) or d < 1 for d in shape):
        raise TinyExaoneError(f"a quantized matrix needs a 2-D shape of positive sizes, got {tuple(shape)}")
    out_dim, in_dim = int(shape[0]), int(shape[1])
    if in_dim % group_size:
        raise TinyExaoneError(f"input size {in_dim} is not a multiple of the group size {group_size}")
    return out_dim, in_dim


def expected_arrays(bits: int, group_size: int, shape) -> dict[str, tuple[np.dtype, tuple[int, ...]]]:
    """The array names, dtypes and shapes a weight of this format must have."""
    out_dim, in_dim = _check_format(bits, group_size, shape)
    blocks = in_dim // BLOCK
    scales = (np.dtype(np.float16), (out_dim, in_dim // group_size))
    if bits == 8:
        return {"quants": (np.dtype(np.int8), (out_dim, BLOCK, blocks)), "scales": scales}
    return {"nibbles": (np.dtype(np.uint8), (out_dim, BLOCK // 2, blocks)), "scales": scales}


def _group_scales(groups: np.ndarray, bits: int) -> np.ndarray:
    """Signed float16 scales [N, G] for groups [N, G, group_size] (float64); see the module doc."""
    q_neg = 2.0 ** (bits - 1)  # 8 or 128: the wide end of the code range
    low, high = groups.min(axis=-1), groups.max(axis=-1)  # [N, G]
    # positive scale: low maps towards -q_neg; negative: high does. Each must keep every w/s in
    # [-q_neg - 0.5, q_neg - 0.5], the range that rounds-and-clips with error <= |s| / 2.
    positive = np.maximum(-low / (q_neg + 0.5), high / (q_neg - 0.5))
    negative = np.maximum(high / (q_neg + 0.5), -low / (q_neg - 0.5))
    scales = np.where(negative < positive, -negative, positive)
    if np.abs(scales).max(initial=0.0) > FLOAT16_MAX:
        raise TinyExaoneError("weights are too large for float16 quantization scales (|w| > 500000)")
    stored = scales.astype(np.float16)
    short = np.abs(stored.astype(np.float64)) < np.abs(scales)  # rounded towards zero: widen by one ulp
    stored[short] = np.nextafter(stored[short], np.copysign(np.float16(np.inf), scales[short]).astype(np.float16))
    return stored


def quantize(matrix: np.ndarray, bits: int, group_size: int) -> "QuantizedWeight":
    """Quantize a float matrix [out, in] to the symmetric group-wise format (NumPy reference)."""
    matrix = np.asarray(matrix)
    out_dim, in_dim = _check_format(bits, group_size, matrix.shape)
    if not np.issubdtype(matrix.dtype, np.floating):
        raise TinyExaoneError(f"can only quantize a float matrix, got {matrix.dtype}")
    w = matrix.astype(np.float64).reshape(out_dim, in_dim // group_size, group_size)  # [N, G, gs]
    if not np.isfinite(w).all():
        raise TinyExaoneError("cannot quantize a matrix with NaN or infinite values")
    scales = _group_scales(w, bits)  # [N, G] float16
    s = scales.astype(np.float64)[:, :, None]
    q_neg = 2 ** (bits - 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(s != 0, np.rint(w / s), 0.0)
    q = np.clip(q, -q_neg, q_neg - 1).astype(np.int16).reshape(out_dim, in_dim // BLOCK, BLOCK)  # [N, B, 32]
    return QuantizedWeight(bits, group_size, (out_dim, in_dim), _pack(q, bits, scales))


def _pack(q: np.ndarray, bits: int, scales: np.ndarray) -> dict[str, np.ndarray]:
    """Stored arrays from integer codes q [N, B, 32] and scales [N, G]."""
    if bits == 8:
        return {"quants": np.ascontiguousarray(q.transpose(0, 2, 1).astype(np.int8)), "scales": scales}
    biased = (q + 8).astype(np.uint8)  # [N, B, 32] in 0..15
    nibbles = biased[:, :, :16] | (biased[:, :, 16:] << 4)  # [N, B, 16]
    return {"nibbles": np.ascontiguousarray(nibbles.transpose(0, 2, 1)), "scales": scales}


def _codes(arrays: dict[str, np.ndarray], bits: int, rows) -> np.ndarray:
    """Integer codes [len(rows), K] of the selected rows (NumPy twin of the kernels' unpacking)."""
    if bits == 8:
        blocks = arrays["quants"][rows].transpose(0, 2, 1)  # [R, B, 32]
    else:
        nib = arrays["nibbles"][rows].transpose(0, 2, 1)  # [R, B, 16]
        blocks = np.concatenate([nib & 15, nib >> 4], axis=2).astype(np.int16) - 8  # [R, B, 32]
    return blocks.reshape(blocks.shape[0], -1)


class QuantizedWeight:
    """A matrix [out, in] stored group-wise quantized; used as y = x @ W^T."""

    def __init__(self, bits: int, group_size: int, shape, arrays: dict[str, np.ndarray]):
        self.bits = bits
        self.group_size = group_size
        self.shape = (int(shape[0]), int(shape[1]))
        self.arrays = arrays
        # read-only views for the kernels: one compiled signature whether or not the file is a memmap
        codes = arrays["quants"] if bits == 8 else arrays["nibbles"]
        self._codes = _read_only(codes)  # [N, 32, B] int8 or [N, 16, B] uint8
        self._scale_bits = _read_only(arrays["scales"].view(np.uint16))  # [N, G]
        self._matvec = kernels.q8_matvec if bits == 8 else kernels.q4_matvec
        self._matvec_serial = kernels.q8_matvec_serial if bits == 8 else kernels.q4_matvec_serial
        self.small = self.shape[0] * self.shape[1] < kernels.SERIAL_BELOW  # decode without the thread pool
        self._matmul = kernels.q8_matmul if bits == 8 else kernels.q4_matmul

    @classmethod
    def from_arrays(cls, bits: int, group_size: int, shape, arrays: dict[str, np.ndarray]) -> "QuantizedWeight":
        """Wrap stored arrays after checking names, dtypes, shapes and contiguity (no copy)."""
        expected = expected_arrays(bits, group_size, shape)
        names = set(arrays)
        if names != set(expected):
            raise TinyExaoneError(f"int{bits} weight needs arrays {sorted(expected)}, got {sorted(names)}")
        for name, (dtype, array_shape) in expected.items():
            array = arrays[name]
            if not isinstance(array, np.ndarray):
                raise TinyExaoneError(f"int{bits} weight array {name!r} is not a NumPy array")
            if array.dtype != dtype:
                raise TinyExaoneError(f"int{bits} weight array {name!r} has dtype {array.dtype}, expected {dtype}")
            if array.shape != array_shape:
                raise TinyExaoneError(
                    f"int{bits} weight array {name!r} has shape {array.shape}, expected {array_shape}"
                )
            if not array.flags.c_contiguous:
                raise TinyExaoneError(f"int{bits} weight array {name!r} is not C-contiguous")
        return cls(bits, group_size, shape, dict(arrays))

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays.values())

    def dequantize(self) -> np.ndarray:
        """The float32 matrix [out, in] this weight represents (NumPy)."""
        return self.rows(np.arange(self.shape[0]))

    def rows(self, ids) -> np.ndarray:
        """Dequantized rows W[ids] as float32 [len(ids), in] (embedding lookup, NumPy)."""
        ids = np.asarray(ids)
        codes = _codes(self.arrays, self.bits, ids).astype(np.float32)  # [R, K]
        scales = self.arrays["scales"][ids].astype(np.float32)  # [R, G]
        return (codes.reshape(len(ids), -1, self.group_size) * scales[:, :, None]).reshape(len(ids), -1)

    def matmul(self, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """x [T, in] float32 -> x @ W^T [T, out] float32, written into `out` when given.

        Fewer than PREFILL_MIN_TOKENS rows run the decode kernel over all rows at once; more rows run the
        blocked prefill kernel, which dequantizes each weight once and reuses it for every row.
        """
        n_out, n_in = self.shape
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != n_in:
            raise TinyExaoneError(f"matmul input must have shape [T, {n_in}], got {x.shape}")
        n_tokens = x.shape[0]
        if out is None:
            out = np.empty((n_tokens, n_out), np.float32)
        elif out.shape != (n_tokens, n_out) or out.dtype != np.float32 or not out.flags.c_contiguous:
            raise TinyExaoneError(f"matmul output must be a C-contiguous float32 array of shape {(n_tokens, n_out)}")
        if n_tokens < PREFILL_MIN_TOKENS and self.small:
            for t in range(n_tokens):
                self._matvec_serial(self._codes, self._scale_bits, x[t], out[t])
            return out
        with kernels.COMPUTE_LOCK:
            if n_tokens < PREFILL_MIN_TOKENS:
                self._matvec(self._codes, self._scale_bits, x, out, kernels.chunk_count(n_out))
            else:
                chunks = kernels.chunk_count(-(-n_out // kernels.PREFILL_ROWS))
                self._matmul(self._codes, self._scale_bits, kernels.stored_order(x), out, chunks)
        return out


def matmul_fused(weights, x: np.ndarray) -> list[np.ndarray]:
    """[w.matmul(x) for w in weights] for matrices sharing their input (q/k/v, gate/up).

    One decode row through QuantizedWeights of one width runs as a single parallel launch
    (x prepared once); anything else falls back to one matmul per weight.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    first = weights[0]
    same_format = all(
        isinstance(w, QuantizedWeight) and w.bits == first.bits and w.shape[1] == first.shape[1] for w in weights
    )
    if not same_format or x.ndim != 2 or x.shape[0] != 1 or x.shape[1] != first.shape[1] or first.small:
        return [w.matmul(x) for w in weights]
    outs = tuple(np.empty((1, w.shape[0]), np.float32) for w in weights)
    fused = kernels.q8_matvec_fused if first.bits == 8 else kernels.q4_matvec_fused
    with kernels.COMPUTE_LOCK:
        fused(
            tuple(w._codes for w in weights), tuple(w._scale_bits for w in weights), x[0],
            tuple(out[0] for out in outs), kernels.chunk_count(sum(w.shape[0] for w in weights)),
        )
    return list(outs)


def _read_only(array: np.ndarray) -> np.ndarray:
    view = array.view()
    view.flags.writeable = False
    return view
