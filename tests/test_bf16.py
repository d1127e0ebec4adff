"""BF16 weights used in place: the Numba kernel and the tiled BLAS path against NumPy twins."""

import numpy as np
import pytest

from tinyexaone.bf16 import Bf16Weight, bf16_matmul_rows, bf16_matmul_rows_numpy, bf16_matmul_rows_serial
from tinyexaone.safetensors_file import widen_bf16
from tinyexaone.kernels import chunk_count


def random_bits(rng, shape):
    return (rng.standard_normal(shape).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)


@pytest.mark.parametrize("rows, out_dim, in_dim", [(1, 37, 53), (1, 515, 130), (3, 64, 200), (7, 129, 33)])
def test_kernel_matches_numpy_twin(rows, out_dim, in_dim):
    seed = np.random.SeedSequence().entropy
    rng = np.random.default_rng(seed)
    bits = random_bits(rng, (out_dim, in_dim))
    x = rng.standard_normal((rows, in_dim)).astype(np.float32)
    out = np.full((rows, out_dim), np.nan, np.float32)  # poisoned: every element must be written
    serial = np.full((rows, out_dim), np.nan, np.float32)
    bf16_matmul_rows(bits, x, out, chunk_count(out_dim))
    bf16_matmul_rows_serial(bits, x, serial)
    expected = bf16_matmul_rows_numpy(bits, x)
    scale = np.abs(x) @ np.abs(widen_bf16(bits)).T
    assert np.all(np.abs(out - expected) <= 1e-5 * scale), f"seed {seed}"
    assert np.all(np.abs(serial - expected) <= 1e-5 * scale), f"seed {seed}"


@pytest.mark.parametrize("rows", [1, 5, 8, 33])
def test_weight_matmul_and_rows(rows):
    seed = np.random.SeedSequence().entropy
    rng = np.random.default_rng(seed)
    bits = random_bits(rng, (301, 96))
    bits.setflags(write=False)  # like a read-only memory map: never written
    weight = Bf16Weight(bits)
    x = rng.standard_normal((rows, 96)).astype(np.float32)
    expected = x.astype(np.float64) @ widen_bf16(bits).astype(np.float64).T
    np.testing.assert_allclose(weight.matmul(x), expected, rtol=1e-4, atol=1e-4, err_msg=f"seed {seed}")
    ids = np.array([0, 300, 7])
    np.testing.assert_array_equal(weight.rows(ids), widen_bf16(bits)[ids])


def test_widening_is_exact():
    values = np.array([1.0, -2.5, 0.0, -0.0, np.inf, -np.inf, 2.0**127, 2.0**-126, 2.0**-133], np.float32)
    bits = (values.view(np.uint32) >> 16).astype(np.uint16)
    np.testing.assert_array_equal(widen_bf16(bits), values)
