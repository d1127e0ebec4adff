"""The KV cache types f32, f16 (the default) and q8: the float16 conversions and the q8 rounding
bit for bit against NumPy, the attention kernels over each type against their NumPy twins fed
the decoded cache (fresh seeds, odd sizes, NaN-poisoned outputs), the growable and ring caches
of each type (growth, wrap, trim, real bytes), the option and its CLI flag."""

import subprocess
import tempfile
import sys

import numpy as np
import pytest
from numba import njit

from tinyexaone import layer_kernels as lk
from tinyexaone.cache import CODE_DTYPES, DEFAULT_CACHE_TYPE, GROW_STEP, GrowableCache, RingCache, Rows
from tinyexaone.errors import TinyExaoneError
from tinyexaone.kernels import half_to_float
from tinyexaone.options import OPTION_BOUNDS

CACHE_TYPES = sorted(CODE_DTYPES)


def fresh_rng():
    seed = np.random.SeedSequence().entropy
    return np.random.default_rng(seed), seed


@njit
def _to_half(x, out):
    for i in range(x.size):
        out[i] = lk.float_to_half(x[i])


@njit
def _to_float(bits, out):
    for i in range(bits.size):
        out[i] = half_to_float(bits[i])


def to_half(x: np.ndarray) -> np.ndarray:
    out = np.full(x.size, 0xAAAA, np.uint16)  # poisoned
    _to_half(x, out)
    return out


def to_float(bits: np.ndarray) -> np.ndarray:
    out = np.full(bits.size, np.nan, np.float32)
    _to_float(bits, out)
    return out


def numpy_half(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore", invalid="ignore"):
        return x.astype(np.float16).view(np.uint16)


def test_fptrunc_rounds_like_numpy_bit_for_bit():
    """Random float32 bit patterns (every exponent: float16 subnormals, underflow to zero, overflow
    to infinity), exact ties between two float16 values, and the edges; NaNs: quiet ones keep
    their sign and top payload bits as in NumPy, a signalling NaN comes back as a quiet NaN."""
    rng, seed = fresh_rng()
    bits = rng.integers(0, 2**32, 1_000_000, dtype=np.uint64).astype(np.uint32)
    small = (rng.standard_normal(200_000) * 2.0 ** rng.integers(-26, -12, 200_000)).astype(np.float32)
    halves = np.arange(0, 0x7C00, dtype=np.uint16).view(np.float16).astype(np.float32)  # every finite half >= 0
    ties = ((halves[:-1].astype(np.float64) + halves[1:]) / 2).astype(np.float32)  # exactly halfway
    edges = np.float32([0.0, -0.0, 65504.0, 65519.99, 65520.0, -65520.0, 1e30, np.inf, -np.inf,
                        2.0**-24, 2.0**-25, 2.0**-25 * 1.0001, 2.0**-14, 6.1e-5, -1e-8])
    x = np.concatenate([bits.view(np.float32), small, ties, -ties, edges])
    ours, expected = to_half(x), numpy_half(x)
    nan = np.isnan(x)
    np.testing.assert_array_equal(ours[~nan], expected[~nan], err_msg=f"seed {seed}")
    raw = x.view(np.uint32)
    quiet = nan & ((raw >> 22) & 1 == 1)
    np.testing.assert_array_equal(ours[quiet], expected[quiet], err_msg=f"seed {seed}")
    signalling = ours[nan & ~quiet]
    assert np.isnan(signalling.view(np.float16)).all() and (signalling & 0x0200).all()  # quiet NaN


def test_half_round_trips():
    """fpext of every float16 is exact (NumPy's value), and fptrunc brings it back bit for bit
    (NaNs come back as NaNs)."""
    every = np.arange(2**16, dtype=np.uint16)
    values = to_float(every)
    expected = every.view(np.float16).astype(np.float32)
    nan = np.isnan(expected)
    np.testing.assert_array_equal(values[~nan], expected[~nan])
    assert np.isnan(values[nan]).all()
    back = to_half(values)
    np.testing.assert_array_equal(back[~nan], every[~nan])
    assert np.isnan(back[nan].view(np.float16)).all()


@njit
def _store_rows(x, keys, key_scales, values, value_scales):
    for s in range(x.shape[0]):
        for g in range(x.shape[1]):
            lk._store_key(x[s, g], keys, key_scales, g, s)
            lk._store_value(x[s, g], values, value_scales, g, s)


def poisoned_buffers(code_dtype, n, kv_heads, d, keys):
    """NaN (f32) or 0x55 codes in the key ([kv_heads, d, n]) or value ([kv_heads, n, d]) layout."""
    shape = (kv_heads, d, n) if keys else (kv_heads, n, d)
    codes = np.full(shape, 0x55, code_dtype) if code_dtype != np.float32 else np.full(shape, np.nan, np.float32)
    scales = np.full((kv_heads, n), np.nan, np.float32) if code_dtype == np.int8 else None
    return codes, scales


def awkward_rows(rng, n, kv_heads, d) -> np.ndarray:
    """[n, kv_heads, d] float32 with rows of every scale, a zero row, rows holding NaN and
    infinity, and one of float16 subnormals."""
    x = (rng.standard_normal((n, kv_heads, d)) * 10.0 ** rng.uniform(-6, 4, (n, kv_heads, 1))).astype(np.float32)
    x[0, 0] = 0
    x[1, 0, d // 2] = np.nan
    x[2, -1, 0] = -np.inf
    x[3, 0] = rng.standard_normal(d).astype(np.float32) * np.float32(1e-6)
    return x


@pytest.mark.parametrize("cache_type", CACHE_TYPES)
@pytest.mark.parametrize("n, kv_heads, d", [(7, 3, 17), (5, 1, 64), (9, 2, 1)])
def test_store_row_matches_encode_rows_numpy_bit_for_bit(cache_type, n, kv_heads, d):
    """The decode kernel's stores (Numba), of keys and of values, and the prefill's encoding
    (NumPy) write the same bits, each in its layout."""
    rng, seed = fresh_rng()
    x = awkward_rows(rng, max(n, 4), kv_heads, d)
    dtype = CODE_DTYPES[cache_type]
    keys, values = poisoned_buffers(dtype, len(x), kv_heads, d, True), poisoned_buffers(dtype, len(x), kv_heads, d, False)
    _store_rows(x, *keys, *values)
    rows = lk.encode_rows_numpy(x, dtype)
    for (codes, scales), (expected_codes, expected_scales) in ((keys, lk.key_layout(*rows)),
                                                               (values, lk.value_layout(*rows))):
        np.testing.assert_array_equal(codes.view(np.uint8), expected_codes.view(np.uint8), err_msg=f"seed {seed}")
        if cache_type == "q8":
            np.testing.assert_array_equal(scales.view(np.uint32), expected_scales.view(np.uint32),
                                          err_msg=f"seed {seed}")


def test_q8_rule():
    """scale = max|x| / 127, code = rint(x * 127 / max|x|) (half to even): the row's peak is
    +-127, every value is within half a step, a zero row is zeros and a row holding NaN or
    infinity decodes to NaN everywhere."""
    rng, seed = fresh_rng()
    x = awkward_rows(rng, 50, 3, 33)
    codes, scales = lk.quantize_rows_numpy(x)
    assert codes.dtype == np.int8 and scales.dtype == np.float32 and scales.shape == (50, 3)
    finite = np.isfinite(x).all(axis=-1)
    assert (np.abs(codes) <= 127).all()
    nonzero = finite & (np.abs(x).max(axis=-1) > 0)
    assert (np.abs(codes).max(axis=-1)[nonzero] == 127).all()
    np.testing.assert_array_equal(scales[finite], np.abs(x).max(axis=-1)[finite] / np.float32(127))
    decoded = lk.decode_rows_numpy(codes, scales)
    assert (np.abs(decoded - x)[finite] <= 0.5001 * scales[finite][:, None]).all(), f"seed {seed}"
    assert (decoded[0, 0] == 0).all() and np.isnan(decoded[~finite]).all()
    tie = np.float32([[127.0, 0.5, 1.5, -2.5]])  # scale 1: the halves round to even
    np.testing.assert_array_equal(lk.quantize_rows_numpy(tie)[0], [[127, 0, 2, -2]])


def encoded(x: np.ndarray, cache_type: str) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """(codes, scales, decoded float32) of x [n, kv_heads, d] in `cache_type`, positions first."""
    codes, scales = lk.encode_rows_numpy(x, CODE_DTYPES[cache_type])
    return codes, scales, lk.decode_rows_numpy(codes, scales)


def encoded_kv(keys: np.ndarray, values: np.ndarray, cache_type: str):
    """(key codes, key scales, value codes, value scales) in the kernels' layouts, and the
    decoded float32 keys and values [n, kv_heads, d]."""
    k_codes, k_scales, k_float = encoded(keys, cache_type)
    v_codes, v_scales, v_float = encoded(values, cache_type)
    return (*lk.key_layout(k_codes, k_scales), *lk.value_layout(v_codes, v_scales)), k_float, v_float


@pytest.mark.parametrize("cache_type", CACHE_TYPES)
@pytest.mark.parametrize("heads, kv_heads, d, n_queries, first_query_pos, first_key_pos, n_stored, window", [
    (8, 2, 16, 37, 0, 0, 37, 0),      # a fresh prompt
    (6, 3, 10, 9, 20, 0, 29, 0),      # continued after 20 cached tokens
    (4, 4, 64, 13, 40, 30, 23, 8),    # sliding window of 8
    (3, 1, 11, 6, 0, 0, 6, 2),        # odd head_dim, a window of 2
    (10, 2, 32, 41, 0, 0, 41, 0),     # groups of 5: one query per 8-row tile, 3 rows unused
    (6, 2, 48, 50, 7, 0, 57, 19),     # groups of 3 (two queries per tile) under a window of 19
    (16, 2, 128, 70, 0, 0, 70, 0),    # head_dim 128, a partial last vector of positions
])
def test_attention_prefill_reads_each_type(cache_type, heads, kv_heads, d, n_queries, first_query_pos,
                                           first_key_pos, n_stored, window):
    from tinyexaone.model import attention

    rng, seed = fresh_rng()
    q = rng.standard_normal((n_queries, heads, d)).astype(np.float32)
    buffers, keys_f, values_f = encoded_kv((rng.standard_normal((n_stored, kv_heads, d)) * 3).astype(np.float32),
                                           rng.standard_normal((n_stored, kv_heads, d)).astype(np.float32), cache_type)
    out = np.full((n_queries, heads, d), np.nan, np.float32)
    lk.attention_prefill(q, *buffers, first_query_pos, first_key_pos, window, 3, out)
    expected = attention(q, keys_f, values_f, first_query_pos, first_key_pos, window or None)
    np.testing.assert_allclose(out.reshape(n_queries, -1), expected, rtol=1e-5, atol=1e-5, err_msg=f"seed {seed}")


def decoded_position(codes, scales, slot, keys) -> np.ndarray:
    """Position `slot` of key ([kv_heads, d, n]) or value ([kv_heads, n, d]) buffers, decoded: [kv_heads, d]."""
    return lk.decode_rows_numpy(codes[:, :, slot] if keys else codes[:, slot], None if scales is None else scales[:, slot])


def other_positions(codes, slot, keys) -> np.ndarray:
    return np.delete(codes, slot, axis=2 if keys else 1)


def decode_table(sequences) -> np.ndarray:
    """decode_attention's table [B, TABLE_COLUMNS] for (key codes, key scales, value codes, value
    scales, first, n, modulo) per sequence; the new token's slot is its last visible key's."""
    rows = []
    for key_codes, key_scales, value_codes, value_scales, first, n, modulo in sequences:
        rows.append((key_codes.ctypes.data, 0 if key_scales is None else key_scales.ctypes.data, value_codes.ctypes.data,
                     0 if value_scales is None else value_scales.ctypes.data, key_codes.shape[2],
                     (first + n - 1) % modulo, first, n, modulo))
    return np.array(rows, np.int64)


@pytest.mark.parametrize("kernel", [lk.decode_attention, lk.decode_attention_serial])
@pytest.mark.parametrize("cache_type", CACHE_TYPES)
@pytest.mark.parametrize("heads, kv_heads, d, rotate, sequences", [
    (8, 2, 16, True, [(300, 0, 257, 300), (40, 0, 3, 40)]),  # growable caches (rows are positions), two lengths
    (6, 3, 10, True, [(7, 11, 7, 7), (7, 12, 5, 7), (9, 0, 1, 9)]),  # a full ring (positions 11..17 at p % 7),
    # a ring not yet full of visible keys (slots 5, 6, 0, 1, 2), a single key
    (5, 1, 14, False, [(40, 3, 37, 40)]),  # NoPE, one KV head for five query heads, odd sizes
])
def test_decode_attention_is_its_twins_per_sequence(kernel, cache_type, heads, kv_heads, d, rotate, sequences):
    """One launch for B sequences, each its own buffers of its own capacity: per sequence, q normed
    and rotated as `qk_norm_rope_store_numpy` does, k and v stored in the new token's slot as it
    stores them (keys up to the two norms' float32 rounding: one float16 ulp, one q8 step) and in
    no other row, and the output `attention_decode_numpy` over the cache the kernel left."""
    rng, seed = fresh_rng()
    dtype, batch = CODE_DTYPES[cache_type], len(sequences)
    q, k, v = (rng.standard_normal((batch, n, d)).astype(np.float32) for n in (heads, kv_heads, kv_heads))
    qn, kn = rng.standard_normal(d).astype(np.float32), rng.standard_normal(d).astype(np.float32)
    angles = np.tile(rng.random((batch, d // 2)).astype(np.float32) * 100, 2)
    cos, sin = np.cos(angles), np.sin(angles)  # [B, d]
    buffers, twins = [], []
    for capacity, first, n, modulo in sequences:
        held, _, _ = encoded_kv((rng.standard_normal((capacity, kv_heads, d)) * 3).astype(np.float32),
                                rng.standard_normal((capacity, kv_heads, d)).astype(np.float32), cache_type)
        buffers.append([array if array is None else array.copy() for array in held])
        twins.append([array if array is None else array.copy() for array in held])
    table = decode_table([(*buf, first, n, modulo) for buf, (_, first, n, modulo) in zip(buffers, sequences)])
    scores = np.full((batch, heads, max(n for _, _, n, _ in sequences) + 3), np.nan, np.float32)
    out = np.full((batch, heads, d), np.nan, np.float32)
    q_twin, k_twin = q.copy(), k.copy()
    kernel(q, k, v, qn, kn, cos, sin, 1e-5, rotate, *buffers[0], table, scores, out)
    rtol = 2.0**-10 if cache_type == "f16" else 1e-5
    for b, (capacity, first, n, modulo) in enumerate(sequences):
        slot = (first + n - 1) % modulo
        lk.qk_norm_rope_store_numpy(q_twin[b], k_twin[b], v[b], qn, kn, cos[b], sin[b], 1e-5, rotate, *twins[b], slot)
        np.testing.assert_allclose(q[b], q_twin[b], rtol=1e-5, atol=1e-5, err_msg=f"seed {seed}")
        ours, twin = buffers[b], twins[b]
        for keys, codes, scales, codes2, scales2 in ((True, *ours[:2], *twin[:2]), (False, *ours[2:], *twin[2:])):
            got, want = decoded_position(codes, scales, slot, keys), decoded_position(codes2, scales2, slot, keys)
            step = 0 if scales2 is None else 1.001 * scales2[:, slot][:, None]
            assert (np.abs(got - want) <= step + rtol * np.abs(want) + 1e-6).all(), f"seed {seed}"
            np.testing.assert_array_equal(other_positions(codes, slot, keys), other_positions(codes2, slot, keys))
        np.testing.assert_array_equal(ours[2][:, slot].view(np.uint8), twin[2][:, slot].view(np.uint8))  # v: the same bits
        keys_f = lk.decode_rows_numpy(np.moveaxis(ours[0], 2, 0), None if ours[1] is None else ours[1].T)  # [capacity, KV, d]
        values_f = lk.decode_rows_numpy(np.moveaxis(ours[2], 1, 0), None if ours[3] is None else ours[3].T)
        expected = np.full((heads, d), np.nan, np.float32)
        lk.attention_decode_numpy(q_twin[b], keys_f, values_f, first, n, modulo, None, expected)
        np.testing.assert_allclose(out[b], expected, rtol=1e-5, atol=1e-5, err_msg=f"seed {seed}")


def fill(cache, rng, kv_heads, d, prefill: int, decode: int) -> np.ndarray:
    """Prefill `prefill` tokens, then write `decode` more one row at a time as the decode kernel
    does; returns every token's float32 keys [prefill + decode, kv_heads, d] (values are -keys)."""
    x = rng.standard_normal((prefill + decode, kv_heads, d)).astype(np.float32)
    if prefill:
        keys, values, first = cache.extend(x[:prefill], -x[:prefill])  # every new row, in the cache's type
        assert first == 0
        keys, values = keys[:prefill], values[:prefill]
        np.testing.assert_array_equal(keys.decoded(), encoded(x[:prefill], cache.cache_type)[2])
        np.testing.assert_array_equal(values.decoded(), -keys.decoded())
    for t in range(prefill, prefill + decode):
        slot = cache.append_slot()
        buffers = cache.keys.codes, cache.keys.scales, cache.values.codes, cache.values.scales
        _store_rows_at(x[t], -x[t], *buffers, slot)
    return x


@njit
def _store_rows_at(k, v, keys, key_scales, values, value_scales, slot):
    for g in range(k.shape[0]):
        lk._store_key(k[g], keys, key_scales, g, slot)
        lk._store_value(v[g], values, value_scales, g, slot)


def row_bytes(cache_type: str, kv_heads: int, d: int) -> int:
    """Bytes of one position's keys and values."""
    per_head = {"f32": 4 * d, "f16": 2 * d, "q8": d + 4}[cache_type]
    return 2 * kv_heads * per_head


@pytest.mark.parametrize("cache_type", CACHE_TYPES)
def test_growable_cache_grows_trims_and_counts_real_bytes(cache_type):
    rng, seed = fresh_rng()
    kv_heads, d = 3, 10
    cache = GrowableCache(cache_type, kv_heads, d)
    x = fill(cache, rng, kv_heads, d, prefill=GROW_STEP - 3, decode=7)  # grows while decoding
    assert cache.length == GROW_STEP + 4 and len(cache.keys) == 2 * GROW_STEP
    np.testing.assert_array_equal(cache.keys[: cache.length].decoded(), encoded(x, cache_type)[2])
    np.testing.assert_array_equal(cache.values[: cache.length].decoded(), -encoded(x, cache_type)[2])
    assert cache.nbytes == 2 * GROW_STEP * row_bytes(cache_type, kv_heads, d)
    cache.trim(5)
    keys, _, first = cache.extend(x[5:7], -x[5:7])
    assert first == 0 and len(keys) == 2 * GROW_STEP and cache.length == 7  # the buffers themselves
    np.testing.assert_array_equal(keys[:7].decoded(), encoded(x[:7], cache_type)[2])


@pytest.mark.parametrize("cache_type", CACHE_TYPES)
@pytest.mark.parametrize("prefill, decode", [(3, 20), (20, 9), (0, 13)])
def test_ring_cache_wraps_and_trims(cache_type, prefill, decode):
    """Position p in slot p % window after prefill and decode writes that wrap; a prefill
    returns held + new rows in order; trim works while the window is held, then refuses."""
    rng, seed = fresh_rng()
    kv_heads, d, window = 2, 12, 6
    cache = RingCache(cache_type, kv_heads, d, window)
    x = fill(cache, rng, kv_heads, d, prefill, decode)
    total = prefill + decode
    first, count, modulo = cache.visible()
    assert (first, count, modulo) == (total - window, window, window)
    slots = np.arange(first, total) % window
    expected = encoded(x[first:], cache_type)[2]
    np.testing.assert_array_equal(cache.keys[slots].decoded(), expected, err_msg=f"seed {seed}")
    np.testing.assert_array_equal(cache.values[slots].decoded(), -expected, err_msg=f"seed {seed}")
    assert cache.nbytes == window * row_bytes(cache_type, kv_heads, d)
    more = rng.standard_normal((4, kv_heads, d)).astype(np.float32)
    keys, _, first_returned = cache.extend(more, -more)  # held (window) then the 4 new rows, in temporal order
    assert first_returned == first
    np.testing.assert_array_equal(keys.decoded(), encoded(np.concatenate([x[first:], more]), cache_type)[2])
    assert cache.can_trim(cache.length - 1) and not cache.can_trim(cache.length - window)
    cache.trim(cache.length - 1)
    with pytest.raises(TinyExaoneError, match="cannot roll back"):
        cache.trim(0)


def test_rows_encode_and_bytes():
    x = np.float32([[[1.0, -2.0, 0.5]]])  # [1, 1, 3]
    f32, f16, q8 = (Rows.encode(x, t, keys=False) for t in ("f32", "f16", "q8"))
    assert f32.codes.dtype == np.float32 and f16.codes.dtype == np.uint16 and q8.codes.dtype == np.int8
    assert (f32.nbytes, f16.nbytes, q8.nbytes) == (12, 6, 3 + 4)
    assert f16.scales is None and f32.scales is None and q8.scales.shape == (1, 1)
    np.testing.assert_array_equal(f16.decoded(), x)
    np.testing.assert_array_equal(q8.codes, [[[64, -127, 32]]])  # values [kv_heads, n, d]
    two = np.float32([[[1.0, -2.0, 0.5]], [[4.0, 0.0, -1.0]]])  # [2, 1, 3]
    keys = Rows.encode(two, "f32", keys=True)
    assert keys.codes.shape == (1, 3, 2) and len(keys) == 2  # keys [kv_heads, d, n]
    np.testing.assert_array_equal(keys.codes[0], two[:, 0].T)
    np.testing.assert_array_equal(keys[1:].decoded(), two[1:])


# --- the option ---------------------------------------------------------------------------------


def test_the_option_names_the_cache_types_and_defaults_to_f16():
    import inspect

    from tinyexaone.chat import ChatSession
    from tinyexaone.chat_model import ChatModel
    from tinyexaone.generation import make_options
    from tinyexaone.model import Model

    assert set(OPTION_BOUNDS["cache_type"].values) == set(CODE_DTYPES) and DEFAULT_CACHE_TYPE == "f16"
    assert make_options().cache_type == "f16" and make_options(cache_type="q8").cache_type == "q8"
    for function in (Model.new_cache, ChatModel.new_cache, ChatSession.__init__):
        assert inspect.signature(function).parameters["cache_type"].default == "f16"
    for bad in ("f8", "F16", 16, "", b"f16"):
        with pytest.raises(TinyExaoneError, match=r"invalid value for cache_type: .* \(must be one of f32, f16, q8\)"):
            make_options(cache_type=bad)


def test_a_model_makes_caches_of_each_type(tmp_path):
    from reference_models import LAYOUTS, build_reference_model

    import tinyexaone

    build_reference_model(tmp_path, seed=2, **LAYOUTS["hybrid_lllg_untied"])
    model = tinyexaone.load(tmp_path)
    cfg = model.config
    ids = np.arange(1, 16)
    assert model.new_cache().cache_type == "f16"
    logits = {}
    for cache_type in CACHE_TYPES:
        cache = model.new_cache(cache_type=cache_type)
        logits[cache_type] = model.forward(ids, cache)
        assert cache.cache_type == cache_type
        assert cache.nbytes == sum(layer.nbytes for layer in cache.layers)
        sliding = [layer for i, layer in enumerate(cache.layers) if cfg.layer_is_sliding(i)]
        assert all(layer.nbytes == cfg.sliding_window * row_bytes(cache_type, cfg.num_key_value_heads, cfg.head_dim)
                   for layer in sliding)
        cache.trim(cache.length - 1)  # roll back the newest token and decode it again
        np.testing.assert_allclose(model.forward(ids[-1:], cache), logits[cache_type][-1:], rtol=1e-4, atol=1e-4)
    with pytest.raises(TinyExaoneError, match="invalid value for cache_type"):
        model.new_cache(cache_type="q4")


def run_cli(*args):
    # outside the checkout: its tinyexaone/ folder would shadow an installed (non-editable) package
    return subprocess.run([sys.executable, "-m", "tinyexaone", *args], capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL, cwd=tempfile.gettempdir())


@pytest.mark.parametrize("command", [["generate", "--prompt", "hi"], ["chat"], ["bench", "--synthetic", "tiny"]])
def test_the_flag_refuses_a_bad_value_in_one_line(command):
    done = run_cli(*command, "--cache-type", "f8")
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == "error: invalid value for --cache-type: 'f8' (must be one of f32, f16, q8)\n"


def test_the_flag_reaches_the_cache(monkeypatch, capsys, tmp_path):
    """`generate --cache-type q8` runs with a q8 cache; without the flag the cache is f16."""
    from cli_models import build_tiny_chat_model, shipped_model

    from tinyexaone.cli.main import main
    from tinyexaone.model import Model

    made = []
    original = Model.new_cache

    def recording(self, max_tokens=None, cache_type=DEFAULT_CACHE_TYPE):
        made.append(cache_type)
        return original(self, max_tokens, cache_type)

    monkeypatch.setattr(Model, "new_cache", recording)
    model = shipped_model() or build_tiny_chat_model(tmp_path / "model")
    for flags, expected in ((["--cache-type", "q8"], "q8"), ([], "f16")):
        made.clear()
        with pytest.raises(SystemExit) as exit_info:
            main(["generate", "--model", str(model), "--prompt", "hi", "--temperature", "0", "--max-tokens", "2",
                  *flags])
        assert exit_info.value.code == 0, capsys.readouterr().err
        assert made == [expected]
    assert "--cache-type f32|f16|q8" in run_cli("generate", "--help").stdout
