"""Register-tiled vector IR for prefill attention's two products (layer_kernels.attention_prefill).

Contract: two Numba intrinsics over eight rows at a time, for head dimensions that are a multiple
of 16 (one vector of 16 float32), trusting their inputs like every kernel:
- `score_tile(q_rows, r0, keys, g, p0, n_vectors, scores, column0)`: scores[r0 + r, column0 + j]
  = q_rows[r0 + r] . key (p0 + j) of KV head g, for r < 8 and j < 16 n_vectors; q_rows [R, d]
  float32, keys the cache's key codes [KV, d, capacity] (float32, float16 bits as uint16, or q8
  int8 codes, whose scale the caller applies), scores [R, >= column0 + 16 n_vectors] float32,
  p0 + 16 n_vectors <= capacity.
- `value_tile(p_rows, r0, values, g, p0, n, out_rows)`: out_rows[r0 + r] = sum over j < n of
  p_rows[r0 + r, j] value (p0 + j) of KV head g, for r < 8; p_rows [R, >= n] float32, values the
  value codes [KV, capacity, d], out_rows [R, d] float32 (overwritten).
Eight rows (a GQA group's heads for one or more queries) share every key and value vector loaded
and converted: the scores keep 8 accumulators of 16 positions in registers across the whole dot
product, the values 8 accumulators of 16 dimensions across all positions, each step one fused
multiply-add (llvm.fma) per row, two vectors of positions (or dimensions) per step where there
are two: 16 accumulators, and a whole 64-byte line of float16 codes per row read at once. The
NumPy twin is model.attention over the decoded cache. Numba's on-disk cache checks only the
stamp of the file that defines a kernel (layer_kernels.py): after editing this IR in a checkout,
touch layer_kernels.py.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from .integer_dot import _call, _splat

ROWS = 8  # query rows per tile
WIDTH = 16  # float32 lanes per vector
F32, I32, I64 = ir.FloatType(), ir.IntType(32), ir.IntType(64)
FLOATS = ir.VectorType(F32, WIDTH)
CODE_TYPES = {types.float32: F32, types.uint16: ir.IntType(16), types.int8: ir.IntType(8)}


def _load_floats(builder, code_dtype, pointer):
    """WIDTH consecutive cache codes at `pointer` (an element pointer) as <16 x float>."""
    codes = builder.load(builder.bitcast(pointer, ir.VectorType(CODE_TYPES[code_dtype], WIDTH).as_pointer()), align=1)
    if code_dtype == types.float32:
        return codes
    if code_dtype == types.uint16:
        return builder.fpext(builder.bitcast(codes, ir.VectorType(ir.HalfType(), WIDTH)), FLOATS)
    return builder.sitofp(codes, FLOATS)


def _fma(builder, a, b, c):
    return _call(builder, "llvm.fma.v16f32", FLOATS, [a, b, c])


def _cache_array(array) -> bool:
    return isinstance(array, types.Array) and array.ndim == 3 and array.dtype in CODE_TYPES and array.layout == "C"


def _tile_loop(builder, count, step_body):
    """step_body(first, width) over count vectors: two at a time (one cache line of float16 codes
    per row or dimension, 16 accumulators), then one if count is odd."""
    two = ir.Constant(I64, 2)
    with cgutils.for_range(builder, builder.udiv(count, two)) as pairs:
        step_body(builder.mul(pairs.index, two), 2)
    with builder.if_then(builder.icmp_unsigned("!=", builder.urem(count, two), ir.Constant(I64, 0))):
        step_body(builder.sub(count, ir.Constant(I64, 1)), 1)


@intrinsic
def score_tile(typingctx, q_rows, r0, keys, g, p0, n_vectors, scores, column0):
    if not _cache_array(keys):
        return None
    signature = types.void(q_rows, types.intp, keys, types.intp, types.intp, types.intp, scores, types.intp)

    def codegen(context, builder, signature, args):
        t = signature.args
        q_array = context.make_array(t[0])(context, builder, args[0])
        key_array = context.make_array(t[2])(context, builder, args[2])
        score_array = context.make_array(t[6])(context, builder, args[6])
        r0, g, p0, n_vectors = args[1], args[3], args[4], args[5]
        d, capacity = cgutils.unpack_tuple(builder, key_array.shape, 3)[1:]
        score_stride = cgutils.unpack_tuple(builder, score_array.shape, 2)[1]
        key_base = builder.gep(key_array.data, [builder.add(builder.mul(builder.mul(g, d), capacity), p0)])
        q_base = builder.gep(q_array.data, [builder.mul(r0, d)])
        score_base = builder.gep(score_array.data, [builder.add(builder.mul(r0, score_stride), args[7])])

        def step(first, width):  # positions 16 first .. 16 (first + width) - 1 for the 8 rows
            columns = [builder.mul(builder.add(first, ir.Constant(I64, v)), ir.Constant(I64, WIDTH)) for v in range(width)]
            sums = [[cgutils.alloca_once_value(builder, ir.Constant(FLOATS, [0.0] * WIDTH)) for _ in range(width)]
                    for _ in range(ROWS)]
            with cgutils.for_range(builder, d) as dims:
                i = dims.index
                row = builder.gep(key_base, [builder.mul(i, capacity)])
                key = [_load_floats(builder, t[2].dtype, builder.gep(row, [column])) for column in columns]
                for r in range(ROWS):
                    q = _splat(builder, builder.load(builder.gep(q_base, [builder.add(builder.mul(ir.Constant(I64, r), d), i)])),
                               WIDTH)
                    for v in range(width):
                        builder.store(_fma(builder, q, key[v], builder.load(sums[r][v])), sums[r][v])
            for r in range(ROWS):
                for v in range(width):
                    at = builder.gep(score_base, [builder.add(builder.mul(ir.Constant(I64, r), score_stride), columns[v])])
                    builder.store(builder.load(sums[r][v]), builder.bitcast(at, FLOATS.as_pointer()), align=4)

        _tile_loop(builder, n_vectors, step)
        return context.get_dummy_value()

    return signature, codegen


@intrinsic
def value_tile(typingctx, p_rows, r0, values, g, p0, n, out_rows):
    if not _cache_array(values):
        return None
    signature = types.void(p_rows, types.intp, values, types.intp, types.intp, types.intp, out_rows)

    def codegen(context, builder, signature, args):
        t = signature.args
        p_array = context.make_array(t[0])(context, builder, args[0])
        value_array = context.make_array(t[2])(context, builder, args[2])
        out_array = context.make_array(t[6])(context, builder, args[6])
        r0, g, p0, n = args[1], args[3], args[4], args[5]
        capacity, d = cgutils.unpack_tuple(builder, value_array.shape, 3)[1:]
        p_stride = cgutils.unpack_tuple(builder, p_array.shape, 2)[1]
        value_base = builder.gep(value_array.data, [builder.mul(builder.add(builder.mul(g, capacity), p0), d)])
        p_base = builder.gep(p_array.data, [builder.mul(r0, p_stride)])
        out_base = builder.gep(out_array.data, [builder.mul(r0, d)])

        def step(first, width):  # dimensions 16 first .. 16 (first + width) - 1 for the 8 rows
            columns = [builder.mul(builder.add(first, ir.Constant(I64, c)), ir.Constant(I64, WIDTH)) for c in range(width)]
            sums = [[cgutils.alloca_once_value(builder, ir.Constant(FLOATS, [0.0] * WIDTH)) for _ in range(width)]
                    for _ in range(ROWS)]
            with cgutils.for_range(builder, n) as positions:
                j = positions.index
                row = builder.gep(value_base, [builder.mul(j, d)])
                value = [_load_floats(builder, t[2].dtype, builder.gep(row, [column])) for column in columns]
                for r in range(ROWS):
                    p = _splat(builder, builder.load(builder.gep(p_base, [builder.add(builder.mul(ir.Constant(I64, r), p_stride), j)])),
                               WIDTH)
                    for c in range(width):
                        builder.store(_fma(builder, p, value[c], builder.load(sums[r][c])), sums[r][c])
            for r in range(ROWS):
                for c in range(width):
                    at = builder.gep(out_base, [builder.add(builder.mul(ir.Constant(I64, r), d), columns[c])])
                    builder.store(builder.load(sums[r][c]), builder.bitcast(at, FLOATS.as_pointer()), align=4)

        _tile_loop(builder, builder.udiv(d, ir.Constant(I64, WIDTH)), step)
        return context.get_dummy_value()

    return signature, codegen
