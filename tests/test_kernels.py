"""Numba quantized-matrix kernels against their NumPy twins (kernels.py, integer_dot.py).

Random codes and scales with a fresh seed per test (printed on failure), row counts that are not
multiples of the 8-row groups, token counts on both sides of the 4-token tile, every scheme and
group size (int6's nibbles and 2-bit plane, and the affine int4k kind: random nibbles, 6-bit
codes and float16 d / dmin; int6k: int6's codes, random int8 sub-scales under float16 d),
outputs poisoned with NaN before each call. The integer paths a CPU cannot run here
are covered by the generic-path rerun below and, for AArch64 sdot, by the aarch64 check script.
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tinyexaone import integer_dot, kernels
from tinyexaone.quantized import (AFFINE_HEADER, CODE_ARRAYS, SUB6_HEADER, QuantizedWeight, expected_arrays, matmul_fused,
                                  unpack_affine, unpack_codes, unpack_scales, unpack_sub_scales)

# (bits, group size, affine): the symmetric kinds and int4k
SCHEMES = [(bits, group, False) for bits in (4, 6, 8) for group in (32, 64, 128)] + [(4, 32, True), (6, 32, True)]
TOLERANCE = 1e-5  # relative to the largest output magnitude: float32 rounding of a B-term sum


def fresh_rng():
    seed = int(np.random.SeedSequence().entropy % 2**32)
    return seed, np.random.default_rng(seed)


def random_arrays(rng, bits, group_size, shape, affine=False):
    """Stored arrays of random codes and signed float16 scales of realistic size (int4k: random
    6-bit codes, d and dmin float16 of either size order)."""
    arrays = {}
    for name, (dtype, array_shape) in expected_arrays(bits, group_size, shape, affine=affine).items():
        if name == "scales" and affine:
            scales = rng.integers(0, 256, array_shape, np.uint8)
            header = rng.uniform(1e-4, 1e-3, array_shape[:-1] + (AFFINE_HEADER // 2,)) * rng.uniform(0.1, 10.0)
            scales[..., :AFFINE_HEADER] = header.astype(np.float16).view(np.uint8)
            arrays[name] = scales
        elif name == "scales":
            magnitudes = rng.uniform(1e-3, 3e-2, array_shape) * rng.choice([-1.0, 1.0], array_shape)
            arrays[name] = magnitudes.astype(np.float16)
        else:
            arrays[name] = rng.integers(0, 256, array_shape, np.uint8).view(dtype)
    return arrays


def random_weight(rng, bits, group_size, affine=False, max_rows=300, max_groups=12):
    unit = 256 if affine else group_size  # int4k input sizes are multiples of its 256-element super-blocks
    shape = (int(rng.integers(1, max_rows)), unit * int(rng.integers(1, max(2, max_groups * group_size // unit))))
    return QuantizedWeight.from_arrays(bits, group_size, shape, random_arrays(rng, bits, group_size, shape, affine), affine)


def twin(weight, x):
    rows = np.arange(weight.shape[0])
    codes = unpack_codes(weight._codes, rows, weight.affine)
    if weight.affine and weight.bits == 6:
        return kernels.matmul_numpy(codes, unpack_sub_scales(weight.arrays["scales"], rows), x)
    if weight.affine:
        steps, offsets = unpack_affine(weight.arrays["scales"], rows)  # [N, B] each
        return kernels.matmul_numpy(codes, steps, x, offsets)
    return kernels.matmul_numpy(codes, unpack_scales(weight.arrays["scales"], rows).astype(np.float32), x)


def relative_error(actual, expected):
    return float(np.max(np.abs(actual - expected)) / max(float(np.max(np.abs(expected))), 1e-30))


def quantized_input(x):
    n_tokens, n_blocks = x.shape[0], x.shape[1] // 32
    x_codes = np.full((n_tokens, n_blocks, 32), 99, np.int8)
    x_sums = np.full((n_tokens, n_blocks), -1, np.int32)
    x_scales = np.full((n_tokens, n_blocks), np.nan, np.float32)
    kernels.quantize_activations(x, x_codes, x_sums, x_scales)
    return x_codes, x_sums, x_scales


@pytest.mark.parametrize("bits,group_size,affine", SCHEMES)
def test_matmul_matches_numpy_twin(bits, group_size, affine):
    seed, rng = fresh_rng()
    weight = random_weight(rng, bits, group_size, affine)
    for n_tokens in (1, 3, 4, int(rng.integers(5, 40))):
        x = rng.standard_normal((n_tokens, weight.shape[1])).astype(np.float32)
        out = np.full((n_tokens, weight.shape[0]), np.nan, np.float32)
        kernels.matmul(weight._codes, weight._scale_bits, *quantized_input(x), out, kernels.chunk_count(weight._codes.shape[0]))
        assert np.isfinite(out).all(), f"seed {seed}, T={n_tokens}: output left unwritten"
        assert relative_error(out, twin(weight, x)) <= TOLERANCE, f"seed {seed}, shape {weight.shape}, T={n_tokens}"


@pytest.mark.parametrize("bits,group_size,affine", SCHEMES)
def test_serial_matmul_equals_the_parallel_one(bits, group_size, affine):
    seed, rng = fresh_rng()
    weight = random_weight(rng, bits, group_size, affine)
    x = rng.standard_normal((int(rng.integers(1, 9)), weight.shape[1])).astype(np.float32)
    inputs = quantized_input(x)
    parallel = np.full((x.shape[0], weight.shape[0]), np.nan, np.float32)
    serial = parallel.copy()
    kernels.matmul(weight._codes, weight._scale_bits, *inputs, parallel, 3)
    kernels.matmul_serial(weight._codes, weight._scale_bits, *inputs, serial)
    np.testing.assert_array_equal(serial, parallel, err_msg=f"seed {seed}")


def test_quantize_activations_matches_numpy_bit_for_bit():
    """Codes, scales and code sums equal the twin's, ties and zero blocks included, serial and parallel."""
    seed, rng = fresh_rng()
    x = (rng.standard_normal((3, 32 * 40)) * rng.uniform(1e-4, 1e4)).astype(np.float32)
    x[0, :32] = 0.0  # an all-zero block
    x[1, 32:64] = np.arange(32, dtype=np.float32) - 15.5  # many exact halves after scaling
    x[2, 64:96] = np.float32(127.0) * (np.arange(32) % 5) / 2  # code ties at .5
    x_codes, x_sums, x_scales = quantized_input(x)
    serial = [np.empty_like(a) for a in (x_codes, x_sums, x_scales)]
    kernels.quantize_activations_serial(x, *serial)
    for t in range(3):
        codes, scales = kernels.quantize_rows_numpy(x[t].reshape(-1, 32))
        np.testing.assert_array_equal(x_codes[t], codes, err_msg=f"seed {seed}")
        np.testing.assert_array_equal(x_scales[t], scales, err_msg=f"seed {seed}")
        np.testing.assert_array_equal(x_sums[t], codes.astype(np.int32).sum(axis=1), err_msg=f"seed {seed}")
    for got, want in zip(serial, (x_codes, x_sums, x_scales)):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("bits,group_size,affine", SCHEMES)
@pytest.mark.parametrize("n_tokens", [1, 2, 7, 61])
def test_weight_matmul_matches_its_kernels_twin(bits, group_size, affine, n_tokens):
    """QuantizedWeight.matmul, serial for small products and parallel for large ones."""
    seed, rng = fresh_rng()
    weight = random_weight(rng, bits, group_size, affine, max_rows=200, max_groups=40)
    x = rng.standard_normal((n_tokens, weight.shape[1])).astype(np.float32)
    out = np.full((n_tokens, weight.shape[0]), np.nan, np.float32)
    weight.matmul(x, out=out)
    assert relative_error(out, twin(weight, x)) <= TOLERANCE, f"seed {seed}, shape {weight.shape}"
    np.testing.assert_array_equal(weight.matmul(x), out)


@pytest.mark.parametrize("bits,group_size,affine", SCHEMES)
def test_activation_quantization_error_is_within_its_bound(bits, group_size, affine):
    """x is quantized per 32-element block with step d = max|x| / 127 and rounding to nearest,
    so each element moves by at most d / 2 and |W x - W x_q| <= sum |w| d / 2."""
    seed, rng = fresh_rng()
    weight = random_weight(rng, bits, group_size, affine, max_rows=200, max_groups=40)
    x = (rng.standard_normal(weight.shape[1]) * rng.uniform(1e-3, 1e3)).astype(np.float32)
    out = weight.matmul(x[None, :])[0]
    w = weight.dequantize().astype(np.float64)  # [N, K]
    _, x_scales = kernels.quantize_rows_numpy(x.reshape(-1, 32))
    bound = np.abs(w) @ np.repeat(x_scales.astype(np.float64) / 2, 32)  # [N]
    exact = w @ x.astype(np.float64)
    slack = 1e-5 * np.abs(w) @ np.abs(x.astype(np.float64))  # float32 rounding of the sums
    assert (np.abs(out - exact) <= bound + slack).all(), f"seed {seed}, shape {weight.shape}"
    assert (np.abs(out - exact) > slack).any(), f"seed {seed}: quantization left no trace"


@pytest.mark.parametrize("bits", [4, 6, 8])
@pytest.mark.parametrize("n_tokens", [1, 4])
def test_integer_sums_do_not_overflow_at_the_extremes(bits, n_tokens):
    """Largest codes times largest activation codes in every lane: the 16-bit partial sums
    (int4: 8 pair products of 15 x 127; int6: pairs of 63 x 127 unsigned, 32 x 127 signed;
    int8: pairs of 128 x 127) must stay in range."""
    n_cols = 32 * 9
    shape = (13, n_cols)
    arrays = {name: np.zeros(array_shape, dtype) for name, (dtype, array_shape) in expected_arrays(bits, 32, shape).items()}
    arrays["scales"][:] = 1.0
    for code in ((-128, 127) if bits == 8 else (0x00, 0xFF)):  # int4 codes -8 / 7; int6 -32 / 31; int8 -128 / 127
        arrays[CODE_ARRAYS[bits]][:] = code
        value = code if bits == 8 else ((code & 15) - 8 if bits == 4 else (code & 63) - 32)
        weight = QuantizedWeight.from_arrays(bits, 32, shape, arrays)
        for sign in (1.0, -1.0):
            x = np.full((n_tokens, n_cols), sign, np.float32)
            np.testing.assert_array_equal(weight.matmul(x), np.full((n_tokens, 13), value * sign * n_cols, np.float32))


@pytest.mark.parametrize("n_tokens", [1, 4])
def test_int4k_sums_do_not_overflow_at_the_extremes(n_tokens):
    """int4k at its largest codes (nibble 15, 6-bit scale and minimum 63) and at code 0, against
    activations +-1: every path adds the block's unsigned sum (15 x 127 x 32) and its offset term."""
    n_cols = 256 * 2
    shape = (13, n_cols)
    arrays = {name: np.zeros(array_shape, dtype) for name, (dtype, array_shape)
              in expected_arrays(4, 32, shape, affine=True).items()}
    arrays["scales"][..., :16] = np.full(8, 1.0, np.float16).view(np.uint8)  # d = 1
    arrays["scales"][..., 16:32] = np.full(8, 0.5, np.float16).view(np.uint8)  # dmin = 0.5
    arrays["scales"][..., AFFINE_HEADER:] = 0xFF  # every 6-bit scale and minimum code 63
    for nibbles, code in ((0x00, 0), (0xFF, 15)):
        arrays["nibbles"][:] = nibbles
        weight = QuantizedWeight.from_arrays(4, 32, shape, arrays, affine=True)
        value = 63.0 * code - 0.5 * 63.0
        np.testing.assert_array_equal(weight.dequantize(), np.full(shape, value, np.float32))
        for sign in (1.0, -1.0):
            x = np.full((n_tokens, n_cols), sign, np.float32)
            np.testing.assert_allclose(weight.matmul(x), np.full((n_tokens, 13), value * sign * n_cols), rtol=1e-6)


@pytest.mark.parametrize("n_tokens", [1, 4])
def test_int6k_sums_do_not_overflow_at_the_extremes(n_tokens):
    """int6k at its extreme codes (-32 and 31) under sub-scales +-127 (d = 1), against activations
    +-1: every path sums signed half blocks of up to 32 x 127 x 16."""
    n_cols = 256 * 2
    shape = (13, n_cols)
    arrays = {name: np.zeros(array_shape, dtype) for name, (dtype, array_shape)
              in expected_arrays(6, 32, shape, affine=True).items()}
    arrays["scales"][..., :SUB6_HEADER] = np.full(8, 1.0, np.float16).view(np.uint8)  # d = 1
    for byte, code in ((0x00, -32), (0xFF, 31)):
        arrays["codes"][:] = byte
        for sub in (127, -127):
            arrays["scales"][..., SUB6_HEADER:] = np.int8(sub).view(np.uint8)
            weight = QuantizedWeight.from_arrays(6, 32, shape, arrays, affine=True)
            np.testing.assert_array_equal(weight.dequantize(), np.full(shape, sub * code, np.float32))
            for sign in (1.0, -1.0):
                x = np.full((n_tokens, n_cols), sign, np.float32)
                np.testing.assert_allclose(weight.matmul(x), np.full((n_tokens, 13), sub * code * sign * n_cols), rtol=1e-6)


def test_non_finite_activations_give_non_finite_outputs():
    """A NaN or infinity in x must not vanish in the integer path: every output turns non-finite."""
    rng = np.random.default_rng(0)
    shape = (21, 256 * 2)
    for bits, affine in ((4, False), (6, False), (8, False), (4, True), (6, True)):
        weight = QuantizedWeight.from_arrays(bits, 32, shape, random_arrays(rng, bits, 32, shape, affine), affine)
        for bad in (np.nan, np.inf):
            x = rng.standard_normal((5, shape[1])).astype(np.float32)
            x[:, 100] = bad
            assert not np.isfinite(weight.matmul(x)).any()
            assert not np.isfinite(twin(weight, x)).any()


def test_float16_scales_widen_exactly_for_every_finite_value():
    """Every finite float16 scale (subnormals included) times code 1 and activation 1 comes back exactly."""
    all_bits = np.arange(2**16, dtype=np.uint16)
    finite = all_bits[np.isfinite(all_bits.view(np.float16))]
    n_rows = len(finite)  # one scale per row, a single block per row
    arrays = {"quants": np.ones((-(-n_rows // 8), 1, 256), np.int8),
              "scales": np.zeros((-(-n_rows // 8), 1, 8), np.float16)}
    arrays["scales"].reshape(-1)[:n_rows] = finite.view(np.float16)
    weight = QuantizedWeight.from_arrays(8, 32, (n_rows, 32), arrays)
    x = np.zeros((1, 32), np.float32)
    x[0, 0] = 1.0  # activation code 127 at scale 1 / 127: every block sum is 127
    scales = finite.view(np.float16).astype(np.float32)
    expected = np.float32(127.0) * (scales * (np.float32(1.0) / np.float32(127.0)))  # the kernels' order
    np.testing.assert_array_equal(weight.matmul(x)[0], expected)
    np.testing.assert_array_equal(twin(weight, x)[0], expected)


@pytest.mark.parametrize("bits", [4, 6, 8])
@pytest.mark.parametrize("n_tokens", [1, 6])
def test_fused_matmul_equals_separate_launches(bits, n_tokens):
    """One launch over q/k/v-like matrices (mixed group sizes and row counts) gives each matrix's own result."""
    seed, rng = fresh_rng()
    n_cols = 128 * int(rng.integers(1, 6))
    weights = []
    for group_size in (32, 128, 64):
        shape = (int(rng.integers(200, 600)), n_cols)  # large enough to run in parallel
        weights.append(QuantizedWeight.from_arrays(bits, group_size, shape, random_arrays(rng, bits, group_size, shape)))
    x = rng.standard_normal((n_tokens, n_cols)).astype(np.float32)
    for weight, out in zip(weights, matmul_fused(weights, x)):
        separate = np.full((n_tokens, weight.shape[0]), np.nan, np.float32)
        kernels.matmul_serial(weight._codes, weight._scale_bits, *quantized_input(x), separate)
        np.testing.assert_array_equal(out, separate, err_msg=f"seed {seed}")


@pytest.mark.parametrize("n_tokens", [1, 6])
def test_fused_matmul_of_int4k_and_of_mixed_kinds(n_tokens):
    """Three int4k matrices run in one launch and give each its own result; int4k beside int4 and
    int8, or between two int6 matrices (which cannot share a launch), gives each matrix's own result too."""
    seed, rng = fresh_rng()
    n_cols = 256 * int(rng.integers(1, 4))
    shapes = [(int(rng.integers(200, 600)), n_cols) for _ in range(3)]
    for kinds in ([(4, True)] * 3, [(4, True), (4, False), (8, False)], [(6, False), (4, True), (6, False)], [(6, True)] * 3,
                  [(6, True), (6, False), (4, True)]):
        weights = [QuantizedWeight.from_arrays(bits, 32, shape, random_arrays(rng, bits, 32, shape, affine), affine)
                   for (bits, affine), shape in zip(kinds, shapes)]
        x = rng.standard_normal((n_tokens, n_cols)).astype(np.float32)
        for weight, out in zip(weights, matmul_fused(weights, x)):
            separate = np.full((n_tokens, weight.shape[0]), np.nan, np.float32)
            kernels.matmul_serial(weight._codes, weight._scale_bits, *quantized_input(x), separate)
            np.testing.assert_array_equal(out, separate, err_msg=f"seed {seed}")
            assert relative_error(out, twin(weight, x)) <= TOLERANCE, f"seed {seed}"


def test_portable_integer_path_matches_numpy_twin(tmp_path):
    """The generic-IR integer dot (what CPUs without a special path run) passes the twin tests:
    rerun them in a fresh process with TINYEXAONE_KERNEL_PATH=generic and an empty Numba cache."""
    env = dict(os.environ, TINYEXAONE_KERNEL_PATH="generic", NUMBA_CACHE_DIR=str(tmp_path / "numba"))
    probe = subprocess.run([sys.executable, "-c", "from tinyexaone import integer_dot; print(integer_dot.integer_dot_path())"],
                           env=env, cwd=tmp_path, capture_output=True, text=True, check=True)
    assert probe.stdout.strip() == "generic"
    tests = [str(Path(__file__)), "-q", "-p", "no:cacheprovider", "-k", "matmul or overflow or non_finite or fused"]
    done = subprocess.run([sys.executable, "-m", "pytest", *tests], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:]
    assert " passed" in done.stdout and "deselected" in done.stdout


@pytest.mark.skipif(integer_dot.integer_dot_path() != "vnni", reason="this CPU has no VNNI: its path is the native one")
def test_avx2_path_matches_numpy_twin_on_a_vnni_cpu(tmp_path):
    """On a VNNI machine the AVX2 path (vpmaddubsw) is forced and rerun, so both x86 paths are tested."""
    env = dict(os.environ, TINYEXAONE_KERNEL_PATH="avx2", NUMBA_CACHE_DIR=str(tmp_path / "numba"))
    tests = [str(Path(__file__)), "-q", "-p", "no:cacheprovider", "-k", "matmul_matches or overflow"]
    done = subprocess.run([sys.executable, "-m", "pytest", *tests], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:]


def test_the_path_follows_the_cpu_numba_compiles_for(tmp_path):
    """With NUMBA_CPU_NAME/NUMBA_CPU_FEATURES (a portable cache), the path follows those features,
    not the host's: x86 intrinsics must never be emitted for a target without them."""
    probe = "from tinyexaone.amx import kernel_paths; print(kernel_paths())"
    for features, path in (("+sse2,-avx2", "generic"), ("+avx2,+fma", "avx2"), ("+avx2,+avxvnni", "vnni")):
        env = dict(os.environ, NUMBA_CPU_NAME="x86-64", NUMBA_CPU_FEATURES=features, NUMBA_CACHE_DIR=str(tmp_path / "numba"))
        done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert f"'integer_dot': '{path}'" in done.stdout and "'cpu': 'x86-64'" in done.stdout


def test_a_forced_path_the_cpu_cannot_run_is_ignored(tmp_path):
    env = dict(os.environ, NUMBA_CPU_NAME="x86-64", NUMBA_CPU_FEATURES="+avx2", TINYEXAONE_KERNEL_PATH="vnni")
    done = subprocess.run([sys.executable, "-c", "from tinyexaone import integer_dot; print(integer_dot.integer_dot_path())"],
                          env=env, cwd=tmp_path, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "avx2"
