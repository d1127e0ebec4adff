"""The per-layer decode kernels against their NumPy twins (fresh seeds, odd sizes, NaN-poisoned outputs)."""

import numpy as np
import pytest

from tinyexaone import layer_kernels as lk


def fresh_rng():
    seed = np.random.SeedSequence().entropy
    return np.random.default_rng(seed), seed


@pytest.mark.parametrize("kernel", [lk.add_rms_norm, lk.add_rms_norm_rows])
@pytest.mark.parametrize("rows, width", [(1, 7), (37, 130), (5, 2048)])
def test_add_rms_norm(kernel, rows, width):
    rng, seed = fresh_rng()
    h = rng.standard_normal((rows, width)).astype(np.float32)
    a = (rng.standard_normal((rows, width)) * 30).astype(np.float32)
    w = rng.standard_normal(width).astype(np.float32)
    expected = h.copy()
    lk.add_rms_norm_numpy(expected, a, w, 1e-5)
    kernel(h, a, w, 1e-5)
    np.testing.assert_allclose(h, expected, rtol=1e-5, atol=1e-5, err_msg=f"seed {seed}")


@pytest.mark.parametrize("kernel", [lk.silu_mul, lk.silu_mul_rows])
@pytest.mark.parametrize("rows, width", [(1, 9), (23, 333)])
def test_silu_mul(kernel, rows, width):
    rng, seed = fresh_rng()
    gate = (rng.standard_normal((rows, width)) * 20).astype(np.float32)
    up = rng.standard_normal((rows, width)).astype(np.float32)
    out, expected = np.full_like(gate, np.nan), np.full_like(gate, np.nan)
    kernel(gate, up, out)
    lk.silu_mul_numpy(gate, up, expected)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5, err_msg=f"seed {seed}")


@pytest.mark.parametrize("heads, kv_heads, d, n_queries, first_query_pos, first_key_pos, n_stored, window", [
    (8, 2, 16, 37, 0, 0, 37, 0),      # a fresh prompt: queries and keys are the same positions
    (6, 3, 10, 9, 20, 0, 29, 0),      # a prompt continued after 20 cached tokens
    (4, 4, 64, 13, 40, 30, 23, 8),    # sliding window of 8: the cache holds positions 30..52
    (4, 1, 24, 5, 3, 0, 8, 100),      # a window wider than the sequence
])
def test_attention_prefill(heads, kv_heads, d, n_queries, first_query_pos, first_key_pos, n_stored, window):
    """The Numba prefill attention against the NumPy `model.attention` (BLAS score matrices)."""
    from tinyexaone.model import attention

    rng, seed = fresh_rng()
    assert first_key_pos + n_stored == first_query_pos + n_queries  # the last key is the last query's
    q = rng.standard_normal((n_queries, heads, d)).astype(np.float32)
    keys = (rng.standard_normal((n_stored, kv_heads, d)) * 3).astype(np.float32)
    values = rng.standard_normal((n_stored, kv_heads, d)).astype(np.float32)
    out = np.full((n_queries, heads, d), np.nan, np.float32)
    (key_codes, _), (value_codes, _) = lk.key_layout(keys, None), lk.value_layout(values, None)
    lk.attention_prefill(q, key_codes, None, value_codes, None, first_query_pos, first_key_pos, window, 3, out)
    expected = attention(q, keys, values, first_query_pos, first_key_pos, window or None)
    np.testing.assert_allclose(out.reshape(n_queries, -1), expected, rtol=1e-5, atol=1e-5, err_msg=f"seed {seed}")


def test_exp_nonpositive_matches_numpy():
    """The softmax exponential: within 3e-7 relative of np.exp from 0 to -87, 0 below and at -inf."""
    from numba import njit

    @njit
    def apply(x, out):
        for i in range(x.size):
            out[i] = lk.exp_nonpositive(x[i])

    rng, seed = fresh_rng()
    x = np.concatenate([-np.logspace(-9, np.log10(87.0), 100_000), -rng.uniform(0, 87, 100_000)]).astype(np.float32)
    edges = np.float32([0.0, -0.0, -87.0, -87.01, -88.0, -1e4, -np.inf])
    x = np.concatenate([x, edges])
    out = np.full_like(x, np.nan)
    apply(x, out)
    expected = np.exp(x.astype(np.float64))
    normal = x >= -87
    assert np.max(np.abs(out[normal] - expected[normal]) / expected[normal]) <= 3e-7, f"seed {seed}"
    assert (out[~normal] == 0).all() and out[0] == 1.0 and out[1] == 1.0
    nan = np.full(3, np.nan, np.float32)
    apply(np.float32([np.nan, np.nan, np.nan]), nan)
    assert np.isnan(nan).all()  # a corrupt model's NaN must not turn into a probability


def test_attention_of_nan_queries_is_nan_not_an_exception():
    """NaN scores make every probability NaN; the normalisation's 1 / 0 must not raise."""
    q = np.full((3, 4, 16), np.nan, np.float32)
    keys, values = np.ones((2, 16, 3), np.float32), np.ones((2, 3, 16), np.float32)  # the kernels' layouts
    out = np.zeros((3, 4, 16), np.float32)
    lk.attention_prefill(q, keys, None, values, None, 0, 0, 0, 2, out)
    assert np.isnan(out).all()


@pytest.mark.parametrize("tokens, heads, kv_heads, d, rotate", [(1, 8, 2, 16, True), (19, 5, 5, 12, False), (7, 6, 3, 10, True)])
def test_qk_norm_rope_rows(tokens, heads, kv_heads, d, rotate):
    """Prefill's QK-norm and RoPE against model.rms_norm and rope.apply_rope."""
    from tinyexaone.model import rms_norm
    from tinyexaone.rope import apply_rope

    rng, seed = fresh_rng()
    q = rng.standard_normal((tokens, heads, d)).astype(np.float32)
    k = rng.standard_normal((tokens, kv_heads, d)).astype(np.float32)
    qn, kn = rng.standard_normal(d).astype(np.float32), rng.standard_normal(d).astype(np.float32)
    angles = (rng.random((tokens, d // 2)) * 100).astype(np.float32)
    cos, sin = np.cos(np.tile(angles, 2)), np.sin(np.tile(angles, 2))
    expected_q, expected_k = rms_norm(q, qn, 1e-5), rms_norm(k, kn, 1e-5)
    if rotate:
        expected_q, expected_k = apply_rope(expected_q, cos, sin), apply_rope(expected_k, cos, sin)
    lk.qk_norm_rope_rows(q, k, qn, kn, cos, sin, 1e-5, rotate)
    np.testing.assert_allclose(q, expected_q, rtol=1e-5, atol=1e-5, err_msg=f"seed {seed}")
    np.testing.assert_allclose(k, expected_k, rtol=1e-5, atol=1e-5, err_msg=f"seed {seed}")
