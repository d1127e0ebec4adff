"""The AMX prefill kernel (amx.py) against the NumPy twin, and its assembly on every machine.

On a CPU with AMX (and Linux's permission for its tile state) `matmul_amx` runs on random codes
and scales of every kind, with a fresh seed per test (printed on failure), row counts that leave
an odd last row group and a partial last panel, token counts on both sides of the 16-token tile
(the padding rows hold zeros, or garbage, which must never reach the output), outputs poisoned
with NaN. Elsewhere those tests skip, and the assembly test still compiles the tile code for a
Sapphire Rapids target and reads its instructions."""

import os
import subprocess
import sys

import llvmlite.binding as llvm
import numpy as np
import pytest
from llvmlite import ir

from test_kernels import SCHEMES, TOLERANCE, fresh_rng, random_weight, relative_error, twin
from tinyexaone import amx, kernels
from tinyexaone.quantized import activation_buffers, matmul_fused

ON_AMX = amx.prefill_path() == "amx"
needs_amx = pytest.mark.skipif(not ON_AMX, reason="this CPU (or OS) has no AMX tiles")


def padded_input(x, padding="zeros"):
    """x quantized into buffers of a multiple of 16 rows: zeros (as FusedMatmul pads) or garbage."""
    n_tokens = x.shape[0]
    inputs = activation_buffers(-(-n_tokens // amx.TILE_TOKENS) * amx.TILE_TOKENS, x.shape[1])
    rng = np.random.default_rng(0)
    for array in inputs:
        array[n_tokens:] = 0 if padding == "zeros" else rng.integers(-100, 100, array[n_tokens:].shape)
    kernels.quantize_activations(x, *(array[:n_tokens] for array in inputs))
    return inputs


@needs_amx
@pytest.mark.parametrize("bits,group_size,affine", SCHEMES)
def test_amx_matmul_matches_numpy_twin(bits, group_size, affine):
    seed, rng = fresh_rng()
    weight = random_weight(rng, bits, group_size, affine, max_rows=400, max_groups=20)
    for n_tokens, padding in ((1, "zeros"), (16, "zeros"), (int(rng.integers(17, 80)), "garbage")):
        x = rng.standard_normal((n_tokens, weight.shape[1])).astype(np.float32)
        out = np.full((n_tokens, weight.shape[0]), np.nan, np.float32)
        n_chunks = int(rng.integers(1, 9))
        amx.matmul_amx(weight._codes, weight._scale_bits, *padded_input(x, padding), out, n_chunks)
        assert np.isfinite(out).all(), f"seed {seed}, T={n_tokens}: output left unwritten"
        assert relative_error(out, twin(weight, x)) <= TOLERANCE, f"seed {seed}, shape {weight.shape}, T={n_tokens}"


@needs_amx
@pytest.mark.parametrize("bits,group_size,affine", [(4, 32, True), (6, 32, True), (8, 32, False)])
def test_prefill_products_take_the_tiles_and_match_the_twin(bits, group_size, affine):
    """matmul_fused (the prefill's entry) at 16 tokens and more: the AMX kernel, padded by FusedMatmul."""
    seed, rng = fresh_rng()
    weights = [random_weight(rng, bits, group_size, affine, max_rows=300, max_groups=8)]
    width = weights[0].shape[1]
    while len(weights) < 2:  # a second matrix of the same input width, as q/k/v share h
        other = random_weight(rng, bits, group_size, affine, max_rows=300, max_groups=8)
        weights += [other] if other.shape[1] == width else []
    x = rng.standard_normal((int(rng.integers(16, 50)), width)).astype(np.float32)
    for weight, out in zip(weights, matmul_fused(weights, x)):
        assert relative_error(out, twin(weight, x)) <= TOLERANCE, f"seed {seed}, shape {weight.shape}"


def tile_function(bits: int, affine: bool) -> str:
    """LLVM IR of `void product(i8* x, i32* sums, float* scales, i8* panel, float* steps, float* tile)`:
    the tile configuration, one 16-token product over 5 blocks and the release."""
    module = ir.Module(name=f"tiles_{bits}_{affine}")
    pointers = [amx.I8.as_pointer(), amx.I32.as_pointer(), amx.F32.as_pointer(), amx.I8.as_pointer(),
                amx.F32.as_pointer(), amx.F32.as_pointer()]
    function = ir.Function(module, ir.FunctionType(ir.VoidType(), pointers), name="product")
    x, sums, scales, panel, steps, tile = function.args
    builder = ir.IRBuilder(function.append_basic_block())
    amx.configure_tiles(builder, amx._halves(bits, affine))
    amx.tokens_times_panel(builder, bits, affine, x, sums, scales, ir.Constant(amx.I64, 5), panel, steps, tile)
    amx.release_tiles(builder)
    builder.ret_void()
    return str(module)


@pytest.mark.parametrize("bits,affine", [(4, False), (6, False), (8, False), (4, True), (6, True)])
def test_the_tile_code_compiles_to_amx_instructions(bits, affine):
    llvm.initialize_all_targets()
    llvm.initialize_all_asmprinters()
    triple = "x86_64-unknown-linux-gnu"
    machine = llvm.Target.from_triple(triple).create_target_machine(cpu="sapphirerapids", opt=2)
    module = llvm.parse_assembly(tile_function(bits, affine))
    module.triple = triple
    module.verify()
    text = machine.emit_assembly(module).lower()
    for instruction in ("ldtilecfg", "tileloadd", "tilezero", "tdpbssd", "tilestored", "tilerelease"):
        assert instruction in text, f"int{bits} affine={affine}: no {instruction}"
    assert text.count("tdpbssd") >= 3 * amx._halves(bits, affine)  # the first block, the pair loop, the last


def test_prefill_path_follows_the_features_and_the_forced_path(tmp_path):
    """Without AMX in the features Numba compiles for, or with a forced dot path, prefill is not on tiles."""
    probe = "from tinyexaone import amx; print(amx.prefill_path())"
    cases = [({"NUMBA_CPU_NAME": "x86-64", "NUMBA_CPU_FEATURES": "+avx2,+avx512vnni,+avx512vl"}, "vnni"),
             ({"NUMBA_CPU_NAME": "x86-64", "NUMBA_CPU_FEATURES": "+avx2,+fma"}, "avx2")]
    if ON_AMX:
        cases += [({}, "amx"), ({"TINYEXAONE_KERNEL_PATH": "avx2"}, "avx2"), ({"TINYEXAONE_KERNEL_PATH": "vnni"}, "amx")]
    for extra, path in cases:
        env = {k: v for k, v in os.environ.items() if k != "TINYEXAONE_KERNEL_PATH"}
        env.update(NUMBA_CACHE_DIR=str(tmp_path / "numba"), **extra)
        done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == path, (extra, done.stdout)
