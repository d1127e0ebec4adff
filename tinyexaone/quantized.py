"""Group-wise quantized matrices (int8, int6, int4, the affine int4k and int6k) and their exact storage layout.

A `QuantizedWeight` stands in for `DenseWeight`: it has `shape` ([out, in]), `matmul(x)`
(x [T, in] float32 -> x @ W^T [T, out] float32) and `rows(ids)` (dequantized W[ids]).
`quantize(matrix, bits, group_size, weights=None, affine=False)` is the quantizer; `from_arrays`
rebuilds a weight from stored arrays (possibly read-only memory maps, never copied or written)
after validating them, because the Numba kernels trust their inputs. `scheme` is the compact
file's name of the kind ("int8", "int6", "int4", "int4k", "int6k"). `affine=True` selects the
two super-block kinds of 256 elements, int4k (bits 4) and int6k (bits 6; symmetric, not affine:
the flag names the super-block form both share).

Symmetric scheme (int4, int6, int8): one float16 scale per group of `group_size` consecutive input
elements of a row: w[n, k] ~= q[n, k] * scale[n, k // group_size], with q in [-8, 7] (int4),
[-32, 31] (int6) or [-128, 127] (int8). The codes are the absmax codes: q = clip(rint(w / s0)) (ties to even) for
the signed absmax scale s0, whose sign puts the group's largest-magnitude element towards the
wider negative end (-8 / -32 / -128) and whose magnitude is the smallest float16 for which every
element rounds with error at most |s0| / 2; the stored scale is the float16 least-squares scale
of those codes (weighted per input column by `weights` when given: calibration), or s0 where that
is not more accurate (scale_fit.py). An all-zero group has scale 0.

Affine scheme int4k (`affine=True`, bits 4, group_size 32, K a multiple of 256; llama.cpp's
Q4_K at its 4.5 bits per weight): in super-block s of 256 elements, block j (of 32) is
w ~= d[n, s] * sc[n, b] * q - dmin[n, s] * m[n, b] with b = 8 s + j, codes q in 0..15, 6-bit sc
and m, float16 d and dmin (affine_fit.py chooses them).

Super-block scheme int6k (`affine=True`, bits 6, group_size 32, K a multiple of 256; llama.cpp's
Q6_K at its 6.5625 bits per weight): w ~= d[n, s] * sub[n, k // 16] * q[n, k], codes q in
-32..31 stored as int6's, one int8 sub-scale per 16 elements and a float16 d per 256
(scale_fit.fit_sub_scales chooses them).

Layout (compact format version 2; int4k: version 3). Let N = out, K = in (a multiple of group_size, itself 32, 64
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
- int6, arrays {"codes": uint8 [G8, B, 192], "scales": float16 [G8, K / group_size, 8]}: with
  u = q + 32 (0..63), codes[g, b, :128] are int4's nibble array of the low 4 bits of u (u & 15
  where int4 has q + 8), and codes[g, b, 128 + 32 h + 4 r + i] holds the high 2 bits of u of
  elements 16 h + 4 j + i of block b of row 8 g + r at bits 2 j, 2 j + 1 (j in 0..3): the 2-bit
  plane of half h (elements 0..15, 16..31) in the chunk order of the nibbles, so the code of
  elements 4 c + i is (nibble chunk c & 15) | ((plane chunk 0 >> 2 c) & 3) << 4 and that of
  16 + 4 c + i is (nibble chunk c >> 4) | ((plane chunk 1 >> 2 c) & 3) << 4. 6 bytes per row per
  block, one 192-byte run of six 32-byte chunks per block of a row group.
- scales[g, j, r] = the scale of elements j * group_size ... (j + 1) * group_size - 1 of row 8 g + r.
- int4k, arrays {"nibbles": uint8 [G8, B, 128] as int4's but holding q itself (0..15), "scales":
  uint8 [G8, K / 256, 128]}: per row group and super-block s, bytes 0..15 are d of rows 0..7
  (float16, little-endian), bytes 16..31 dmin, and bytes 32 + 12 j .. 43 + 12 j three
  little-endian uint32 words for block j of the super-block: word 0 holds the low 4 bits of
  sc[8 g + r, 8 s + j] at bits 4 r, word 1 those of m, word 2 the high 2 bits of sc at bits 2 r
  and of m at bits 16 + 2 r. 144 bytes per row per super-block, as Q4_K.
- int6k, arrays {"codes": uint8 [G8, B, 192] as int6's, "scales": uint8 [G8, K / 256, 144]}: per
  row group and super-block s, bytes 0..15 are d of rows 0..7 (float16), and byte
  16 + 16 j + 8 h + r is sub[8 g + r, 16 (8 s + j) / 16 + h] as int8: block j's two halves h
  (elements 0..15, 16..31). 210 bytes per row per super-block, as Q6_K.

Every array is C-contiguous, little-endian. Bits per weight: 8 + 16/group_size (int8),
6 + 16/group_size (int6) and 4 + 16/group_size (int4), e.g. 4.5 for int4 g32, 6.5 for int6 g32;
4.5 for int4k, 6.5625 for int6k. int6, int4k and int6k exist from compact format version 3 on. Version 1 files stored each row on its own,
element e of every block contiguous (quants [N, 32, B], nibbles [N, 16, B] with element j in the
low and j + 16 in the high nibble, scales [N, K / group_size]); `from_version_1` repacks such
arrays into this layout in memory when an old file is loaded.

Why int4k quantizes its scales and minimums to 6 bits under a float16 pair per 256: a float16
scale and minimum per 32 would cost 5.0 bits per weight; at 4.5 the 6-bit codes keep most of
affine's gain (Gaussian weights: symmetric g32 0.0838, int4k 0.0712 relative error, Q4_K 0.0713).
The symmetric kinds stay for input sizes that are not multiples of 256 (the demo model's 192).
The kernels' integer part is the same for int4 and int4k; only the per-block float step differs
(integer_dot.py).

`matmul` enters the Numba kernels (kernels.py) under `kernels.COMPUTE_LOCK`, so calls from
several Python threads are serialised (Numba's workqueue layer aborts on concurrent use).
`matmul_fused` runs matrices that share one decode input (q/k/v, gate/up) in one launch per kind;
`FusedMatmul` is the same planned once, for decode.
"""

from __future__ import annotations

import numpy as np

from . import amx, kernels
from .affine_fit import SUPER_BLOCK, fit_affine
from .integer_dot import ROWS
from .errors import TinyExaoneError
from .scale_fit import fit_scales, fit_sub_scales

BLOCK = 32  # elements per stored block; every group size is a multiple of it
GROUP_SIZES = (32, 64, 128)
BITS = (4, 6, 8)
SCHEMES = {"int8": (8, False), "int6": (6, False), "int4": (4, False), "int4k": (4, True),
           "int6k": (6, True)}  # file scheme name -> (bits, affine: the super-block kinds)
CODE_ARRAYS = {8: "quants", 6: "codes", 4: "nibbles"}  # bits -> name of the stored code array
CODE_BYTES = {8: 256, 6: 192, 4: 128}  # bytes of codes per block of a row group (32 elements x 8 rows)
AFFINE_HEADER = 32  # bytes of d and dmin (8 rows x float16 each) before the sub-scale codes of a super-block
AFFINE_SUB_BYTES = 12  # bytes of 6-bit scale and minimum codes per block of a row group
SUB6_HEADER = 16  # int6k: bytes of d (8 rows x float16) before the sub-scales of a super-block
SUB6_BLOCK_BYTES = 16  # int6k: int8 sub-scales per block of a row group (2 halves x 8 rows)


def scheme_name(bits: int, affine: bool = False) -> str:
    """The compact file's scheme name of a weight format ("int4", "int6", "int8", "int4k")."""
    return f"int{bits}k" if affine else f"int{bits}"


def _check_format(bits: int, group_size: int, shape, affine: bool = False) -> tuple[int, int]:
    if bits not in BITS:
        raise TinyExaoneError(f"quantized weights must have 4, 6 or 8 bits, got {bits}")
    if group_size not in GROUP_SIZES:
        raise TinyExaoneError(f"group size must be one of {GROUP_SIZES}, got {group_size}")
    if len(shape) != 2 or any(not isinstance(d, (int, np.integer)) or d < 1 for d in shape):
        raise TinyExaoneError(f"a quantized matrix needs a 2-D shape of positive sizes, got {tuple(shape)}")
    out_dim, in_dim = int(shape[0]), int(shape[1])
    if in_dim % group_size:
        raise TinyExaoneError(f"input size {in_dim} is not a multiple of the group size {group_size}")
    if affine and (bits not in (4, 6) or group_size != BLOCK or in_dim % SUPER_BLOCK):
        raise TinyExaoneError(f"int4k and int6k need 4 or 6 bits, blocks of {BLOCK} and an input size that is a "
                              f"multiple of {SUPER_BLOCK}, got int{bits} g{group_size} with input size {in_dim}")
    return out_dim, in_dim


def expected_arrays(bits: int, group_size: int, shape, version: int = 2,
                    affine: bool = False) -> dict[str, tuple[np.dtype, tuple[int, ...]]]:
    """The array names, dtypes and shapes a weight of this format must have (in a compact file
    of `version` 2 or 3, or 1: see the module doc)."""
    out_dim, in_dim = _check_format(bits, group_size, shape, affine)
    blocks, n_groups = in_dim // BLOCK, in_dim // group_size
    if affine:
        if version == 1:
            raise TinyExaoneError(f"int{bits}k weights do not exist in compact format version 1")
        row_groups = -(-out_dim // ROWS)
        if bits == 6:
            return {"codes": (np.dtype(np.uint8), (row_groups, blocks, CODE_BYTES[6])),
                    "scales": (np.dtype(np.uint8), (row_groups, in_dim // SUPER_BLOCK, SUB6_HEADER + 8 * SUB6_BLOCK_BYTES))}
        return {"nibbles": (np.dtype(np.uint8), (row_groups, blocks, 4 * ROWS * 4)),
                "scales": (np.dtype(np.uint8), (row_groups, in_dim // SUPER_BLOCK, AFFINE_HEADER + 8 * AFFINE_SUB_BYTES))}
    codes = CODE_ARRAYS[bits]
    dtype = np.dtype(np.int8 if bits == 8 else np.uint8)
    if version == 1:
        if bits == 6:
            raise TinyExaoneError("int6 weights do not exist in compact format version 1")
        return {codes: (dtype, (out_dim, BLOCK if bits == 8 else BLOCK // 2, blocks)),
                "scales": (np.dtype(np.float16), (out_dim, n_groups))}
    row_groups = -(-out_dim // ROWS)
    return {codes: (dtype, (row_groups, blocks, CODE_BYTES[bits])),
            "scales": (np.dtype(np.float16), (row_groups, n_groups, ROWS))}


def quantize(matrix: np.ndarray, bits: int, group_size: int, weights: np.ndarray | None = None,
             affine: bool = False) -> "QuantizedWeight":
    """Quantize a float matrix [out, in] to the symmetric group-wise format (int4, int6, int8), or with `affine` to
    int4k (bits 4, group_size 32); `weights` [in] (>= 0) weight each input column's squared error
    in the fit (the mean square of its activations, from calibration text)."""
    matrix = np.asarray(matrix)
    out_dim, in_dim = _check_format(bits, group_size, matrix.shape, affine)
    if not np.issubdtype(matrix.dtype, np.floating):
        raise TinyExaoneError(f"can only quantize a float matrix, got {matrix.dtype}")
    if affine and bits == 6:
        arrays = _pack_sub_scaled(*fit_sub_scales(matrix, weights))
        return QuantizedWeight(bits, group_size, (out_dim, in_dim), arrays, affine=True)
    if affine:
        arrays = _pack_affine(*fit_affine(matrix, weights))
        return QuantizedWeight(bits, group_size, (out_dim, in_dim), arrays, affine=True)
    scales, codes = fit_scales(matrix, bits, group_size, weights)  # [N, G] float16, [N, K] int8
    return QuantizedWeight(bits, group_size, (out_dim, in_dim), _pack(codes.astype(np.int16), bits, scales))


def _pack_affine(codes: np.ndarray, d: np.ndarray, dmin: np.ndarray, sc: np.ndarray,
                 mc: np.ndarray) -> dict[str, np.ndarray]:
    """Stored int4k arrays (module doc) from codes [N, K] 0..15, d and dmin float16 [N, S] and the
    6-bit codes sc, mc [N, B] (affine_fit.py)."""
    out_dim = codes.shape[0]
    row_groups = -(-out_dim // ROWS)
    padded = lambda a: np.concatenate([a, np.zeros((row_groups * ROWS - out_dim,) + a.shape[1:], a.dtype)])  # noqa: E731
    nibbles = _pack_codes(padded(codes).astype(np.int16) - 8, 4)
    n_super = d.shape[1]
    lanes = lambda a: padded(a).reshape(row_groups, ROWS, n_super, -1).transpose(0, 2, 3, 1)  # [G8, S, ..., r]  # noqa: E731
    sc_lanes, mc_lanes = lanes(sc).astype(np.uint32), lanes(mc).astype(np.uint32)  # [G8, S, 8 blocks, r]
    shift4, shift2 = 4 * np.arange(ROWS, dtype=np.uint32), 2 * np.arange(ROWS, dtype=np.uint32)
    words = np.stack([((sc_lanes & 15) << shift4).sum(axis=-1), ((mc_lanes & 15) << shift4).sum(axis=-1),
                      ((sc_lanes >> 4) << shift2).sum(axis=-1) | ((mc_lanes >> 4) << (shift2 + 16)).sum(axis=-1)],
                     axis=-1).astype("<u4")  # [G8, S, 8 blocks, 3]
    halves = [np.ascontiguousarray(lanes(h[:, :, None])[:, :, 0]).view(np.uint8) for h in (d, dmin)]  # [G8, S, 16]
    scales = np.concatenate(halves + [words.view(np.uint8).reshape(row_groups, n_super, -1)], axis=2)
    return {"nibbles": nibbles, "scales": np.ascontiguousarray(scales)}


def _pack_sub_scaled(codes: np.ndarray, d: np.ndarray, sub: np.ndarray) -> dict[str, np.ndarray]:
    """Stored int6k arrays (module doc) from codes [N, K] -32..31, d float16 [N, S] and the int8
    sub-scales [N, K / 16] (scale_fit.fit_sub_scales)."""
    out_dim, n_super = d.shape
    row_groups = -(-out_dim // ROWS)
    padded = lambda a: np.concatenate([a, np.zeros((row_groups * ROWS - out_dim,) + a.shape[1:], a.dtype)])  # noqa: E731
    halves = np.ascontiguousarray(padded(d).reshape(row_groups, ROWS, n_super).transpose(0, 2, 1)).view(np.uint8)  # [G8, S, 16]
    subs = padded(sub).reshape(row_groups, ROWS, n_super, 8, 2).transpose(0, 2, 3, 4, 1)  # [G8, S, j, h, r]
    scales = np.concatenate([halves, subs.reshape(row_groups, n_super, -1).view(np.uint8)], axis=2)
    return {"codes": _pack_codes(codes.astype(np.int16), 6), "scales": np.ascontiguousarray(scales)}


def unpack_sub_scales(scales: np.ndarray, rows) -> np.ndarray:
    """The steps d * sub float32 [len(rows), K / 16] of the selected rows from stored int6k scales
    [G8, S, 144] (the kernels' float32 products): w = step * q per 16 elements."""
    rows = np.asarray(rows)
    picked = scales[rows // ROWS]  # [R, S, 144]
    lane, picks = rows % ROWS, np.arange(len(rows))
    d = picked[:, :, :SUB6_HEADER].copy().view(np.float16)[picks, :, lane]  # [R, S]
    subs = picked[:, :, SUB6_HEADER:].view(np.int8).reshape(len(rows), -1, 8, 2, ROWS)[picks, :, :, :, lane]  # [R, S, j, h]
    return (d.astype(np.float32)[:, :, None, None] * subs.astype(np.float32)).reshape(len(rows), -1)


def unpack_affine(scales: np.ndarray, rows) -> tuple[np.ndarray, np.ndarray]:
    """(d sc, dmin m) float32 [len(rows), B] of the selected rows from stored int4k scales
    [G8, S, 128]: each block's step and offset, w = step * q - offset (the kernels' float32 products)."""
    rows = np.asarray(rows)
    picked = scales[rows // ROWS]  # [R, S, 128]
    lane, picks = rows % ROWS, np.arange(len(rows))
    d = picked[:, :, :16].copy().view(np.float16)[picks, :, lane]  # [R, S]
    dmin = picked[:, :, 16:32].copy().view(np.float16)[picks, :, lane]
    words = picked[:, :, AFFINE_HEADER:].copy().view("<u4").reshape(len(rows), -1, 8, 3).astype(np.int64)  # [R, S, 8, 3]
    r = lane[:, None, None]
    sc = ((words[..., 0] >> (4 * r)) & 15) | (((words[..., 2] >> (2 * r)) & 3) << 4)  # [R, S, 8]
    mc = ((words[..., 1] >> (4 * r)) & 15) | (((words[..., 2] >> (2 * r + 16)) & 3) << 4)
    steps = d.astype(np.float32)[:, :, None] * sc.astype(np.float32)
    offsets = dmin.astype(np.float32)[:, :, None] * mc.astype(np.float32)
    return steps.reshape(len(rows), -1), offsets.reshape(len(rows), -1)


def _pack_codes(q: np.ndarray, bits: int) -> np.ndarray:
    """The stored code array (quants or nibbles, module doc) of integer codes q [N, K]."""
    out_dim, in_dim = q.shape
    row_groups = -(-out_dim // ROWS)
    padded = np.zeros((row_groups * ROWS, in_dim), np.int16)
    padded[:out_dim] = q
    blocks = padded.reshape(row_groups, ROWS, in_dim // BLOCK, BLOCK)  # [G8, r, B, 32]
    if bits == 8:
        chunked = blocks.astype(np.int8).reshape(row_groups, ROWS, -1, 8, 4)  # [G8, r, B, c, i]
    else:
        biased = (blocks + (8 if bits == 4 else 32)).astype(np.uint8)  # 0..15 | 0..63
        low = biased & 15
        nibbles = low[..., :16] | (low[..., 16:] << 4)  # [G8, r, B, 16]
        chunked = nibbles.reshape(row_groups, ROWS, -1, 4, 4)  # [G8, r, B, c, i]
        if bits == 6:  # the 2-bit plane: per half h, element 16 h + 4 j + i at bits 2 j of byte (h, r, i)
            highs = (biased >> 4).reshape(row_groups, ROWS, -1, 2, 4, 4)  # [G8, r, B, h, j, i]
            shifts = (2 * np.arange(4, dtype=np.uint8))[:, None]  # [j, 1]
            plane = np.bitwise_or.reduce(highs << shifts, axis=4)  # [G8, r, B, h, i]
            chunked = np.concatenate([chunked, plane], axis=3)  # [G8, r, B, 6 chunks, i]
    return np.ascontiguousarray(chunked.transpose(0, 2, 3, 1, 4)).reshape(row_groups, in_dim // BLOCK, -1)


def _pack(q: np.ndarray, bits: int, scales: np.ndarray) -> dict[str, np.ndarray]:
    """Stored arrays (module doc) from integer codes q [N, K] and scales [N, G] float16."""
    row_groups = -(-q.shape[0] // ROWS)
    padded_scales = np.zeros((row_groups * ROWS, scales.shape[1]), np.float16)
    padded_scales[:q.shape[0]] = scales
    scale_groups = np.ascontiguousarray(padded_scales.reshape(row_groups, ROWS, -1).transpose(0, 2, 1))
    return {CODE_ARRAYS[bits]: _pack_codes(q, bits), "scales": scale_groups}


def unpack_codes(codes: np.ndarray, rows, affine: bool = False) -> np.ndarray:
    """Integer codes [len(rows), K] (int16) of the selected rows of stored code arrays [G8, B, bytes]
    (or int6's kernel view [G8, B, 6, 32]; the NumPy twin of the kernels' unpacking): int8 as
    they are, int6 as the 6-bit codes less 32, int4 nibbles less 8, or with `affine` (int4k) as they are."""
    rows = np.asarray(rows)
    codes = codes.reshape(codes.shape[0], codes.shape[1], -1)
    row_groups, n_blocks, chunk_bytes = codes.shape
    lanes = codes[rows // ROWS].reshape(len(rows), n_blocks, -1, ROWS, 4)  # [R, B, c, r, i]
    picked = lanes[np.arange(len(rows)), :, :, rows % ROWS, :]  # [R, B, c, i]
    if codes.dtype == np.int8:
        blocks = picked.reshape(len(rows), n_blocks, BLOCK).astype(np.int16)  # [R, B, 32]
    elif chunk_bytes == CODE_BYTES[6]:
        packed = picked[:, :, :4].reshape(len(rows), n_blocks, 16)  # [R, B, 16] nibbles
        plane = picked[:, :, 4:].astype(np.int16)  # [R, B, h, i]
        highs = (plane[:, :, :, None, :] >> (2 * np.arange(4))[:, None]) & 3  # [R, B, h, j, i]
        low = np.concatenate([packed & 15, packed >> 4], axis=2).astype(np.int16)  # [R, B, 32]
        blocks = low + (highs.reshape(len(rows), n_blocks, BLOCK) << 4) - 32  # [R, B, 32]
    else:
        packed = picked.reshape(len(rows), n_blocks, 16)  # [R, B, 16]
        blocks = np.concatenate([packed & 15, packed >> 4], axis=2).astype(np.int16) - (0 if affine else 8)  # [R, B, 32]
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


def check_arrays(bits: int, group_size: int, shape, arrays: dict[str, np.ndarray], version: int = 2,
                 affine: bool = False) -> None:
    """Raise TinyExaoneError unless `arrays` has the names, dtypes, shapes and contiguity of the format."""
    expected = expected_arrays(bits, group_size, shape, version, affine)
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

    def __init__(self, bits: int, group_size: int, shape, arrays: dict[str, np.ndarray], affine: bool = False):
        self.bits = bits
        self.group_size = group_size
        self.affine = affine
        self.shape = (int(shape[0]), int(shape[1]))
        self.arrays = arrays
        # read-only views for the kernels: one compiled signature whether or not the file is a memmap
        codes = arrays[CODE_ARRAYS[bits]]  # [G8, B, 256 | 192 | 128]
        if bits == 6:  # the kernels tell int6 by its 4-D view: six 32-byte chunks per block
            codes = codes.reshape(codes.shape[0], codes.shape[1], 6, 32)
        self._codes = _read_only(codes)  # [G8, B, 256 | 128] or [G8, B, 6, 32]
        # symmetric: the float16 scales' bits [G8, G, 8] uint16; int4k: the scale bytes [G8, S, 128] uint8
        self._scale_bits = _read_only(arrays["scales"] if affine else arrays["scales"].view(np.uint16))

    @classmethod
    def from_arrays(cls, bits: int, group_size: int, shape, arrays: dict[str, np.ndarray],
                    affine: bool = False) -> "QuantizedWeight":
        """Wrap stored arrays after checking names, dtypes, shapes and contiguity (no copy)."""
        check_arrays(bits, group_size, shape, arrays, affine=affine)
        return cls(bits, group_size, shape, dict(arrays), affine)

    @property
    def scheme(self) -> str:
        return scheme_name(self.bits, self.affine)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays.values())

    def dequantize(self) -> np.ndarray:
        """The float32 matrix [out, in] this weight represents (NumPy)."""
        return self.rows(np.arange(self.shape[0]))

    def rows(self, ids) -> np.ndarray:
        """Dequantized rows W[ids] as float32 [len(ids), in] (embedding lookup, NumPy)."""
        ids = np.asarray(ids)
        codes = unpack_codes(self._codes, ids, self.affine).astype(np.float32)  # [R, K]
        if self.affine and self.bits == 6:
            steps = unpack_sub_scales(self.arrays["scales"], ids)  # [R, K / 16]
            return (codes.reshape(len(ids), -1, 16) * steps[:, :, None]).reshape(len(ids), -1)
        if self.affine:
            steps, offsets = unpack_affine(self.arrays["scales"], ids)  # [R, B] each
            blocks = codes.reshape(len(ids), -1, BLOCK) * steps[:, :, None] - offsets[:, :, None]  # [R, B, 32]
            return blocks.reshape(len(ids), -1)
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


def activation_buffers(n_tokens: int, n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Empty buffers for x [n_tokens, n_in] quantized as the kernels read it: codes [T, B, 32]
    int8, code sums [T, B] int32, scales [T, B] float32 (B = n_in / 32 blocks)."""
    n_blocks = n_in // BLOCK
    return (np.empty((n_tokens, n_blocks, BLOCK), np.int8), np.empty((n_tokens, n_blocks), np.int32),
            np.empty((n_tokens, n_blocks), np.float32))


def _quantized_input(x: np.ndarray, serial: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x [T, K] float32 as the kernels' activation codes [T, B, 32], sums [T, B], scales [T, B]."""
    inputs = activation_buffers(x.shape[0], x.shape[1])
    (kernels.quantize_activations_serial if serial else kernels.quantize_activations)(x, *inputs)
    return inputs


class FusedMatmul:
    """x @ W_m^T for QuantizedWeights W_m of one input width that share their input (q/k/v,
    gate/up), planned once: the weights are grouped by kind (bits, affine) and each group runs
    as a single kernel launch (the recipe's int4k q_proj beside int6k k/v_proj makes two), on the
    calling thread when the whole product is small (SERIAL_BELOW multiply-adds), else in
    parallel under COMPUTE_LOCK. `plan(x, outs, inputs)` trusts its caller: x [T, in] float32
    and C-contiguous, outs one C-contiguous float32 [T, out_m] per weight, inputs
    `activation_buffers(T, in)`; it writes outs (and inputs) and returns outs. Decode keeps one
    plan per layer matrix set and reuses its buffers, so a token costs no Python beyond the calls."""

    def __init__(self, weights):
        weights = tuple(weights)
        if not weights or not all(isinstance(w, QuantizedWeight) and w.shape[1] == weights[0].shape[1] for w in weights):
            raise TinyExaoneError("FusedMatmul needs quantized weights of one input width")
        self.weights = weights
        self.n_in = weights[0].shape[1]
        self.multiply_adds = sum(w.shape[0] * w.shape[1] for w in weights)  # per token
        kinds: dict[tuple, list[int]] = {}  # (bits, affine) -> indices of the weights of that kind, in order
        for i, w in enumerate(weights):
            kinds.setdefault((w.bits, w.affine), []).append(i)
        self.groups = [(tuple(group), tuple(weights[i]._codes for i in group), tuple(weights[i]._scale_bits for i in group),
                        kernels.chunk_count(sum(weights[i]._codes.shape[0] for i in group))) for group in kinds.values()]

    def __call__(self, x: np.ndarray, outs, inputs):
        n_tokens = x.shape[0]
        if n_tokens * self.multiply_adds < kernels.SERIAL_BELOW:
            kernels.quantize_activations_serial(x, *inputs)
            for w, out in zip(self.weights, outs):
                kernels.matmul_serial(w._codes, w._scale_bits, *inputs, out)
            return outs
        if n_tokens >= amx.TILE_TOKENS and amx.prefill_path() == "amx":
            return self._on_tiles(x, outs)
        with kernels.COMPUTE_LOCK:
            (kernels.quantize_activations_serial if n_tokens < 4 else kernels.quantize_activations)(x, *inputs)
            for group, codes, scale_bits, n_chunks in self.groups:
                if len(group) == 1:
                    kernels.matmul(codes[0], scale_bits[0], *inputs, outs[group[0]], n_chunks)
                else:
                    kernels.matmul_fused(codes, scale_bits, *inputs, tuple(outs[i] for i in group), n_chunks)
        return outs

    def _on_tiles(self, x: np.ndarray, outs):
        """Prefill on AMX tiles (amx.py): x quantized into buffers padded with zero rows to a
        multiple of the 16-token tile, then one launch per weight."""
        n_tokens = x.shape[0]
        padded = -(-n_tokens // amx.TILE_TOKENS) * amx.TILE_TOKENS
        inputs = activation_buffers(padded, self.n_in)
        for array in inputs:
            array[n_tokens:] = 0
        with kernels.COMPUTE_LOCK:
            kernels.quantize_activations(x, *(array[:n_tokens] for array in inputs))
            for w, out in zip(self.weights, outs):
                amx.matmul_amx(w._codes, w._scale_bits, *inputs, out, kernels.chunk_count((w._codes.shape[0] + 1) // 2))
        return outs


class EachMatmul:
    """`FusedMatmul`'s calling convention for weights it cannot take (float or bf16): one
    `w.matmul(x)` per weight, copied into outs; `inputs` is not used."""

    def __init__(self, weights):
        self.weights = tuple(weights)

    def __call__(self, x: np.ndarray, outs, inputs):
        for w, out in zip(self.weights, outs):
            out[:] = w.matmul(x)
        return outs


def plan_matmuls(weights) -> FusedMatmul | EachMatmul:
    """A FusedMatmul for quantized weights of one input width, else an EachMatmul."""
    weights = tuple(weights)
    if all(isinstance(w, QuantizedWeight) and w.shape[1] == weights[0].shape[1] for w in weights):
        return FusedMatmul(weights)
    return EachMatmul(weights)


def matmul_fused(weights, x: np.ndarray, outs=None) -> list[np.ndarray]:
    """[w.matmul(x) for w in weights] for matrices sharing their input x [T, in] (q/k/v, gate/up),
    written into `outs` when given (validated by the caller): a `FusedMatmul` when all are
    QuantizedWeights of x's width, else one matmul per weight."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    first = weights[0]
    quantized = all(isinstance(w, QuantizedWeight) and w.shape[1] == first.shape[1] for w in weights)
    if not quantized or x.ndim != 2 or x.shape[1] != first.shape[1]:
        return [w.matmul(x) for w in weights]
    if outs is None:
        outs = [np.empty((x.shape[0], w.shape[0]), np.float32) for w in weights]
    return list(FusedMatmul(weights)(x, outs, activation_buffers(x.shape[0], x.shape[1])))


def _read_only(array: np.ndarray) -> np.ndarray:
    view = array.view()
    view.flags.writeable = False
    return view
