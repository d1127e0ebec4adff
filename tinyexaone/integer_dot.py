"""Explicit LLVM vector IR for the integer tile dot products of the quantized kernels (kernels.py).

Contract: `tile_dot_1`, `tile_dot_4` (one and four tokens) are Numba intrinsics
`tile_dot_n(codes, scale_bits, g, x_codes, x_sums, x_scales, t0, scale_shift, out)` that write
out[k, r] = sum over all blocks b of W[8 g + r, block b] . x[t0 + k, block b], for r < 8 and
k < n, as float32, with W in the row-interleaved layout of quantized.py (codes [G8, B, 128]
uint8 for int4, [G8, B, 256] int8 for int8, [G8, B, 6, 32] uint8 for int6: the dtype and the
number of dimensions choose the unpacking; scale_bits
[G8, n_groups, 8] uint16, the float16 scale of block b at index b >> scale_shift; for int4k,
scale_bits is the uint8 super-block array [G8, K / 256, 128] of quantized.py, the super-block of
block b at index b >> scale_shift, scale_shift = 3) and x
quantized by kernels.quantize_activations (x_codes [T, B, 32] int8, x_sums [T, B] int32 = the
sum of each block's codes, x_scales [T, B] float32). They trust their inputs: g < G8,
t0 + n <= T, B the same in codes and x_codes, out [>= n, 8] float32, C-contiguous arrays.

Each 32-byte weight chunk holds 4 consecutive bytes of each of the 8 rows, so one integer lane
per row accumulates a whole block with no horizontal sums; the activation's 4 matching bytes
are broadcast to every lane. A block's integer sum is exact (int32), then converted and scaled
by the row's and the token's scales and added to a float32 accumulator per row, block by block
in order. For int4k (w = step q - offset, nibbles q = 0..15) the block's 8 steps d sc and offsets
dmin m are decoded from the super-block bytes once per block for all tokens of the tile, and a
token's term is x_scale (step float(U) - offset float(x_sum)), U the exact sum of q x: the
unsigned paths' sum as it is, the signed paths' sum of (q - 8) x plus 8 x_sum. int6 blocks are
six chunks: four of nibbles as int4's (the low 4 bits of the biased codes u = q + 32) and two of
the 2-bit plane (half h: the high bits of elements 16 h + 4 j + i at bits 2 j), so each of the
8 operand vectors is one shift-and-mask of a nibble chunk or'ed with one of a plane chunk, u in
0..63. The integer part is chosen per CPU (`integer_dot_path`):
- "vnni": vpdpbusd (AVX-512 VNNI with VL, or AVX-VNNI), unsigned weight bytes x signed
  activation bytes, so int4 nibbles (0..15) and int6 codes (0..63) enter as they are and int8
  codes flipped to unsigned (xor 0x80); the bias comes off as 8 (32, 128) times the block's
  activation sum;
- "avx2": vpmaddubsw + vpmaddwd; int4 and int6 as above, int8 as |w| x (x with w's sign); a
  vpmaddubsw lane is a pair of products, up to 2 x 63 x 127 = 16002 for int6, so int6 adds two
  chunks' pairs in int16 (32004) and widens them;
- "dotprod": AArch64 sdot on signed codes (nibble - 8, int6 code - 32, or the int8 code);
int6k (int6's codes, an int8 sub-scale per 16 elements under a float16 d per 256) needs a sum per
half block: its 8 operand vectors split into elements 0..15 and 16..31, each half summed on
signed codes u - 32 (vnni and avx2 as |w| x (x with w's sign), the others as for int6), so no
bias (whose activation sum exists per block only) is needed, and a token's term is
x_scale (d sub_0 float(S_0) + d sub_1 float(S_1));
- "generic": portable vector IR on signed codes (16-bit products, pairwise sums), the path of
  every other CPU and the reference the tests run everywhere.
A thread reads its rows' bytes as one sequential stream (the layout keeps a group's blocks, and
consecutive groups, contiguous), and each block asks for the cache lines PREFETCH_BLOCKS (128)
blocks ahead of it (16 KB for int4, 24 KB for int6, 32 KB for int8) into L2 (PREFETCH_LOCALITY
2, prefetcht1): the hardware prefetcher alone keeps too few lines in flight. `python tools/bench_prefetch.py --bits B --threads 2
--rounds 2 --variants 64:3,128:2` (the 4 decode products of 30 layers at the 1.2B shape, best
of 12 passes per process) on an Intel Xeon with AMX: int8 25.9 and 25.2 GB/s with 64 blocks into
L1, 28.3 and 28.1 with 128 into L2; int4 25.5 and 25.2 against 27.8 and 28.0 (locality 0, the
non-temporal hint, fell to 10 GB/s). On an AMD Zen 3 (avx2), whose bandwidth drifts more: int8
17.9 and 20.7 against 22.6 and 23.5 GB/s; int4, five pairs, 128 into L2 ahead in three and behind in
two (16.9 to 22.3 GB/s against 18.6 to 21.7); at one thread 16.0 and 15.2 against 14.7 and 14.9. The NumPy twin is
kernels.matmul_numpy.
"""

from __future__ import annotations

import functools
import os

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

ROWS = 8  # weight rows interleaved in one group: one int32 lane each
PATHS = ("vnni", "avx2", "dotprod", "generic")

I1, I8, I16, I32, F32 = ir.IntType(1), ir.IntType(8), ir.IntType(16), ir.IntType(32), ir.FloatType()
BYTES = ir.VectorType(I8, 32)  # one weight chunk: 4 bytes x 8 rows
LANES = ir.VectorType(I32, ROWS)


def integer_dot_path() -> str:
    """Which code the tile dot products compile to here (see the module doc), from the CPU
    features Numba compiles for: llvmlite's public `get_host_cpu_features`, or NUMBA_CPU_FEATURES
    when set (a portable cache). Numba's on-disk cache is keyed on the CPU name and features, so
    a cache never carries one path to another machine. TINYEXAONE_KERNEL_PATH=generic (or another
    path this CPU can run) forces a path for kernels compiled from then on; the cache key does not
    include it, so the tests that set it also point NUMBA_CACHE_DIR at an empty folder. Nor does
    it include this file: Numba checks only the stamp of the file that defines a kernel
    (kernels.py), so after editing this IR in a checkout, touch kernels.py (an install replaces
    both files)."""
    features = cpu_features()
    if {"+avx512vnni", "+avx512vl"} <= features or "+avxvnni" in features:
        native = "vnni"
    elif "+avx2" in features:
        native = "avx2"
    elif "+dotprod" in features:
        native = "dotprod"
    else:
        native = "generic"
    forced = os.environ.get("TINYEXAONE_KERNEL_PATH")
    if forced in (native, "generic") or (forced == "avx2" and native == "vnni"):
        return forced
    return native


@functools.cache
def cpu_features() -> frozenset[str]:
    """The CPU features Numba compiles for ("+avx2", ...): NUMBA_CPU_FEATURES when set, else
    llvmlite's `get_host_cpu_features` (read once: it costs about half a millisecond)."""
    import numba
    from llvmlite import binding

    return frozenset((numba.config.CPU_FEATURES or binding.get_host_cpu_features().flatten()).split(","))


def _constant(vector_type, value):
    return ir.Constant(vector_type, [value] * vector_type.count)


def _indices(values):
    return ir.Constant(ir.VectorType(I32, len(values)), list(values))


def _splat(builder, value, count):
    vector = builder.insert_element(ir.Constant(ir.VectorType(value.type, count), ir.Undefined), value,
                                    ir.Constant(I32, 0))
    return builder.shuffle_vector(vector, vector, _indices([0] * count))


def _call(builder, name, result_type, args):
    function_type = ir.FunctionType(result_type, [arg.type for arg in args])
    return builder.call(cgutils.get_or_insert_function(builder.module, function_type, name), args)


def _pair_sums(builder, vector):
    """Adjacent lanes added: <2n x iK> -> <n x iK>."""
    n = vector.type.count
    return builder.add(builder.shuffle_vector(vector, vector, _indices(range(0, n, 2))),
                       builder.shuffle_vector(vector, vector, _indices(range(1, n, 2))))


def _operand_pairs(builder, bits, chunks, activation):
    """[(weight bytes <32 x i8>, activation dword broadcast <8 x i32>)]: the chunk products that
    make one block. int8: chunk c holds elements 4c..4c+3 and meets activation dword c. int4:
    chunk c's low nibbles are elements 4c..4c+3 (dword c), its high nibbles 16+4c.. (dword 4+c);
    the nibbles come out as unsigned bytes 0..15. int6: six chunks, the four nibble chunks as
    int4's plus two of the 2-bit plane (chunk 4 + h: bits 2 c of its bytes are the high bits of
    the codes in nibble chunk c's low (h = 0) or high (h = 1) nibbles); codes 0..63."""
    if bits == 8:
        return [(chunk, activation(c)) for c, chunk in enumerate(chunks)]
    low_mask, pairs, highs = _constant(BYTES, 15), [], []
    for c, chunk in enumerate(chunks[:4]):
        pairs.append((builder.and_(chunk, low_mask), activation(c)))
        highs.append((builder.and_(builder.lshr(chunk, _constant(BYTES, 4)), low_mask), activation(4 + c)))
    if bits == 6:
        two_bits = _constant(BYTES, 3)
        for h, half in enumerate((pairs, highs)):
            for c, (nibbles, x) in enumerate(half):
                top = builder.and_(builder.lshr(chunks[4 + h], _constant(BYTES, 2 * c)), two_bits)
                half[c] = (builder.or_(nibbles, builder.shl(top, _constant(BYTES, 4))), x)
    return pairs + highs


def _block_sum_vnni(builder, bits, pairs):
    """vpdpbusd on unsigned weight bytes; returns (lane sums, log2 of the bias to take off)."""
    sums = [_constant(LANES, 0)] * 2  # two chains: vpdpbusd's latency is several cycles
    for k, (weight, x) in enumerate(pairs):
        unsigned = weight if bits != 8 else builder.xor(weight, _constant(BYTES, 0x80))
        sums[k % 2] = _call(builder, "llvm.x86.avx512.vpdpbusd.256", LANES, [sums[k % 2], builder.bitcast(unsigned, LANES), x])
    return builder.add(sums[0], sums[1]), BIAS_SHIFTS[bits]


def _block_sum_avx2(builder, bits, pairs):
    """vpmaddubsw (u8 x s8 pairs into int16) then vpmaddwd by ones into int32 lanes."""
    shorts = ir.VectorType(I16, 16)
    ones = _constant(shorts, 1)
    if bits == 4:  # 8 chunk products of 2 x 15 x 127 per int16 lane: |sum| <= 30480
        total = None
        for weight, x in pairs:
            product = _call(builder, "llvm.x86.avx2.pmadd.ub.sw", shorts, [weight, builder.bitcast(x, BYTES)])
            total = product if total is None else builder.add(total, product)
        return _call(builder, "llvm.x86.avx2.pmadd.wd", LANES, [total, ones]), 3
    if bits == 6:  # a chunk product is up to 2 x 63 x 127 = 16002 per int16 lane: two fit, three do not
        products = [_call(builder, "llvm.x86.avx2.pmadd.ub.sw", shorts, [weight, builder.bitcast(x, BYTES)])
                    for weight, x in pairs]
        total = None
        for k in range(0, len(products), 2):
            lanes = _call(builder, "llvm.x86.avx2.pmadd.wd", LANES, [builder.add(products[k], products[k + 1]), ones])
            total = lanes if total is None else builder.add(total, lanes)
        return total, BIAS_SHIFTS[6]
    total = None
    for weight, x in pairs:  # |w| x sign(w) x: a pair is at most 2 x 128 x 127 = 32512
        magnitude = _call(builder, "llvm.abs.v32i8", BYTES, [weight, ir.Constant(I1, 0)])
        signed_x = _call(builder, "llvm.x86.avx2.psign.b", BYTES, [builder.bitcast(x, BYTES), weight])
        product = _call(builder, "llvm.x86.avx2.pmadd.ub.sw", shorts, [magnitude, signed_x])
        lanes = _call(builder, "llvm.x86.avx2.pmadd.wd", LANES, [product, ones])
        total = lanes if total is None else builder.add(total, lanes)
    return total, None


BIAS_SHIFTS = {4: 3, 6: 5, 8: 7}  # log2 of the bias of the unsigned weight bytes: 8, 32, 128


def _signed(builder, bits, pairs):
    if bits == 8:
        return pairs
    return [(builder.sub(weight, _constant(BYTES, 1 << BIAS_SHIFTS[bits])), x) for weight, x in pairs]


def _block_sum_dotprod(builder, bits, pairs):
    """AArch64 sdot on signed codes, the 8 row lanes as two 128-bit halves."""
    halves = []
    for half in (0, 1):
        total = _constant(ir.VectorType(I32, 4), 0)
        for weight, x in _signed(builder, bits, pairs):
            weight_half = builder.shuffle_vector(weight, weight, _indices(range(16 * half, 16 * half + 16)))
            x_half = builder.bitcast(builder.shuffle_vector(x, x, _indices(range(4))), ir.VectorType(I8, 16))
            total = _call(builder, "llvm.aarch64.neon.sdot.v4i32.v16i8", total.type, [total, weight_half, x_half])
        halves.append(total)
    return builder.shuffle_vector(halves[0], halves[1], _indices(range(ROWS))), None


def _block_sum_generic(builder, bits, pairs):
    """Portable IR on signed codes: 16-bit products, summed in int16 while that cannot overflow."""
    shorts = ir.VectorType(I16, 32)
    products = [builder.mul(builder.sext(weight, shorts), builder.sext(builder.bitcast(x, BYTES), shorts))
                for weight, x in _signed(builder, bits, pairs)]
    if bits == 4:  # 8 products of 8 x 127 per lane, then 4 lanes: |sum| <= 32512
        total = products[0]
        for product in products[1:]:
            total = builder.add(total, product)
        return builder.sext(_pair_sums(builder, _pair_sums(builder, total)), LANES), None
    if bits == 6:  # 8 products of 32 x 127 per lane fit int16 (32512); their pair sums do not
        total = products[0]
        for product in products[1:]:
            total = builder.add(total, product)
        return _pair_sums(builder, _pair_sums(builder, builder.sext(total, ir.VectorType(I32, 32)))), None
    total = None  # int8: a pair of 128 x 127 products fits int16, four do not
    for product in products:
        lanes = _pair_sums(builder, builder.sext(_pair_sums(builder, product), ir.VectorType(I32, 16)))
        total = lanes if total is None else builder.add(total, lanes)
    return total, None


BLOCK_SUMS = {"vnni": _block_sum_vnni, "avx2": _block_sum_avx2, "dotprod": _block_sum_dotprod,
              "generic": _block_sum_generic}


def _pointer(context, builder, array_type, array, indices, element):
    """Pointer to array[indices] reinterpreted as a pointer to `element` (an LLVM type)."""
    return builder.bitcast(cgutils.get_item_pointer(context, builder, array_type, array, indices), element.as_pointer())


def _affine_steps(builder, scale_pointer, block_in_super):
    """(d sc, dmin m) <8 x float> of one block of a row group from its int4k super-block bytes
    (quantized.py): d, dmin as 8 float16 each, then per block three little-endian words, the low
    4 bits of the 8 rows' scale codes (row r at bit 4 r), of their minimum codes, and the high 2
    bits of both (scale at bit 2 r, minimum at 16 + 2 r)."""
    floats, halves = ir.VectorType(F32, ROWS), ir.VectorType(ir.HalfType(), ROWS)
    d = builder.fpext(builder.load(builder.bitcast(scale_pointer, halves.as_pointer()), align=1), floats)
    dmin = builder.fpext(builder.load(builder.bitcast(builder.gep(scale_pointer, [ir.Constant(I32, 16)]),
                                                      halves.as_pointer()), align=1), floats)
    words_at = builder.gep(scale_pointer, [builder.add(ir.Constant(I32, 32), builder.mul(block_in_super, ir.Constant(I32, 12)))])
    words = [_splat(builder, builder.load(builder.gep(builder.bitcast(words_at, I32.as_pointer()), [ir.Constant(I32, i)]),
                                          align=1), ROWS) for i in range(3)]

    def six_bits(low_word, high_shift):
        low = builder.and_(builder.lshr(low_word, _indices([4 * r for r in range(ROWS)])), _constant(LANES, 15))
        high = builder.and_(builder.lshr(words[2], _indices([2 * r + high_shift for r in range(ROWS)])), _constant(LANES, 3))
        return builder.uitofp(builder.or_(low, builder.shl(high, _constant(LANES, 4))), floats)

    return builder.fmul(d, six_bits(words[0], 0)), builder.fmul(dmin, six_bits(words[1], 16))


def _signed_half_sum(builder, path, pairs):
    """Lane sums of int6 operand pairs (codes u = 0..63 as the weight bytes) taken as u - 32,
    with no bias to remove: int6k's half-block sums (4 pairs)."""
    if path in ("generic", "dotprod"):
        return BLOCK_SUMS[path](builder, 6, pairs)[0]
    signed = _signed(builder, 6, pairs)
    if path == "avx2":
        return _block_sum_avx2(builder, 8, signed)[0]
    total = _constant(LANES, 0)  # vnni: |w| x (x with w's sign), at most 4 x 32 x 127 per pair
    for weight, x in signed:
        magnitude = _call(builder, "llvm.abs.v32i8", BYTES, [weight, ir.Constant(I1, 0)])
        signed_x = _call(builder, "llvm.x86.avx2.psign.b", BYTES, [builder.bitcast(x, BYTES), weight])
        total = _call(builder, "llvm.x86.avx512.vpdpbusd.256", LANES, [total, builder.bitcast(magnitude, LANES),
                                                                       builder.bitcast(signed_x, LANES)])
    return total


def _sub_scale_steps(builder, scale_pointer, block_in_super):
    """(d sub_0, d sub_1) <8 x float> of one block of a row group from its int6k super-block bytes
    (quantized.py): d as 8 float16, then per block 16 int8 sub-scales, half h of row r at 8 h + r."""
    floats = ir.VectorType(F32, ROWS)
    d = builder.fpext(builder.load(builder.bitcast(scale_pointer, ir.VectorType(ir.HalfType(), ROWS).as_pointer()),
                                   align=1), floats)
    at = builder.add(ir.Constant(I32, 16), builder.mul(block_in_super, ir.Constant(I32, 16)))
    steps = []
    for half in (0, 1):
        pointer = builder.gep(scale_pointer, [builder.add(at, ir.Constant(I32, 8 * half))])
        subs = builder.load(builder.bitcast(pointer, ir.VectorType(I8, ROWS).as_pointer()), align=1)
        steps.append(builder.fmul(d, builder.sitofp(subs, floats)))
    return steps


PREFETCH_BLOCKS = 128  # how many blocks ahead a block's row-group weight bytes are asked for
PREFETCH_LOCALITY = 2  # llvm.prefetch locality: 2 is prefetcht1 on x86 (into L2, not L1)


def _prefetch_ahead(builder, chunk_pointer, block_bytes):
    """Ask for the cache lines PREFETCH_BLOCKS blocks past this one (llvm.prefetch: a hint that never
    faults, so past the array's end is harmless): a thread's weight bytes are one sequential
    stream, and the hardware prefetcher alone keeps too few of its lines in flight."""
    raw = builder.bitcast(chunk_pointer, I8.as_pointer())
    prefetch = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(ir.VoidType(), [raw.type, I32, I32, I32]), "llvm.prefetch.p0i8")
    for line in range(0, block_bytes, 64):  # read, PREFETCH_LOCALITY, data cache
        builder.call(prefetch, [builder.gep(raw, [ir.Constant(I32, PREFETCH_BLOCKS * block_bytes + line)]), ir.Constant(I32, 0),
                                ir.Constant(I32, PREFETCH_LOCALITY), ir.Constant(I32, 1)])


def _tile_dot(n_tokens: int):
    @intrinsic
    def tile_dot(typingctx, codes, scale_bits, g, x_codes, x_sums, x_scales, t0, scale_shift, out):
        bits = {types.uint8: 4, types.int8: 8}.get(getattr(codes, "dtype", None))
        if bits == 4 and codes.ndim == 4:  # int6's view [G8, B, 6, 32]: nibbles and the 2-bit plane
            bits = 6
        affine = getattr(scale_bits, "dtype", None) == types.uint8  # int4k: scale bytes, not float16 bits
        if bits is None or (affine and bits == 8) or codes.ndim != (4 if bits == 6 else 3):
            return None
        signature = types.void(codes, scale_bits, types.intp, x_codes, x_sums, x_scales, types.intp, types.intp, out)

        def codegen(context, builder, signature, args):
            t = signature.args
            arrays = {i: context.make_array(t[i])(context, builder, args[i]) for i in (0, 1, 3, 4, 5, 8)}
            g, t0, scale_shift = args[2], args[6], args[7]
            path = integer_dot_path()
            block_sum = BLOCK_SUMS[path]
            zero = context.get_constant(types.intp, 0)
            floats = ir.VectorType(F32, ROWS)
            totals = [cgutils.alloca_once_value(builder, _constant(floats, 0.0)) for _ in range(n_tokens)]
            n_blocks = cgutils.unpack_tuple(builder, arrays[0].shape, t[0].ndim)[1]
            with cgutils.for_range(builder, n_blocks) as loop:
                b = loop.index
                chunk_pointer = _pointer(context, builder, t[0], arrays[0], [g, b] + [zero] * (t[0].ndim - 2), BYTES)
                _prefetch_ahead(builder, chunk_pointer, CHUNKS[bits] * 32)
                chunks = [builder.load(builder.gep(chunk_pointer, [ir.Constant(I32, c)]), align=1)
                          for c in range(CHUNKS[bits])]
                if affine:  # scale_shift is 3: 8 blocks per super-block
                    super_pointer = _pointer(context, builder, t[1], arrays[1], [g, builder.lshr(b, scale_shift), zero], I8)
                    block_in_super = builder.trunc(builder.and_(b, context.get_constant(types.intp, 7)), I32)
                    if bits == 6:  # int6k: the steps of the two halves
                        row_scales, row_offsets = _sub_scale_steps(builder, super_pointer, block_in_super)  # [8] each
                    else:
                        row_scales, row_offsets = _affine_steps(builder, super_pointer, block_in_super)  # [8] each
                else:
                    scales_pointer = _pointer(context, builder, t[1], arrays[1], [g, builder.lshr(b, scale_shift), zero],
                                              ir.VectorType(ir.HalfType(), ROWS))
                    row_scales = builder.fpext(builder.load(scales_pointer, align=2), floats)  # [8]
                for k in range(n_tokens):
                    token = builder.add(t0, context.get_constant(types.intp, k))
                    x_pointer = _pointer(context, builder, t[3], arrays[3], [token, b, zero], I32)

                    def activation(c, x_pointer=x_pointer):
                        return _splat(builder, builder.load(builder.gep(x_pointer, [ir.Constant(I32, c)]), align=1), ROWS)

                    pairs = _operand_pairs(builder, bits, chunks, activation)
                    x_scale = builder.load(_pointer(context, builder, t[5], arrays[5], [token, b], F32))
                    if affine and bits == 6:  # int6k: x_scale (step_0 S_0 + step_1 S_1) over the two halves
                        halves = [builder.sitofp(_signed_half_sum(builder, path, pairs[4 * h:4 * h + 4]), floats) for h in (0, 1)]
                        term = builder.fmul(builder.fadd(builder.fmul(halves[0], row_scales), builder.fmul(halves[1], row_offsets)),
                                            _splat(builder, x_scale, ROWS))
                        builder.store(builder.fadd(builder.load(totals[k]), term), totals[k])
                        continue
                    sums, bias_shift = block_sum(builder, bits, pairs)
                    if affine or bias_shift is not None:
                        x_sum = builder.load(_pointer(context, builder, t[4], arrays[4], [token, b], I32))
                    if affine:  # w = step q - offset: x_scale (step sum(q x) - offset sum(x)), codes q = nibbles
                        if bias_shift is None:  # the signed paths summed (nibble - 8) x
                            sums = builder.add(sums, _splat(builder, builder.shl(x_sum, ir.Constant(I32, 3)), ROWS))
                        offset_terms = builder.fmul(row_offsets, builder.sitofp(_splat(builder, x_sum, ROWS), floats))
                        term = builder.fmul(builder.fsub(builder.fmul(builder.sitofp(sums, floats), row_scales), offset_terms),
                                            _splat(builder, x_scale, ROWS))
                    else:
                        if bias_shift is not None:
                            sums = builder.sub(sums, _splat(builder, builder.shl(x_sum, ir.Constant(I32, bias_shift)), ROWS))
                        term = builder.fmul(builder.sitofp(sums, floats), builder.fmul(row_scales, _splat(builder, x_scale, ROWS)))
                    builder.store(builder.fadd(builder.load(totals[k]), term), totals[k])
            for k in range(n_tokens):
                out_pointer = _pointer(context, builder, t[8], arrays[8], [context.get_constant(types.intp, k), zero], floats)
                builder.store(builder.load(totals[k]), out_pointer, align=4)
            return context.get_dummy_value()

        return signature, codegen

    return tile_dot


CHUNKS = {4: 4, 6: 6, 8: 8}  # 32-byte weight chunks per block
TILE_TOKENS = 4  # tokens per prefill tile: each weight chunk unpacked once serves four tokens
tile_dot_1 = _tile_dot(1)
tile_dot_4 = _tile_dot(TILE_TOKENS)
