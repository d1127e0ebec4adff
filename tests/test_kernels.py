"""Numba quantized-matrix kernels against their NumPy twins (kernels.py).

Random codes and scales with a fresh seed per test (printed on failure), shapes that are not
powers of two, every scheme and group size, outputs poisoned with NaN before each call.
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tinyexaone import integer_dot, kernels
from tinyexaone.quantized import PREFILL_MIN_TOKENS, QuantizedWeight, expected_arrays, matmul_fused

SCHEMES = [(bits, group) for bits in (4, 8) for group in (32, 64, 128)]
TOLERANCE = 1e-5  # relative to the largest output magnitude: float32 rounding of a K-term sum


def fresh_rng():
    seed = int(np.random.SeedSequence().entropy % 2**32)
    return seed, np.random.default_rng(seed)


def random_arrays(rng, bits, group_size, shape):
    """Stored arrays of random codes and signed float16 scales of realistic size."""
    arrays = {}
    for name, (dtype, array_shape) in expected_arrays(bits, group_size, shape).items():
        if name == "scales":
            magnitudes = rng.uniform(1e-3, 3e-2, array_shape) * rng.choice([-1.0, 1.0], array_shape)
            arrays[name] = magnitudes.astype(np.float16)
        else:
            arrays[name] = rng.integers(0, 256, array_shape, np.uint8).view(dtype)
    return arrays


def relative_error(actual, expected):
    return float(np.max(np.abs(actual - expected)) / max(float(np.max(np.abs(expected))), 1e-30))


def vector_and_tail_columns(rng, group_size):
    """An input size with 1-3 full int4 vector steps (integer_dot.Q4_LANES blocks, a multiple of
    the int8 step) and a random tail of whole groups (possibly none), so both the vector and the
    scalar path of a matvec run."""
    return 32 * integer_dot.Q4_LANES * int(rng.integers(1, 4)) + group_size * int(rng.integers(0, 8))


def kernel_pair(bits):
    if bits == 4:
        return kernels.q4_matvec, kernels.q4_matvec_numpy, kernels.q4_dequantize, kernels.q4_dequantize_numpy
    return kernels.q8_matvec, kernels.q8_matvec_numpy, kernels.q8_dequantize, kernels.q8_dequantize_numpy


def random_matvec_weight(rng, bits, group_size):
    """(rows, columns, codes, scale bits) of a random weight of 1-299 rows, vector and tail columns."""
    n_rows = int(rng.integers(1, 300))
    n_cols = vector_and_tail_columns(rng, group_size)
    arrays = random_arrays(rng, bits, group_size, (n_rows, n_cols))
    return n_rows, n_cols, arrays["nibbles" if bits == 4 else "quants"], arrays["scales"].view(np.uint16)


@pytest.mark.parametrize("bits,group_size", SCHEMES)
def test_matvec_matches_numpy_twin(bits, group_size):
    seed, rng = fresh_rng()
    n_rows, n_cols, codes, scale_bits = random_matvec_weight(rng, bits, group_size)
    matvec, matvec_numpy, _, _ = kernel_pair(bits)
    n_tokens = int(rng.integers(1, 6))  # decode (1) and short prompts (each weight row read once)
    x = rng.standard_normal((n_tokens, n_cols)).astype(np.float32)
    out = np.full((n_tokens, n_rows), np.nan, np.float32)
    matvec(codes, scale_bits, x, out, kernels.chunk_count(n_rows))
    expected = np.stack([matvec_numpy(codes, scale_bits, row) for row in x])
    assert np.isfinite(out).all(), f"seed {seed}: output left unwritten"
    assert relative_error(out, expected) <= TOLERANCE, f"seed {seed}, shape {(n_rows, n_cols)}, T={n_tokens}"


@pytest.mark.parametrize("bits,group_size", SCHEMES)
def test_serial_matvec_matches_numpy_twin(bits, group_size):
    seed, rng = fresh_rng()
    n_rows, n_cols, codes, scale_bits = random_matvec_weight(rng, bits, group_size)
    serial = kernels.q4_matvec_serial if bits == 4 else kernels.q8_matvec_serial
    x = rng.standard_normal(n_cols).astype(np.float32)
    out = np.full(n_rows, np.nan, np.float32)
    serial(codes, scale_bits, x, out)
    expected = kernel_pair(bits)[1](codes, scale_bits, x)
    assert np.isfinite(out).all(), f"seed {seed}: output left unwritten"
    assert relative_error(out, expected) <= TOLERANCE, f"seed {seed}, shape {(n_rows, n_cols)}"


@pytest.mark.parametrize("bits,group_size", SCHEMES)
def test_dequantize_matches_numpy_twin(bits, group_size):
    seed, rng = fresh_rng()
    n_rows, n_cols = int(rng.integers(2, 90)), group_size * int(rng.integers(1, 7))
    arrays = random_arrays(rng, bits, group_size, (n_rows, n_cols))
    codes = arrays["nibbles" if bits == 4 else "quants"]
    scale_bits = arrays["scales"].view(np.uint16)
    _, _, dequantize, dequantize_numpy = kernel_pair(bits)
    start = int(rng.integers(0, n_rows - 1))
    tile = np.full((n_rows - start, n_cols), np.nan, np.float32)
    dequantize(codes, scale_bits, start, tile, kernels.chunk_count(len(tile)))
    # products of a small integer and a float16 are exact in float32: equality, not closeness
    expected = kernels.stored_order(dequantize_numpy(codes, scale_bits)[start:])
    np.testing.assert_array_equal(tile, expected, err_msg=f"seed {seed}")


def test_stored_order_matches_the_layout():
    x = np.arange(2 * 96, dtype=np.float32).reshape(2, 96)  # B = 3 blocks
    permuted = kernels.stored_order(x)
    for e in range(32):
        for b in range(3):
            assert (permuted[:, e * 3 + b] == x[:, 32 * b + e]).all()


@pytest.mark.parametrize("bits,group_size", SCHEMES)
@pytest.mark.parametrize("n_tokens", [1, 5, PREFILL_MIN_TOKENS - 1, PREFILL_MIN_TOKENS + 3])
def test_weight_matmul_matches_its_kernels_twin(bits, group_size, n_tokens):
    """QuantizedWeight.matmul: below PREFILL_MIN_TOKENS rows the decode kernel (activations
    quantized per block, so the twin is the matvec twin), from there the blocked prefill kernel
    (exact float32)."""
    seed, rng = fresh_rng()
    shape = (int(rng.integers(1, 200)), vector_and_tail_columns(rng, group_size))
    weight = QuantizedWeight.from_arrays(bits, group_size, shape, random_arrays(rng, bits, group_size, shape))
    x = rng.standard_normal((n_tokens, shape[1])).astype(np.float32)
    out = np.full((n_tokens, shape[0]), np.nan, np.float32)
    weight.matmul(x, out=out)
    if n_tokens < PREFILL_MIN_TOKENS:
        matvec_numpy = kernel_pair(bits)[1]
        expected = np.stack([matvec_numpy(weight._codes, weight._scale_bits, row) for row in x])
    else:
        expected = x.astype(np.float64) @ weight.dequantize().T.astype(np.float64)
    assert relative_error(out, expected) <= TOLERANCE, f"seed {seed}, shape {shape}"
    np.testing.assert_array_equal(weight.matmul(x), out)


@pytest.mark.parametrize("bits,group_size", SCHEMES)
def test_activation_quantization_error_is_within_its_bound(bits, group_size):
    """Decode quantizes x per 32-element block with step d = max|x| / 127 and rounding to
    nearest, so each element moves by at most d / 2 and |W x - W x_q| <= sum |w| d / 2."""
    seed, rng = fresh_rng()
    shape = (int(rng.integers(1, 200)), vector_and_tail_columns(rng, group_size))
    weight = QuantizedWeight.from_arrays(bits, group_size, shape, random_arrays(rng, bits, group_size, shape))
    x = (rng.standard_normal(shape[1]) * rng.uniform(1e-3, 1e3)).astype(np.float32)
    out = weight.matmul(x[None, :])[0]
    w = weight.dequantize().astype(np.float64)  # [N, K]
    _, x_scales = kernels.quantize_activation_numpy(x)
    bound = np.abs(w) @ np.repeat(x_scales.astype(np.float64) / 2, 32)  # [N]
    exact = w @ x.astype(np.float64)
    slack = 1e-5 * np.abs(w) @ np.abs(x.astype(np.float64))  # float32 rounding of the sums
    assert (np.abs(out - exact) <= bound + slack).all(), f"seed {seed}, shape {shape}"
    assert (np.abs(out - exact) > slack).any(), f"seed {seed}: quantization left no trace"


@pytest.mark.parametrize("bits", [4, 8])
def test_matvec_integer_sums_do_not_overflow_at_the_extremes(bits):
    """Largest codes times largest activation codes in every lane: the 16-bit partial sums
    (int4: 16 products of 15 x 127; int8: pairs of 128 x 127) must stay in range."""
    n_cols = 32 * integer_dot.Q4_LANES * 2 + 32 * 3  # vector steps and a scalar tail
    shape = (5, n_cols)
    arrays = {name: np.zeros(array_shape, dtype) for name, (dtype, array_shape) in expected_arrays(bits, 32, shape).items()}
    arrays["scales"][:] = 1.0
    if bits == 4:
        arrays["nibbles"][:] = 0xFF  # code 15 - 8 = 7 in both halves
    else:
        arrays["quants"][:] = -128
    weight = QuantizedWeight.from_arrays(bits, 32, shape, arrays)
    for sign in (1.0, -1.0):
        x = np.full((1, n_cols), sign, np.float32)
        expected = (7.0 if bits == 4 else -128.0) * sign * n_cols
        np.testing.assert_array_equal(weight.matmul(x)[0], np.full(5, expected, np.float32))


def test_quantized_activation_codes_match_between_numba_and_numpy():
    """The kernels' per-block rounding equals the twin's bit for bit, ties and zero blocks included."""
    seed, rng = fresh_rng()
    x = (rng.standard_normal(32 * 40) * rng.uniform(1e-4, 1e4)).astype(np.float32)
    x[:32] = 0.0  # an all-zero block
    x[32:64] = np.arange(32, dtype=np.float32) - 15.5  # many exact halves after scaling
    x[64:96] = np.float32(127.0) * (np.arange(32) % 5) / 2  # code ties at .5
    codes, scales = kernels.quantize_activation_numpy(x)
    n_blocks = 40  # one vector step of Q4_LANES blocks and a tail
    pairs, plain = np.empty((16, 2 * n_blocks), np.int8), np.empty((32, n_blocks), np.int8)
    x_scales, offsets = np.empty(n_blocks, np.float32), np.empty(n_blocks, np.float32)
    kernels._q4_prepare(x, pairs, plain, x_scales, offsets)
    np.testing.assert_array_equal(plain.T, codes, err_msg=f"seed {seed}")
    for k, (block_a, block_b) in enumerate(zip(integer_dot.Q4_BLOCKS_A, integer_dot.Q4_BLOCKS_B)):
        for s in range(2):
            np.testing.assert_array_equal(pairs[:, 2 * k + s], codes[block_a, 16 * s : 16 * s + 16])
            np.testing.assert_array_equal(pairs[:, 32 + 2 * k + s], codes[block_b, 16 * s : 16 * s + 16])
    assert sorted(integer_dot.Q4_BLOCKS_A + integer_dot.Q4_BLOCKS_B) == list(range(integer_dot.Q4_LANES))
    np.testing.assert_array_equal(offsets, 8 * codes.sum(axis=1).astype(np.float32))


def test_non_finite_activations_give_non_finite_outputs():
    """A NaN or infinity in x must not vanish in the integer path: every output turns non-finite."""
    rng = np.random.default_rng(0)
    shape = (7, 32 * integer_dot.Q4_LANES + 64)
    for bits in (4, 8):
        weight = QuantizedWeight.from_arrays(bits, 32, shape, random_arrays(rng, bits, 32, shape))
        for bad in (np.nan, np.inf):
            x = rng.standard_normal((1, shape[1])).astype(np.float32)
            x[0, 100] = bad
            assert not np.isfinite(weight.matmul(x)).any()
            assert not np.isfinite(kernel_pair(bits)[1](weight._codes, weight._scale_bits, x[0])).any()


@pytest.mark.parametrize("bits,group_size", SCHEMES)
def test_prefill_matmul_matches_numpy_twin(bits, group_size):
    """Blocked prefill kernel: row counts not a multiple of PREFILL_ROWS, odd and even T."""
    seed, rng = fresh_rng()
    shape = (int(rng.integers(1, 150)), group_size * int(rng.integers(1, 9)))
    arrays = random_arrays(rng, bits, group_size, shape)
    codes, scale_bits = arrays["nibbles" if bits == 4 else "quants"], arrays["scales"].view(np.uint16)
    matmul = kernels.q4_matmul if bits == 4 else kernels.q8_matmul
    dequantize_numpy = kernels.q4_dequantize_numpy if bits == 4 else kernels.q8_dequantize_numpy
    for n_tokens in (1, 2, int(rng.integers(3, 40))):
        x = rng.standard_normal((n_tokens, shape[1])).astype(np.float32)
        out = np.full((n_tokens, shape[0]), np.nan, np.float32)
        matmul(codes, scale_bits, kernels.stored_order(x), out, kernels.chunk_count(shape[0]))
        expected = kernels.matmul_numpy(dequantize_numpy(codes, scale_bits), x)
        assert np.isfinite(out).all(), f"seed {seed}, T={n_tokens}: output left unwritten"
        assert relative_error(out, expected) <= TOLERANCE, f"seed {seed}, shape {shape}, T={n_tokens}"


def test_half_to_float_is_exact_for_every_finite_float16():
    """Every finite float16 scale (subnormals included) times code 1 comes back exactly."""
    all_bits = np.arange(2**16, dtype=np.uint16)
    scale_bits = all_bits[np.isfinite(all_bits.view(np.float16))][None, :]  # [1, G]
    codes = np.ones((1, 32, scale_bits.shape[1]), np.int8)  # every element is code 1
    tile = np.full((1, 32 * scale_bits.shape[1]), np.nan, np.float32)
    kernels.q8_dequantize(codes, scale_bits, 0, tile, 1)
    expected = np.tile(scale_bits.view(np.float16).astype(np.float32), 32)  # stored order: e-major
    np.testing.assert_array_equal(tile, expected)


@pytest.mark.parametrize("bits", [4, 8])
def test_fused_matvec_equals_separate_launches(bits):
    """One launch over q/k/v-like matrices (mixed group sizes) gives each matrix's own result."""
    seed, rng = fresh_rng()
    n_cols = 32 * integer_dot.Q4_LANES + 128 * int(rng.integers(0, 4))
    weights = []
    for group_size in (32, 128, 64):
        shape = (int(rng.integers(1, 150)), n_cols)
        weights.append(QuantizedWeight.from_arrays(bits, group_size, shape, random_arrays(rng, bits, group_size, shape)))
    x = rng.standard_normal((1, n_cols)).astype(np.float32)
    fused = matmul_fused(weights, x)
    for weight, out in zip(weights, fused):
        separate = np.full((1, weight.shape[0]), np.nan, np.float32)
        weight.matmul(x, out=separate)
        np.testing.assert_array_equal(out, separate, err_msg=f"seed {seed}")
    many_rows = rng.standard_normal((9, n_cols)).astype(np.float32)  # falls back to per-weight matmul
    for weight, out in zip(weights, matmul_fused(weights, many_rows)):
        np.testing.assert_array_equal(out, weight.matmul(many_rows))


def test_portable_integer_path_matches_numpy_twin(tmp_path):
    """The generic-IR integer dot (what ARM and non-AVX2 CPUs run) passes the matvec twin tests:
    rerun them in a fresh process with TINYEXAONE_GENERIC_KERNELS=1 and an empty Numba cache."""
    env = dict(os.environ, TINYEXAONE_GENERIC_KERNELS="1", NUMBA_CACHE_DIR=str(tmp_path / "numba"))
    probe = subprocess.run([sys.executable, "-c", "from tinyexaone import integer_dot; print(integer_dot.integer_dot_path())"],
                           env=env, cwd=tmp_path, capture_output=True, text=True, check=True)
    assert probe.stdout.strip() == "generic"
    tests = [str(Path(__file__)), "-q", "-p", "no:cacheprovider", "-k",
             "matvec or overflow or non_finite or activation_quantization"]
    done = subprocess.run([sys.executable, "-m", "pytest", *tests], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:]
    assert " passed" in done.stdout and "deselected" in done.stdout


def test_the_path_follows_the_cpu_numba_compiles_for(tmp_path):
    """With NUMBA_CPU_NAME/NUMBA_CPU_FEATURES (a portable cache), the path follows those features,
    not the host's: AVX2 intrinsics must never be emitted for a target without AVX2."""
    probe = "from tinyexaone.integer_dot import kernel_paths; print(kernel_paths())"
    env = dict(os.environ, NUMBA_CPU_NAME="x86-64", NUMBA_CPU_FEATURES="+sse2,-avx2",
               NUMBA_CACHE_DIR=str(tmp_path / "numba"))
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "'integer_dot': 'generic'" in done.stdout and "'cpu': 'x86-64'" in done.stdout
