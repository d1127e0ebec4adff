"""Group-wise quantized matrices (int8 and int4) and their exact storage layout.

A `QuantizedWeight` stands in for `DenseWeight`: it has `shape` ([out, in]), `matmul(x)`
(x [T, in] float32 -> x @ W^T [T, out] float32) and `rows(ids)` (dequantized W[ids]).
`quantize(matrix, bits, group_size, weights=None)` is the quantizer; `from_arrays` rebuilds a
weight from stored arrays (possibly read-only memory maps, never copied or written) after
validating them, because the Numba kernels trust their inputs.

Scheme (both widths): symmetric, one float16 scale per group of `group_size` consecutive input
elements of a row: w[n, k] ~= q[n, k] * scale[n, k // group_size], with q in [-8, 7] (int4) or
[-128, 127] (int8). The codes are the absmax codes: q = clip(rint(w / s0)) (ties to even) for
the signed absmax scale s0, whose sign puts the group's largest-magnitude element towards the
wider negative end (-8 / -128) and whose magnitude is the smallest float16 for which every
element rounds with error at most |s0| / 2; the stored scale is the float16 least-squares scale
of those codes (weighted per input column by `weights` when given: calibration), or s0 where that
is not more accurate (scale_fit.py). An all-zero group has scale 0.

Layout (compact format version 2). Let N = out, K = in (a multiple of group_size, itself 32, 64
or 128), B = K / 32 blocks of 32 consecutive elements per row (element k of a row is element
e = k % 32 of block b = k // 32), and G8 = ceil(N / 8) row groups. Rows are interleaved by
eights: row n is lane r = n % 8 of group g = n // 8, and a block of a group is a run of 32-byte
chunks, chunk c holding 4 bytes of each lane in turn (byte 32 c + 4 r + i), so an integer dot
product keeps one int32 lane per row (integer_dot.py). Rows past N (the last group's padding)
have code 0 and scale 0.

- int8, arrays {"quants": int8 [G8, B, 256], "scales": float16 [G8, K / group_size, 8]}:
  quants[g, b, 32 c + 4 r + i] = q[8 g + r, 32 b + 4 c + i] for c in 0..7.
- int4, arrays {"nibbles": uint8 [G8, B, 128], "scales": float16 [G8, K / group_size, 8]}:
  nibbles[g, b, 32 c + 4 r + i] = (q[n, 32 b + 4 c + i] + 8) | ((q[n, 32 b + 16 + 4 c + i] + 8) << 4)
  for c in 0..3, n = 8 g + r: the low nibbles of chunk c are elements 4c..4c+3 of the block, the
  high nibbles elements 16+4c..16+4c+3 (llama.cpp's Q4_0 keeps the same two halves per byte).
- scales[g, j, r] = the scale of elements j * group_size ... (j + 1) * group_size - 1 of row 8 g + r.

Every array is C-contiguous, little-endian. Bits per weight: 8 + 16/group_size (int8) and
4 + 16/group_size (int4), e.g. 4.5 for int4 g32. Version 1 files stored each row on its own,
element e of every block contiguous (quants [N, 32, B], nibbles [N, 16, B] with element j in the
low and j + 16 in the high nibble, scales [N, K / group_size]); `from_version_1` repacks such
arrays into this layout in memory when an old file is loaded.

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
from .integer_dot import ROWS
from .errors import TinyExaoneError
from .scale_fit import fit_scales

BLOCK = 32  # elements per stored block; every group size is a multiple of it
GROUP_SIZES = (32, 64, 128)
BITS = (4, 8)


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


def expected_arrays(bits: int, group_size: int, shape, version: int = 2) -> dict[str, tuple[np.dtype, tuple[int, ...]]]:
    """The array names, dtypes and shapes a weight of this format must have (in a compact file
    of `version` 2, or 1: see the module doc)."""
    out_dim, in_dim = _check_format(bits, group_size, shape)
    blocks, n_groups = in_dim // BLOCK, in_dim // group_size
    codes = "quants" if bits == 8 else "nibbles"
    dtype = np.dtype(np.int8 if bits == 8 else np.uint8)
    if version == 1:
        return {codes: (dtype, (out_dim, BLOCK if bits == 8 else BLOCK // 2, blocks)),
                "scales": (np.dtype(np.float16), (out_dim, n_groups))}
    row_groups = -(-out_dim // ROWS)
    return {codes: (dtype, (row_groups, blocks, bits * ROWS * 4)),
            "scales": (np.dtype(np.float16), (row_groups, n_groups, ROWS))}


def quantize(matrix: np.ndarray, bits: int, group_size: int, weights: np.ndarray | None = None) -> "QuantizedWeight":
    """Quantize a float matrix [out, in] to the symmetric group-wise format; `weights` [in] (>= 0)
    weight each input column's squared error in the scale fit (the mean square of its
    activations, from calibration text)."""
    matrix = np.asarray(matrix)
    out_dim, in_dim = _check_format(bits, group_size, matrix.shape)
    if not np.issubdtype(matrix.dtype, np.floating):
        raise TinyExaoneError(f"can only quantize a float matrix, got {matrix.dtype}")
    scales, codes = fit_scales(matrix, bits, group_size, weights)  # [N, G] float16, [N, K] int8
    return QuantizedWeight(bits, group_size, (out_dim, in_dim), _pack(codes.astype(np.int16), bits, scales))


def _pack(q: np.ndarray, bits: int, scales: np.ndarray) -> dict[str, np.ndarray]:
    """Stored arrays (module doc) from integer codes q [N, K] and scales [N, G] float16."""
    out_dim, in_dim = q.shape
    row_groups = -(-out_dim // ROWS)
    padded = np.zeros((row_groups * ROWS, in_dim), np.int16)
    padded[:out_dim] = q
    padded_scales = np.zeros((row_groups * ROWS, scales.shape[1]), np.float16)
    padded_scales[:out_dim] = scales
    blocks = padded.reshape(row_groups, ROWS, in_dim // BLOCK, BLOCK)  # [G8, r, B, 32]
    if bits == 8:
        name, chunked = "quants", blocks.astype(np.int8).reshape(row_groups, ROWS, -1, 8, 4)  # [G8, r, B, c, i]
    else:
        biased = (blocks + 8).astype(np.uint8)
        nibbles = biased[..., :16] | (biased[..., 16:] << 4)  # [G8, r, B, 16]
        name, chunked = "nibbles", nibbles.reshape(row_groups, ROWS, -1, 4, 4)  # [G8, r, B, c, i]
    codes = np.ascontiguousarray(chunked.transpose(0, 2, 3, 1, 4)).reshape(row_groups, in_dim // BLOCK, -1)
    scale_groups = np.ascontiguousarray(padded_scales.reshape(row_groups, ROWS, -1).transpose(0, 2, 1))
    return {name: codes, "scales": scale_groups}


def unpack_codes(codes: np.ndarray, rows) -> np.ndarray:
    """Integer codes [len(rows), K] (int16) of the selected rows of stored code arrays (the NumPy
    twin of the kernels' unpacking)."""
    rows = np.asarray(rows)
    row_groups, n_blocks, chunk_bytes = codes.shape
    lanes = codes[rows // ROWS].reshape(len(rows), n_blocks, -1, ROWS, 4)  # [R, B, c, r, i]
    picked = lanes[np.arange(len(rows)), :, :, rows % ROWS, :]  # [R, B, c, i]
    if codes.dtype == np.int8:
        blocks = picked.reshape(len(rows), n_blocks, BLOCK).astype(np.int16)  # [R, B, 32]
    else:
        packed = picked.reshape(len(rows), n_blocks, 16)  # [R, B, 16]
        blocks = np.concatenate([packed & 15, packed >> 4], axis=2).astype(np.int16) - 8  # [R, B, 32]
    return blocks.reshape(len(rows), -1)


def unpack_scales(scales: np.ndarray, rows) -> np.ndarray:
    """The scales [len(rows), G] of the selected rows from stored scales [G8, G, 8] (any dtype)."""
    rows = np.asarray(rows)
    return scales[rows // ROWS, :, rows % ROWS]


def from_version_1(bits: int, group_size: int, shape, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The arrays of this layout from those of a version 1 file (shapes checked; a new copy)."""
    check_arrays(bits, group_size, shape, arrays, version=1)
    if bits == 8:
        q = arrays["quants"].transpose(0, 2, 1).astype(np.int16)  # [N, B, 32]
    else:
        nibbles = arrays["nibbles"].transpose(0, 2, 1)  # [N, B, 16]
        q = np.concatenate([nibbles & 15, nibbles >> 4], axis=2).astype(np.int16) - 8  # [N, B, 32]
    return _pack(q.reshape(q.shape[0], -1), bits, arrays["scales"])


def check_arrays(bits: int, group_size: int, shape, arrays: dict[str, np.ndarray], version: int = 2) -> None:
    """Raise TinyExaoneError unless `arrays` has the names, dtypes, shapes and contiguity of the format."""
    expected = expected_arrays(bits, group_size, shape, version)
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
            raise TinyExaoneError(f"int{bits} weight array {name!r} has shape {array.shape}, expected {array_shape}")
        if not array.flags.c_contiguous:
            raise TinyExaoneError(f"int{bits} weight array {name!r} is not C-contiguous")


class QuantizedWeight:
    """A matrix [out, in] stored group-wise quantized; used as y = x @ W^T."""

    def __init__(self, bits: int, group_size: int, shape, arrays: dict[str, np.ndarray]):
        self.bits = bits
        self.group_size = group_size
        self.shape = (int(shape[0]), int(shape[1]))
        self.arrays = arrays
        # read-only views for the kernels: one compiled signature whether or not the file is a memmap
        self._codes = _read_only(arrays["quants"] if bits == 8 else arrays["nibbles"])  # [G8, B, 256 | 128]
        self._scale_bits = _read_only(arrays["scales"].view(np.uint16))  # [G8, G, 8]

    @classmethod
    def from_arrays(cls, bits: int, group_size: int, shape, arrays: dict[str, np.ndarray]) -> "QuantizedWeight":
        """Wrap stored arrays after checking names, dtypes, shapes and contiguity (no copy)."""
        check_arrays(bits, group_size, shape, arrays)
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
        codes = unpack_codes(self._codes, ids).astype(np.float32)  # [R, K]
        scales = unpack_scales(self.arrays["scales"], ids).astype(np.float32)  # [R, G]
        return (codes.reshape(len(ids), -1, self.group_size) * scales[:, :, None]).reshape(len(ids), -1)

    def matmul(self, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """x [T, in] float32 -> x @ W^T [T, out] float32, written into `out` when given."""
        n_out, n_in = self.shape
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != n_in:
            raise TinyExaoneError(f"matmul input must have shape [T, {n_in}], got {x.shape}")
        if out is None:
            out = np.empty((x.shape[0], n_out), np.float32)
        elif out.shape != (x.shape[0], n_out) or out.dtype != np.float32 or not out.flags.c_contiguous:
            raise TinyExaoneError(f"matmul output must be a C-contiguous float32 array of shape {(x.shape[0], n_out)}")
        return matmul_fused([self], x, [out])[0]


def _quantized_input(x: np.ndarray, serial: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x [T, K] float32 as the kernels' activation codes [T, B, 32], sums [T, B], scales [T, B]."""
    n_tokens, n_blocks = x.shape[0], x.shape[1] // BLOCK
    x_codes = np.empty((n_tokens, n_blocks, BLOCK), np.int8)
    x_sums = np.empty((n_tokens, n_blocks), np.int32)
    x_scales = np.empty((n_tokens, n_blocks), np.float32)
    (kernels.quantize_activations_serial if serial else kernels.quantize_activations)(x, x_codes, x_sums, x_scales)
    return x_codes, x_sums, x_scales


def matmul_fused(weights, x: np.ndarray, outs=None) -> list[np.ndarray]:
    """[w.matmul(x) for w in weights] for matrices sharing their input x [T, in] (q/k/v, gate/up),
    written into `outs` when given (validated by the caller).

    x is quantized once; QuantizedWeights of one width run as a single kernel launch: on the
    calling thread when the whole product is small (SERIAL_BELOW multiply-adds), else in
    parallel under COMPUTE_LOCK. Anything else falls back to one matmul per weight."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    first = weights[0]
    same_format = all(
        isinstance(w, QuantizedWeight) and w.bits == first.bits and w.shape[1] == first.shape[1] for w in weights
    )
    if not same_format or x.ndim != 2 or x.shape[1] != first.shape[1]:
        return [w.matmul(x) for w in weights]
    if outs is None:
        outs = [np.empty((x.shape[0], w.shape[0]), np.float32) for w in weights]
    if x.shape[0] * sum(w.shape[0] * w.shape[1] for w in weights) < kernels.SERIAL_BELOW:
        x_codes, x_sums, x_scales = _quantized_input(x, serial=True)
        for w, out in zip(weights, outs):
            kernels.matmul_serial(w._codes, w._scale_bits, x_codes, x_sums, x_scales, out)
        return list(outs)
    with kernels.COMPUTE_LOCK:
        x_codes, x_sums, x_scales = _quantized_input(x, serial=x.shape[0] < 4)
        if len(weights) == 1:
            kernels.matmul(first._codes, first._scale_bits, x_codes, x_sums, x_scales, outs[0],
                           kernels.chunk_count(first._codes.shape[0]))
        else:
            kernels.matmul_fused(tuple(w._codes for w in weights), tuple(w._scale_bits for w in weights), x_codes,
                                 x_sums, x_scales, tuple(outs), kernels.chunk_count(sum(w._codes.shape[0] for w in weights)))
    return list(outs)


def _read_only(array: np.ndarray) -> np.ndarray:
    view = array.view()
    view.flags.writeable = False
    return view
