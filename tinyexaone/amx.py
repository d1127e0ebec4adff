"""Prefill matrix products on Intel AMX tiles (`tdpbssd`), where the CPU and the OS allow them.

Contract: `matmul_amx(codes, scale_bits, x_codes, x_sums, x_scales, out, n_chunks)` computes
what kernels.matmul computes, out [T, N] = x W^T for one quantized matrix of any kind (int4, int6,
int8, int4k, int6k, in quantized.py's layout) and x quantized by kernels.quantize_activations,
except that x_codes, x_sums and x_scales must have a multiple of TILE_TOKENS (16) rows, at least
out's T: the rows past T are padding, read but never written to out (zeros are best; they keep
the padding's arithmetic finite). It trusts its inputs like every kernel; quantized.FusedMatmul
pads and validates. Only `prefill_path() == "amx"` may call it: elsewhere its instructions do not
exist, and on Linux a process must ask for the tile state first (`_request_tile_state`).

How: the row groups are taken two at a time (a panel of 16 weight rows). A panel's codes are
unpacked once per block of tokens into signed bytes in the tile layout AMX's B operand reads
([B, 8, 64]: row k of block b holds elements 4k..4k+3 of each of the 16 rows, which is exactly
quantized.py's row interleave of two groups side by side), with each block's float steps beside
them ([B, 2, 16]). Then each tile of 16 tokens walks the blocks: one `tdpbssd` multiplies the
tokens' 32 activation codes (read in place from x_codes, one row per token) by the panel's block
into a 16 x 16 int32 tile, stored and scaled into 16 float32 accumulators per token row:
x_scale (step C) for the symmetric kinds (codes as signed bytes: nibble - 8, int6 code - 32, the
int8 code), x_scale (step C - offset x_sum) for int4k (unsigned nibbles 0..15 as bytes), and
x_scale (step_0 C_0 + step_1 C_1) for int6k, whose halves are two `tdpbssd` of 16 elements. Two
sets of tiles alternate, so block b's tile product runs while block b - 1 is scaled. The integer
sums are exact and the float steps those of the NumPy twin kernels.matmul_numpy; only the order
of the float additions differs, as in every kernel.
"""

from __future__ import annotations

import ctypes
import functools
import platform

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from .integer_dot import (BYTES, CHUNKS, F32, I8, I16, I32, ROWS, _affine_steps, _call, _constant, _operand_pairs,
                          _pointer, _signed, _splat, _sub_scale_steps, cpu_features, integer_dot_path)
from .kernels import _scale_shift

TILE_TOKENS = 16  # tokens in one tile product (the A operand's and the result's rows)
PANEL_ROWS = 2 * ROWS  # weight rows in one tile product: two row groups
TOKEN_BLOCK_BYTES = 1 << 19  # activation codes a panel meets between re-unpackings (L2-resident)
I64 = ir.IntType(64)
INT32S = ir.VectorType(I32, PANEL_ROWS)
FLOATS = ir.VectorType(F32, PANEL_ROWS)
# tile registers: results 0..3 (set j, half h at 2 j + h), activations 4 + j, weights 6 + j
RESULT, ACTIVATION, WEIGHT = 0, 4, 6
_ARCH_PRCTL, _ARCH_REQ_XCOMP_PERM, _XFEATURE_XTILEDATA = 158, 0x1023, 18  # Linux x86-64


@functools.cache
def _request_tile_state() -> bool:
    """Ask Linux for permission to use the AMX tile data (arch_prctl ARCH_REQ_XCOMP_PERM); without
    it the first tile instruction kills the process. True when granted."""
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        return False
    try:
        return ctypes.CDLL(None, use_errno=True).syscall(_ARCH_PRCTL, _ARCH_REQ_XCOMP_PERM, _XFEATURE_XTILEDATA) == 0
    except (OSError, AttributeError):
        return False


def prefill_path() -> str:
    """"amx" where prefill's matrix products run on AMX tiles: the CPU features Numba compiles for
    have AMX-INT8 and AMX-TILE, the integer dot path is the native "vnni" (TINYEXAONE_KERNEL_PATH
    set to another path turns AMX off too) and Linux granted the tile state; else the integer dot
    path (integer_dot.integer_dot_path), whose four-token tiles then serve prefill."""
    path = integer_dot_path()
    if path == "vnni" and {"+amx-int8", "+amx-tile"} <= cpu_features() and _request_tile_state():
        return "amx"
    return path


def kernel_paths() -> dict[str, str]:
    """What `tinyexaone bench` and `info` report: the CPU, the integer dot product path (decode,
    integer_dot.integer_dot_path) and the path of prefill's matrix products (`prefill_path`)."""
    import numba
    from llvmlite import binding

    return {"cpu": numba.config.CPU_NAME or binding.get_host_cpu_name(), "integer_dot": integer_dot_path(),
            "prefill": prefill_path()}


def _kind(codes, scale_bits):
    """(bits, affine) of a matrix from its Numba array types (integer_dot's rule), or None."""
    bits = {types.uint8: 4, types.int8: 8}.get(getattr(codes, "dtype", None))
    if bits == 4 and getattr(codes, "ndim", 0) == 4:
        bits = 6
    affine = getattr(scale_bits, "dtype", None) == types.uint8
    if bits is None or (affine and bits == 8) or codes.ndim != (4 if bits == 6 else 3):
        return None
    return bits, affine


def _halves(bits: int, affine: bool) -> int:
    """Tile products per block: int6k's two halves of 16 elements, else one of 32."""
    return 2 if (affine and bits == 6) else 1


def _tile_call(builder, name, args):
    return _call(builder, f"llvm.x86.{name}", ir.VoidType(), args)


def _tile(register: int):
    return ir.Constant(I8, register)


def configure_tiles(builder, halves: int) -> None:
    """ldtilecfg: palette 1; results 16 rows x 64 bytes; activations 16 rows x 32 / halves bytes;
    weights 8 / halves rows x 64 bytes."""
    config = cgutils.alloca_once(builder, ir.ArrayType(I8, 64))
    config.align = 64
    builder.store(ir.Constant(ir.ArrayType(I8, 64), None), config)
    raw = builder.bitcast(config, I8.as_pointer())

    def put(offset, value_type, value):
        pointer = builder.bitcast(builder.gep(raw, [ir.Constant(I32, offset)]), value_type.as_pointer())
        builder.store(ir.Constant(value_type, value), pointer)

    put(0, I8, 1)
    shapes = {RESULT + i: (TILE_TOKENS, 64) for i in range(4)}
    shapes.update({ACTIVATION + j: (TILE_TOKENS, 32 // halves) for j in (0, 1)})
    shapes.update({WEIGHT + j: (8 // halves, 64) for j in (0, 1)})
    for register, (rows, row_bytes) in shapes.items():  # bytes per row at 16 + 2 i, rows at 48 + i
        put(16 + 2 * register, I16, row_bytes)
        put(48 + register, I8, rows)
    _tile_call(builder, "ldtilecfg", [raw])


def release_tiles(builder) -> None:
    _tile_call(builder, "tilerelease", [])


def tokens_times_panel(builder, bits: int, affine: bool, x, x_sums, x_scales, n_blocks, panel, steps, tile) -> None:
    """tile [16, 16] float32 = 16 tokens times one unpacked panel, from raw pointers: x (i8*) at
    the first token's codes (rows n_blocks x 32 bytes apart), x_sums (i32*) and x_scales (f32*)
    at its first block (rows n_blocks apart), panel (i8*) [n_blocks, 8, 64], steps (f32*)
    [n_blocks, 2, 16]; n_blocks (i64) >= 1. The tiles must be configured for this kind."""
    halves = _halves(bits, affine)
    row_bytes = builder.mul(n_blocks, ir.Constant(I64, 32))
    results = [cgutils.alloca_once(builder, ir.ArrayType(INT32S, TILE_TOKENS * halves)) for _ in (0, 1)]
    for result in results:
        result.align = 64
    sums = [cgutils.alloca_once_value(builder, _constant(FLOATS, 0.0)) for _ in range(TILE_TOKENS)]

    def multiply(b, j):  # block b's tile products into result set j
        for h in range(halves):
            x_at = builder.gep(x, [builder.add(builder.mul(b, ir.Constant(I64, 32)), ir.Constant(I64, 16 * h))])
            w_at = builder.gep(panel, [builder.add(builder.mul(b, ir.Constant(I64, 512)), ir.Constant(I64, 256 * h))])
            _tile_call(builder, "tileloadd64", [_tile(ACTIVATION + j), x_at, row_bytes])
            _tile_call(builder, "tileloadd64", [_tile(WEIGHT + j), w_at, ir.Constant(I64, 64)])
            _tile_call(builder, "tilezero", [_tile(RESULT + 2 * j + h)])
            _tile_call(builder, "tdpbssd", [_tile(RESULT + 2 * j + h), _tile(ACTIVATION + j), _tile(WEIGHT + j)])
            stored = builder.bitcast(builder.gep(results[j], [ir.Constant(I32, 0), ir.Constant(I32, TILE_TOKENS * h)]),
                                     I8.as_pointer())
            _tile_call(builder, "tilestored64", [_tile(RESULT + 2 * j + h), stored, ir.Constant(I64, 64)])

    def scale(b, j):  # block b's integer tiles (set j) scaled into the float sums
        at = builder.mul(b, ir.Constant(I64, 2 * PANEL_ROWS))
        first = builder.load(builder.bitcast(builder.gep(steps, [at]), FLOATS.as_pointer()), align=4)
        second = builder.load(builder.bitcast(builder.gep(steps, [builder.add(at, ir.Constant(I64, PANEL_ROWS))]),
                                              FLOATS.as_pointer()), align=4)
        for i in range(TILE_TOKENS):
            token_block = builder.add(builder.mul(ir.Constant(I64, i), n_blocks), b)
            x_scale = _splat(builder, builder.load(builder.gep(x_scales, [token_block])), PANEL_ROWS)

            def integer(h):
                row = builder.gep(results[j], [ir.Constant(I32, 0), ir.Constant(I32, TILE_TOKENS * h + i)])
                return builder.sitofp(builder.load(row, align=64), FLOATS)

            if halves == 2:  # int6k: x_scale (step_0 C_0 + step_1 C_1)
                value = builder.fadd(builder.fmul(integer(0), first), builder.fmul(integer(1), second))
            elif affine:  # int4k: x_scale (step C - offset x_sum)
                x_sum = _splat(builder, builder.sitofp(builder.load(builder.gep(x_sums, [token_block])), F32), PANEL_ROWS)
                value = builder.fsub(builder.fmul(integer(0), first), builder.fmul(second, x_sum))
            else:
                value = builder.fmul(integer(0), first)
            builder.store(builder.fadd(builder.load(sums[i]), builder.fmul(value, x_scale)), sums[i])

    one, two = ir.Constant(I64, 1), ir.Constant(I64, 2)
    multiply(ir.Constant(I64, 0), 0)
    with cgutils.for_range(builder, builder.udiv(builder.sub(n_blocks, one), two)) as loop:  # blocks 1 .. in pairs
        odd = builder.add(builder.mul(loop.index, two), one)
        multiply(odd, 1)
        scale(builder.sub(odd, one), 0)
        multiply(builder.add(odd, one), 0)
        scale(odd, 1)
    last = builder.sub(n_blocks, one)
    with builder.if_else(builder.icmp_unsigned("==", builder.urem(n_blocks, two), ir.Constant(I64, 0))) as (even, odd):
        with even:  # block last is still to multiply (set 1); last - 1 waits in set 0
            multiply(last, 1)
            scale(builder.sub(last, one), 0)
            scale(last, 1)
        with odd:  # block last waits in set 0
            scale(last, 0)
    for i in range(TILE_TOKENS):
        out = builder.bitcast(builder.gep(tile, [ir.Constant(I32, PANEL_ROWS * i)]), FLOATS.as_pointer())
        builder.store(builder.load(sums[i]), out, align=4)


@intrinsic
def _configure(typingctx, codes, scale_bits):
    """Tile configuration for the kind of (codes, scale_bits); once per thread and kernel."""
    kind = _kind(codes, scale_bits)
    if kind is None:
        return None

    def codegen(context, builder, signature, args):
        configure_tiles(builder, _halves(*kind))
        return context.get_dummy_value()

    return types.void(codes, scale_bits), codegen


@intrinsic
def _release(typingctx):
    def codegen(context, builder, signature, args):
        release_tiles(builder)
        return context.get_dummy_value()

    return types.void(), codegen


@intrinsic
def _unpack_group(typingctx, codes, scale_bits, g, half, scale_shift, panel, steps):
    """Row group g's blocks into half `half` (rows 8 half ..) of panel [B, 8, 64] int8 and steps
    [B, 2, 16] float32: the codes as the tile product's signed bytes, the steps as the kind has
    them (symmetric: the scale, then nothing; int4k: step, offset; int6k: the halves' steps)."""
    kind = _kind(codes, scale_bits)
    if kind is None:
        return None
    bits, affine = kind
    signature = types.void(codes, scale_bits, types.intp, types.intp, types.intp, panel, steps)

    def codegen(context, builder, signature, args):
        t = signature.args
        arrays = {i: context.make_array(t[i])(context, builder, args[i]) for i in (0, 1, 5, 6)}
        g, half, scale_shift = args[2], args[3], args[4]
        zero = context.get_constant(types.intp, 0)
        eight = ir.VectorType(F32, ROWS)
        n_blocks = cgutils.unpack_tuple(builder, arrays[0].shape, t[0].ndim)[1]
        panel_bytes = builder.bitcast(arrays[5].data, I8.as_pointer())
        step_floats = builder.bitcast(arrays[6].data, F32.as_pointer())
        with cgutils.for_range(builder, n_blocks) as loop:
            b = loop.index
            chunk_pointer = _pointer(context, builder, t[0], arrays[0], [g, b] + [zero] * (t[0].ndim - 2), BYTES)
            chunks = [builder.load(builder.gep(chunk_pointer, [ir.Constant(I32, c)]), align=1) for c in range(CHUNKS[bits])]
            weights = [w for w, _ in _operand_pairs(builder, bits, chunks, lambda c: None)]
            if not (affine and bits == 4):  # int4k multiplies its unsigned nibbles as they are
                weights = [w for w, _ in _signed(builder, bits, [(w, None) for w in weights])]
            for k, w in enumerate(weights):
                at = builder.add(builder.mul(b, ir.Constant(I64, 512)), builder.add(ir.Constant(I64, 64 * k),
                                                                                    builder.mul(half, ir.Constant(I64, 32))))
                builder.store(w, builder.bitcast(builder.gep(panel_bytes, [at]), BYTES.as_pointer()), align=1)
            if affine:
                super_pointer = _pointer(context, builder, t[1], arrays[1], [g, builder.lshr(b, scale_shift), zero], I8)
                block_in_super = builder.trunc(builder.and_(b, context.get_constant(types.intp, 7)), I32)
                pair = (_sub_scale_steps if bits == 6 else _affine_steps)(builder, super_pointer, block_in_super)
            else:
                scales_pointer = _pointer(context, builder, t[1], arrays[1], [g, builder.lshr(b, scale_shift), zero],
                                          ir.VectorType(ir.HalfType(), ROWS))
                pair = (builder.fpext(builder.load(scales_pointer, align=2), eight), _constant(eight, 0.0))
            for which, value in enumerate(pair):
                at = builder.add(builder.mul(b, ir.Constant(I64, 2 * PANEL_ROWS)),
                                 builder.add(ir.Constant(I64, PANEL_ROWS * which), builder.mul(half, ir.Constant(I64, ROWS))))
                builder.store(value, builder.bitcast(builder.gep(step_floats, [at]), eight.as_pointer()), align=4)
        return context.get_dummy_value()

    return signature, codegen


@intrinsic
def _tokens_times_panel(typingctx, codes, scale_bits, x_codes, x_sums, x_scales, t0, panel, steps, tile):
    """tile [16, 16] = tokens t0 .. t0 + 15 times the unpacked panel (`tokens_times_panel`)."""
    kind = _kind(codes, scale_bits)
    if kind is None:
        return None
    signature = types.void(codes, scale_bits, x_codes, x_sums, x_scales, types.intp, panel, steps, tile)

    def codegen(context, builder, signature, args):
        t = signature.args
        arrays = {i: context.make_array(t[i])(context, builder, args[i]) for i in (2, 3, 4, 6, 7, 8)}
        t0, zero = args[5], context.get_constant(types.intp, 0)
        n_blocks = cgutils.unpack_tuple(builder, arrays[4].shape, 2)[1]
        tokens_times_panel(builder, *kind,
                           _pointer(context, builder, t[2], arrays[2], [t0, zero, zero], I8),
                           _pointer(context, builder, t[3], arrays[3], [t0, zero], I32),
                           _pointer(context, builder, t[4], arrays[4], [t0, zero], F32),
                           n_blocks, builder.bitcast(arrays[6].data, I8.as_pointer()),
                           builder.bitcast(arrays[7].data, F32.as_pointer()), builder.bitcast(arrays[8].data, F32.as_pointer()))
        return context.get_dummy_value()

    return signature, codegen


@njit(parallel=True, nogil=True, cache=True)
def matmul_amx(codes, scale_bits, x_codes, x_sums, x_scales, out, n_chunks):
    """out [T, N] = x W^T on AMX tiles (see the module doc); x_* padded to a multiple of 16 rows."""
    n_groups, n_blocks = codes.shape[0], codes.shape[1]
    n_tokens, n_out = out.shape
    n_panels = (n_groups + 1) // 2
    per_chunk = (n_panels + n_chunks - 1) // n_chunks
    shift = _scale_shift(codes, scale_bits)
    token_block = max(TILE_TOKENS, TOKEN_BLOCK_BYTES // (32 * n_blocks) // TILE_TOKENS * TILE_TOKENS)
    for chunk in prange(n_chunks):
        panel = np.zeros((n_blocks, 8, 64), np.int8)
        steps = np.zeros((n_blocks, 2, PANEL_ROWS), np.float32)
        tile = np.empty((TILE_TOKENS, PANEL_ROWS), np.float32)
        first, stop = chunk * per_chunk, min(n_panels, (chunk + 1) * per_chunk)
        if first < stop:
            _configure(codes, scale_bits)
            for token_start in range(0, n_tokens, token_block):
                token_stop = min(n_tokens, token_start + token_block)
                for p in range(first, stop):
                    _unpack_group(codes, scale_bits, 2 * p, 0, shift, panel, steps)
                    if 2 * p + 1 < n_groups:
                        _unpack_group(codes, scale_bits, 2 * p + 1, 1, shift, panel, steps)
                    else:  # an odd last group: the panel's second half multiplies zeros
                        panel[:, :, 32:] = 0
                        steps[:, :, ROWS:] = 0
                    columns = min(PANEL_ROWS, n_out - PANEL_ROWS * p)
                    for t0 in range(token_start, token_stop, TILE_TOKENS):
                        _tokens_times_panel(codes, scale_bits, x_codes, x_sums, x_scales, t0, panel, steps, tile)
                        for i in range(min(TILE_TOKENS, token_stop - t0)):
                            for n in range(columns):
                                out[t0 + i, PANEL_ROWS * p + n] = tile[i, n]
            _release()
    return out
