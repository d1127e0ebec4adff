"""Explicit LLVM vector IR for the integer dot products of the decode kernels (kernels.py).

Contract: `q4_lanes_dot` / `q8_lanes_dot` are Numba intrinsics that return, as a float32, the
scaled dot product of one weight row with the quantized activation over one vector step of
blocks (Q4_LANES = 32 blocks for int4, LANES = 16 for int8), reading the layouts documented in
quantized.py and the activation layouts written by kernels._q4_prepare / kernels._q8_prepare.
They trust their inputs: the step must lie inside the row, and `per_group` (blocks per weight
scale) must be 1, 2 or 4. The IR is generic vector operations (portable: 16-bit multiply-adds,
blocks in order), except that on AVX2 the pair products use x86's vpmaddubsw (int4) and
vpmaddwd (int8) (`integer_dot_path`), which LLVM does not form from generic IR. Both prefetch
the same bytes of the next row. Their NumPy twins are kernels.q4_matvec_numpy / q8_matvec_numpy.
"""

from __future__ import annotations

import os

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

LANES = 16  # blocks per int8 step (vectors of 16 x i16), and the width of every lane-sum vector


def _item_pointer(context, builder, array_type, array, indices, element):
    """Pointer to array[indices] reinterpreted as a pointer to `element` (an LLVM type)."""
    pointer = cgutils.get_item_pointer(context, builder, array_type, array, indices)
    return builder.bitcast(pointer, element.as_pointer())


def _int_constants(bits, values):
    return ir.Constant(ir.VectorType(ir.IntType(bits), len(values)), list(values))


def _lane_values(context, builder, array_type, array, first, lane_blocks):
    """Float vector: array[first + b] for each b of lane_blocks (float32 per-block values)."""
    span = max(lane_blocks) + 1
    loaded = builder.load(_item_pointer(context, builder, array_type, array, [first], ir.VectorType(ir.FloatType(), span)), align=4)
    return builder.shuffle_vector(loaded, loaded, _int_constants(32, lane_blocks))


def _scaled_lanes(context, builder, lane_sums, lane_blocks, x_scales, offsets, scale_bits, n, first, per_group):
    """Float vector, per lane: (lane_sums - offset) * activation scale * weight scale of block
    first + lane_blocks[lane]. x_scales / offsets are (array type, array) pairs of float32 [B]
    (offsets may be None); the weight scales are the float16 scales of row n, one per per_group
    blocks."""
    values = builder.sitofp(lane_sums, ir.VectorType(ir.FloatType(), len(lane_blocks)))
    if offsets is not None:
        values = builder.fsub(values, _lane_values(context, builder, *offsets, first, lane_blocks))
    values = builder.fmul(values, _lane_values(context, builder, *x_scales, first, lane_blocks))
    return builder.fmul(values, _weight_scales(context, builder, scale_bits, n, first, lane_blocks, per_group))


def _weight_scales(context, builder, scale_bits, n, first, lane_blocks, per_group):
    """Float vector: the float16 scale of row n for block first + b, b in lane_blocks, where a
    scale covers per_group (1, 2 or 4: a runtime i64) blocks. One branch per group size around
    the small load, so the large dot product before it is compiled once, not three times."""
    scale_bits_type, scale_bits_array = scale_bits
    result = cgutils.alloca_once(builder, ir.VectorType(ir.FloatType(), len(lane_blocks)))
    done = builder.append_basic_block("scales.done")
    for size in (1, 2, 4):
        this, other = builder.append_basic_block(f"scales.per{size}"), builder.append_basic_block(f"scales.not{size}")
        builder.cbranch(builder.icmp_signed("==", per_group, context.get_constant(types.intp, size)), this, other)
        builder.position_at_end(this)
        n_scales = (max(lane_blocks) + 1) // size
        group = builder.sdiv(first, context.get_constant(types.intp, size))
        halves = ir.VectorType(ir.HalfType(), n_scales)
        loaded = builder.fpext(
            builder.load(_item_pointer(context, builder, scale_bits_type, scale_bits_array, [n, group], halves), align=2),
            ir.VectorType(ir.FloatType(), n_scales),
        )
        spread = _int_constants(32, [b // size for b in lane_blocks])  # each lane's group
        builder.store(builder.shuffle_vector(loaded, loaded, spread), result)
        builder.branch(done)
        builder.position_at_end(other)
    builder.branch(done)  # callers pass only 1, 2 or 4
    builder.position_at_end(done)
    return builder.load(result)


def _scaled_sum(context, builder, steps, x_scales, offsets, scale_bits, n, first, per_group):
    """The float32 sum over a step's [(lane_sums, lane_blocks)] of `_scaled_lanes`."""
    total = None
    for lane_sums, lane_blocks in steps:
        values = _scaled_lanes(context, builder, lane_sums, lane_blocks, x_scales, offsets, scale_bits, n, first,
                               per_group)
        total = values if total is None else builder.fadd(total, values)
    return _horizontal_sum(builder, total, len(steps[0][1]))


def _prefetch(builder, address, distance):
    """Ask for the cache line `distance` bytes (an i64 value) past `address` (an i8*) to be
    loaded for reading (llvm.prefetch: prefetcht0 on x86, prfm on ARM; never faults, even past
    the array's end). The matvec kernels fetch the same bytes of the next row: one row ahead
    measured 15-25% more bandwidth on large matrices than the hardware prefetchers alone (which
    stop at 4 KB pages), and more than two or four rows ahead."""
    function = cgutils.get_or_insert_function(builder.module, ir.FunctionType(
        ir.VoidType(), [ir.IntType(8).as_pointer()] + [ir.IntType(32)] * 3), "llvm.prefetch.p0")
    target = builder.gep(address, [distance])
    builder.call(function, [target, ir.Constant(ir.IntType(32), 0), ir.Constant(ir.IntType(32), 3),
                            ir.Constant(ir.IntType(32), 1)])


def _horizontal_sum(builder, values, width):
    """The sum of a <width x float> as a pairwise tree: the same order on every machine."""
    while width > 1:
        width //= 2
        low, high = _int_constants(32, range(width)), _int_constants(32, range(width, 2 * width))
        values = builder.fadd(builder.shuffle_vector(values, values, low), builder.shuffle_vector(values, values, high))
    return builder.extract_element(values, ir.Constant(ir.IntType(32), 0))


def integer_dot_path() -> str:
    """Which code the integer dot products compile to here: "avx2" (vpmaddubsw, vpmaddwd) when
    the CPU Numba compiles for has AVX2, else "generic" (portable LLVM IR). The CPU's features
    come from llvmlite's public `get_host_cpu_features`, or from NUMBA_CPU_FEATURES when it is
    set (Numba then compiles for those features, e.g. a portable cache). Numba's on-disk cache
    is keyed on the CPU, so a cache never carries one path to another machine.
    TINYEXAONE_GENERIC_KERNELS=1 forces "generic" for kernels compiled from then on; the cache
    key does not include it, so the tests that use it also point NUMBA_CACHE_DIR at an empty
    folder."""
    if os.environ.get("TINYEXAONE_GENERIC_KERNELS") == "1":
        return "generic"
    import numba
    from llvmlite import binding

    features = numba.config.CPU_FEATURES or binding.get_host_cpu_features().flatten()
    return "avx2" if "+avx2" in features.split(",") else "generic"


def kernel_paths() -> dict[str, str]:
    """What `tinyexaone bench` and `info` report: the CPU and the integer dot product path."""
    import numba
    from llvmlite import binding

    return {"cpu": numba.config.CPU_NAME or binding.get_host_cpu_name(), "integer_dot": integer_dot_path()}


def _vpmaddubsw(builder, unsigned_bytes, signed_bytes):
    """<16 x i16>: lane i = u[2i] s[2i] + u[2i+1] s[2i+1] (saturating) for <32 x i8> u (unsigned)
    and s (signed): x86's AVX2 intrinsic, which LLVM does not form from generic IR."""
    shorts, bytes_ = ir.VectorType(ir.IntType(16), 16), ir.VectorType(ir.IntType(8), 32)
    function = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(shorts, [bytes_, bytes_]), "llvm.x86.avx2.pmadd.ub.sw")
    return builder.call(function, [unsigned_bytes, signed_bytes])


# One int4 vector step covers Q4_LANES = 32 blocks: row j of the step is 32 bytes holding
# element j (low nibble) and element j + 16 (high nibble) of each block. The AVX2 path
# interleaves the two nibble vectors so both elements of a block sit side by side for one
# vpmaddubsw pair product; the interleave is AVX2's in-lane vpunpck{l,h}bw, so the first product
# vector holds blocks Q4_BLOCKS_A and the second Q4_BLOCKS_B (the activation pairs, x_pairs, are
# stored in that order). The generic path keeps blocks in order: 16-bit multiplies of each
# nibble vector by the plain activation codes (x_codes), one accumulator per nibble half.
Q4_LANES = 32
Q4_BLOCKS_A = [lane * 16 + i for lane in (0, 1) for i in range(8)]  # 0..7, 16..23
Q4_BLOCKS_B = [lane * 16 + i for lane in (0, 1) for i in range(8, 16)]  # 8..15, 24..31


def _q4_step_avx2(context, builder, nibbles, n, first, x_pairs):
    """[(lane_sums <16 x i32>, lane_blocks)] for the AVX2 path (see above)."""
    (nib_type, nib), (pairs_type, pairs) = nibbles, x_pairs
    row_bytes = ir.VectorType(ir.IntType(8), Q4_LANES)
    shorts, ints = ir.VectorType(ir.IntType(16), 16), ir.VectorType(ir.IntType(32), 16)
    mask, shift = ir.Constant(row_bytes, [15] * Q4_LANES), ir.Constant(row_bytes, [4] * Q4_LANES)
    # nibbles of block b: low at b, high at Q4_LANES + b in shuffle_vector(low, high)
    pick_a = _int_constants(32, [k for b in Q4_BLOCKS_A for k in (b, Q4_LANES + b)])
    pick_b = _int_constants(32, [k for b in Q4_BLOCKS_B for k in (b, Q4_LANES + b)])
    pair_first = builder.mul(first, context.get_constant(types.intp, 2))
    row_stride = cgutils.unpack_tuple(builder, nib.strides, 3)[0]  # bytes from row n to n + 1
    # 8 steps of (code 0..15) x (|activation code| <= 127), two per step: |sum| <= 30480
    sums = [[ir.Constant(shorts, [0] * 16)] * 2 for _ in range(2)]  # [half][j // 8]
    for j in range(16):
        row_j = context.get_constant(types.intp, j)
        address = _item_pointer(context, builder, nib_type, nib, [n, row_j, first], ir.IntType(8))
        _prefetch(builder, address, row_stride)
        packed = builder.load(builder.bitcast(address, row_bytes.as_pointer()), align=1)
        low = builder.and_(packed, mask)
        high = builder.and_(builder.lshr(packed, shift), mask)
        for half, pick in enumerate((pick_a, pick_b)):
            where = builder.add(pair_first, context.get_constant(types.intp, 32 * half))
            x = builder.load(_item_pointer(context, builder, pairs_type, pairs, [row_j, where], row_bytes), align=1)
            products = _vpmaddubsw(builder, builder.shuffle_vector(low, high, pick), x)
            sums[half][j // 8] = builder.add(sums[half][j // 8], products)
    return [(builder.add(builder.sext(sums[half][0], ints), builder.sext(sums[half][1], ints)), blocks)
            for half, blocks in enumerate((Q4_BLOCKS_A, Q4_BLOCKS_B))]


def _q4_step_generic(context, builder, nibbles, n, first, x_codes):
    """[(lane_sums <32 x i32>, lane_blocks)] for the generic path (see above)."""
    (nib_type, nib), (codes_type, codes) = nibbles, x_codes
    row_bytes = ir.VectorType(ir.IntType(8), Q4_LANES)
    shorts, ints = ir.VectorType(ir.IntType(16), Q4_LANES), ir.VectorType(ir.IntType(32), Q4_LANES)
    mask, shift = ir.Constant(row_bytes, [15] * Q4_LANES), ir.Constant(row_bytes, [4] * Q4_LANES)
    row_stride = cgutils.unpack_tuple(builder, nib.strides, 3)[0]  # bytes from row n to n + 1
    # 16 products of (code 0..15) x (|activation code| <= 127) per half: |sum| <= 30480
    low_sum = high_sum = ir.Constant(shorts, [0] * Q4_LANES)
    for j in range(16):
        row_j = context.get_constant(types.intp, j)
        address = _item_pointer(context, builder, nib_type, nib, [n, row_j, first], ir.IntType(8))
        _prefetch(builder, address, row_stride)
        packed = builder.load(builder.bitcast(address, row_bytes.as_pointer()), align=1)
        x_low, x_high = (
            builder.sext(builder.load(_item_pointer(context, builder, codes_type, codes,
                                                    [context.get_constant(types.intp, e), first], row_bytes), align=1), shorts)
            for e in (j, j + 16))
        low_sum = builder.add(low_sum, builder.mul(builder.zext(builder.and_(packed, mask), shorts), x_low))
        high_sum = builder.add(high_sum, builder.mul(builder.zext(builder.lshr(packed, shift), shorts), x_high))
    return [(builder.add(builder.sext(low_sum, ints), builder.sext(high_sum, ints)), list(range(Q4_LANES)))]


@intrinsic
def q4_lanes_dot(typingctx, nibbles, scale_bits, n, first, x_pairs, x_codes, x_scales, offsets, per_group):
    """Row n of an int4 matrix times the activation codes over blocks first .. first + Q4_LANES,
    scaled: a float32 partial dot product (see kernels.q4_matvec). x_pairs feeds the AVX2 path,
    x_codes the generic one (kernels._q4_prepare writes both)."""
    signature = types.float32(nibbles, scale_bits, types.intp, types.intp, x_pairs, x_codes, x_scales, offsets,
                              types.intp)

    def codegen(context, builder, signature, args):
        t = signature.args
        arrays = {i: (t[i], context.make_array(t[i])(context, builder, args[i])) for i in (0, 1, 4, 5, 6, 7)}
        n, first, per_group = args[2], args[3], args[8]
        if integer_dot_path() == "avx2":
            steps = _q4_step_avx2(context, builder, arrays[0], n, first, arrays[4])
        else:
            steps = _q4_step_generic(context, builder, arrays[0], n, first, arrays[5])
        return _scaled_sum(context, builder, steps, arrays[6], arrays[7], arrays[1], n, first, per_group)

    return signature, codegen


def _vpmaddwd(builder, a, b):
    """<8 x i32>: lane i = a[2i] b[2i] + a[2i+1] b[2i+1] for <16 x i16> a, b: x86's AVX2 intrinsic."""
    shorts, ints = ir.VectorType(ir.IntType(16), 16), ir.VectorType(ir.IntType(32), 8)
    function = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(ints, [shorts, shorts]), "llvm.x86.avx2.pmadd.wd")
    return builder.call(function, [a, b])


# An int8 step covers LANES = 16 blocks. The AVX2 path interleaves the sign-extended codes of
# elements e and e + 1 (AVX2's in-lane vpunpck{l,h}wd) so one vpmaddwd multiplies and adds
# both for 8 blocks, straight into int32: the first vector holds blocks Q8_BLOCKS_A, the second
# Q8_BLOCKS_B (x_pairs, int16, stores the activation pairs in that order). The generic path
# keeps blocks in order: 16-bit products, pairs added in int16, widened to int32.
Q8_BLOCKS_A = [lane * 8 + i for lane in (0, 1) for i in range(4)]  # 0..3, 8..11
Q8_BLOCKS_B = [lane * 8 + i for lane in (0, 1) for i in range(4, 8)]  # 4..7, 12..15


def _q8_step_avx2(context, builder, quants, n, first, x_pairs):
    """[(lane_sums <8 x i32>, lane_blocks)] x 2 for the AVX2 path (see above)."""
    (codes_type, codes), (pairs_type, pairs) = quants, x_pairs
    bytes_, shorts = ir.VectorType(ir.IntType(8), LANES), ir.VectorType(ir.IntType(16), LANES)
    row_stride = cgutils.unpack_tuple(builder, codes.strides, 3)[0]  # bytes from row n to n + 1
    picks = [_int_constants(32, [k for b in blocks for k in (b, LANES + b)]) for blocks in (Q8_BLOCKS_A, Q8_BLOCKS_B)]
    pair_first = builder.mul(first, context.get_constant(types.intp, 2))
    sums = [ir.Constant(ir.VectorType(ir.IntType(32), 8), [0] * 8)] * 2
    for e in range(0, 32, 2):
        rows = []
        for element in (e, e + 1):
            address = _item_pointer(context, builder, codes_type, codes, [n, context.get_constant(types.intp, element), first],
                                    ir.IntType(8))
            _prefetch(builder, address, row_stride)
            rows.append(builder.sext(builder.load(builder.bitcast(address, bytes_.as_pointer()), align=1), shorts))
        for half, pick in enumerate(picks):
            where = builder.add(pair_first, context.get_constant(types.intp, 16 * half))
            x = builder.load(_item_pointer(context, builder, pairs_type, pairs, [context.get_constant(types.intp, e // 2), where],
                                           shorts), align=2)
            sums[half] = builder.add(sums[half], _vpmaddwd(builder, builder.shuffle_vector(rows[0], rows[1], pick), x))
    return [(sums[0], Q8_BLOCKS_A), (sums[1], Q8_BLOCKS_B)]


def _q8_step_generic(context, builder, quants, n, first, x_codes):
    """[(lane_sums <16 x i32>, lane_blocks)] for the generic path (see above)."""
    (codes_type, codes), (activation_type, activation_codes) = quants, x_codes
    bytes_, shorts, ints = (ir.VectorType(ir.IntType(w), LANES) for w in (8, 16, 32))
    row_stride = cgutils.unpack_tuple(builder, codes.strides, 3)[0]  # bytes from row n to n + 1
    lane_sums = ir.Constant(ints, [0] * LANES)
    for e in range(0, 32, 2):
        pair = []
        for element in (e, e + 1):
            index = context.get_constant(types.intp, element)
            address = _item_pointer(context, builder, codes_type, codes, [n, index, first], ir.IntType(8))
            _prefetch(builder, address, row_stride)
            w = builder.load(builder.bitcast(address, bytes_.as_pointer()), align=1)
            x = builder.load(_item_pointer(context, builder, activation_type, activation_codes, [index, first], shorts), align=2)
            pair.append(builder.mul(builder.sext(w, shorts), x))
        # |w x| <= 128 * 127, so a pair sums within int16; wider sums go to int32
        lane_sums = builder.add(lane_sums, builder.sext(builder.add(pair[0], pair[1]), ints))
    return [(lane_sums, list(range(LANES)))]


@intrinsic
def q8_lanes_dot(typingctx, quants, scale_bits, n, first, x_pairs, x_codes, x_scales, per_group):
    """`q4_lanes_dot` for an int8 matrix over blocks first .. first + LANES (see kernels.q8_matvec);
    x_pairs feeds the AVX2 path, x_codes the generic one (kernels._q8_prepare writes both)."""
    signature = types.float32(quants, scale_bits, types.intp, types.intp, x_pairs, x_codes, x_scales, types.intp)

    def codegen(context, builder, signature, args):
        t = signature.args
        arrays = {i: (t[i], context.make_array(t[i])(context, builder, args[i])) for i in (0, 1, 4, 5, 6)}
        n, first, per_group = args[2], args[3], args[7]
        if integer_dot_path() == "avx2":
            steps = _q8_step_avx2(context, builder, arrays[0], n, first, arrays[4])
        else:
            steps = _q8_step_generic(context, builder, arrays[0], n, first, arrays[5])
        return _scaled_sum(context, builder, steps, arrays[6], None, arrays[1], n, first, per_group)

    return signature, codegen
