"""The quantizer and QuantizedWeight (quantized.py, scale_fit.py, affine_fit.py): the scale fits, validation, a quantized model.

The scale fit (Numba) is held to its plain NumPy statement `fit_scales_numpy` and, from scratch
here, to the plain absmax rule: its codes are absmax's, its squared error never more (plain and
column-weighted, fresh seeds, odd sizes); `from_arrays` is checked against every way stored arrays
can be wrong, and a tiny random EXAONE model with every matrix quantized against the same model in
float32. The int4k fit is held to its NumPy statement `fit_affine_numpy`, to its search per block
written out here, to below llama.cpp Q4_K's error on Gaussian weights, and its bytes to the
documented layout; the searched scales of int6k to their rule written out per group.
"""

import numpy as np
import pytest
from reference_models import LAYOUTS, build_reference_model

import tinyexaone
from tinyexaone import TinyExaoneError
from tinyexaone.quantized import (CODE_ARRAYS, QuantizedWeight, expected_arrays, from_version_1, quantize, unpack_codes,
                                  unpack_scales)
from tinyexaone.affine_fit import fit_affine, fit_affine_numpy
from tinyexaone.scale_fit import (fit_scales, fit_scales_numpy, fit_search_scales, fit_search_scales_numpy,
                                  fit_sub_scales)

SCHEMES = [(bits, group) for bits in (4, 6, 8) for group in (32, 64, 128)]
VERSION_1_SCHEMES = [(bits, group) for bits, group in SCHEMES if bits != 6]  # int6 is new in version 3


def fresh_rng():
    seed = int(np.random.SeedSequence().entropy % 2**32)
    return seed, np.random.default_rng(seed)


def absmax_scales_and_codes(matrix, bits, group_size):
    """The plain absmax rule, written out group by group: the smallest float16 scale, signed towards
    the wide end, for which every element rounds with error <= |s| / 2; its codes."""
    qn = 2 ** (bits - 1)
    rows, cols = matrix.shape
    scales, codes = np.zeros((rows, cols // group_size)), np.zeros((rows, cols))
    for n in range(rows):
        for j in range(cols // group_size):
            x = matrix[n, j * group_size : (j + 1) * group_size].astype(np.float64)
            low_end = max(-x.min() / (qn + 0.5), x.max() / (qn - 0.5))  # low towards -qn: s > 0
            high_end = max(x.max() / (qn + 0.5), -x.min() / (qn - 0.5))  # high towards -qn: s < 0
            sign, need = (-1, high_end) if high_end < low_end else (1, low_end)
            s = np.float16(need)
            while float(s) < need:
                s = np.nextafter(s, np.float16(np.inf))
            s = sign * float(s)
            scales[n, j] = s
            if s:
                codes[n, j * group_size : (j + 1) * group_size] = np.clip(np.rint(x / s), -qn, qn - 1)
    return scales, codes


def grouped_error(matrix, scales, codes, group_size, weights=None):
    """Squared error per group [N, G] of codes * scales against matrix, columns weighted."""
    weights = np.ones(matrix.shape[1]) if weights is None else weights
    diff = codes * np.repeat(scales, group_size, axis=1) - matrix.astype(np.float64)
    return (weights * diff * diff).reshape(matrix.shape[0], -1, group_size).sum(axis=2)


def random_matrix(rng, group_size):
    """Odd row counts, heavy or light tails, a random scale, an all-zero group and mirrored extremes."""
    shape = (int(rng.integers(1, 40)) * 2 + 1, group_size * int(rng.integers(1, 6)))
    kind = rng.integers(3)
    matrix = [rng.standard_normal(shape), rng.standard_t(3, shape), rng.laplace(size=shape)][kind]
    matrix = (matrix * 10.0 ** rng.uniform(-5, 2)).astype(np.float32)
    matrix[0, :group_size] = 0.0
    matrix[1, :group_size] = -matrix[1, :group_size]
    matrix[1, 1] = -matrix[1, 0]
    return matrix


@pytest.mark.parametrize("bits,group_size", SCHEMES)
def test_scale_fit_matches_its_numpy_reference(bits, group_size):
    seed, rng = fresh_rng()
    matrix = random_matrix(rng, group_size)
    for weights in (None, rng.random(matrix.shape[1]) ** 4):
        scales, codes = fit_scales(matrix, bits, group_size, weights)
        ref_scales, ref_codes = fit_scales_numpy(matrix, bits, group_size, weights)
        np.testing.assert_array_equal(codes, ref_codes, err_msg=f"seed {seed}")
        differ = scales != ref_scales  # only where E(s) and E(s0) tie to rounding (sums in another order)
        if differ.any():
            ours = grouped_error(matrix, scales.astype(np.float64), codes, group_size, weights)[differ]
            ref = grouped_error(matrix, ref_scales.astype(np.float64), codes, group_size, weights)[differ]
            np.testing.assert_allclose(ours, ref, rtol=1e-9, err_msg=f"seed {seed}")
        assert differ.mean() < 0.01, f"seed {seed}: {differ.sum()} of {differ.size} scales differ"


@pytest.mark.parametrize("bits,group_size", SCHEMES)
def test_scale_fit_keeps_absmax_codes_and_never_adds_error(bits, group_size):
    """Against the absmax rule written out here: the same codes, never more squared error per group
    (plain or column-weighted; float32 rounding of the sums allowed), and an all-zero group has
    scale 0 and codes 0."""
    seed, rng = fresh_rng()
    for _ in range(3):
        matrix = random_matrix(rng, group_size)
        absmax_scales, absmax_codes = absmax_scales_and_codes(matrix, bits, group_size)
        for weights in (None, rng.random(matrix.shape[1]) ** 4):
            weight = quantize(matrix, bits, group_size, weights)
            rows = np.arange(matrix.shape[0])
            codes = unpack_codes(weight.arrays[CODE_ARRAYS[bits]], rows)
            scales = unpack_scales(weight.arrays["scales"], rows).astype(np.float64)
            np.testing.assert_array_equal(codes, absmax_codes, err_msg=f"seed {seed}")
            ours = grouped_error(matrix, scales, codes, group_size, weights)
            plain = grouped_error(matrix, absmax_scales, absmax_codes, group_size, weights)
            assert np.all(ours <= plain * (1 + 1e-12)), f"seed {seed}: more error than absmax"
            assert scales[0, 0] == 0 and not codes[0, :group_size].any()


def test_scale_fit_lowers_the_weight_error_of_gaussian_int4():
    """The least-squares scale of the absmax codes: 0.0850 -> 0.0830 relative error at int4 g32."""
    matrix = np.random.default_rng(0).standard_normal((512, 2048)).astype(np.float32)
    absmax_scales, absmax_codes = absmax_scales_and_codes(matrix[:64], 4, 32)
    plain = np.sqrt(grouped_error(matrix[:64], absmax_scales, absmax_codes, 32).sum() / (matrix[:64].astype(np.float64) ** 2).sum())
    fitted = np.linalg.norm(quantize(matrix[:64], 4, 32).dequantize() - matrix[:64]) / np.linalg.norm(matrix[:64])
    assert fitted < plain - 0.001, (fitted, plain)


def test_column_weights_are_checked():
    matrix = np.ones((2, 64), np.float32)
    for bad in (np.ones(63), np.full(64, -1.0), np.full(64, np.nan)):
        with pytest.raises(TinyExaoneError, match="column weights must be 64 finite non-negative"):
            quantize(matrix, 4, 32, bad)


@pytest.mark.parametrize("bits,group_size", SCHEMES)
def test_quantize_produces_the_documented_layout(bits, group_size):
    _, rng = fresh_rng()
    for n_rows in (16, 7):  # whole row groups, and one padded to 8 rows
        shape = (n_rows, 3 * group_size)
        weight = quantize(rng.standard_normal(shape).astype(np.float32), bits, group_size)
        assert (weight.bits, weight.group_size, weight.shape) == (bits, group_size, shape)
        for name, (dtype, array_shape) in expected_arrays(bits, group_size, shape).items():
            array = weight.arrays[name]
            assert (array.dtype, array.shape, array.flags.c_contiguous) == (dtype, array_shape, True)
        assert weight.nbytes * 8 / (-(-n_rows // 8) * 8 * shape[1]) == bits + 16 / group_size


@pytest.mark.parametrize("bits,group_size", [(4, 64), (8, 32), (4, 128), (6, 32), (6, 64)])
def test_layout_places_each_element_where_the_docstring_says(bits, group_size):
    """Decode the stored arrays element by element as documented; compare with dequantize(),
    and the padding rows of the last group hold code 0 and scale 0."""
    _, rng = fresh_rng()
    shape = (11, 2 * group_size)
    weight = quantize(rng.standard_normal(shape).astype(np.float32), bits, group_size)
    scales = weight.arrays["scales"].astype(np.float32)  # [G8, G, 8]
    decoded = np.empty(shape, np.float32)
    for n in range(shape[0]):
        g, r = divmod(n, 8)
        for k in range(shape[1]):
            block, e = divmod(k, 32)
            if bits == 8:
                c, i = divmod(e, 4)
                code = int(weight.arrays["quants"][g, block, 32 * c + 4 * r + i])
            elif bits == 6:  # nibbles as int4's, then the 2-bit plane of half h at bits 2 j
                c, i = divmod(e % 16, 4)
                byte = int(weight.arrays["codes"][g, block, 32 * c + 4 * r + i])
                h, (j, i) = e // 16, divmod(e % 16, 4)
                plane = int(weight.arrays["codes"][g, block, 128 + 32 * h + 4 * r + i])
                code = ((byte & 15 if e < 16 else byte >> 4) | ((plane >> (2 * j)) & 3) << 4) - 32
            else:
                c, i = divmod(e % 16, 4)
                byte = int(weight.arrays["nibbles"][g, block, 32 * c + 4 * r + i])
                code = (byte & 15 if e < 16 else byte >> 4) - 8
            decoded[n, k] = code * scales[g, k // group_size, r]
    np.testing.assert_array_equal(decoded, weight.dequantize())
    assert not scales[1, :, 3:].any()  # rows 11..15 of the last group
    padding = unpack_codes(weight.arrays[CODE_ARRAYS[bits]], np.arange(11, 16))
    assert not padding.any()


@pytest.mark.parametrize("bits,group_size", VERSION_1_SCHEMES)
def test_version_1_arrays_repack_to_the_same_weight(bits, group_size):
    """from_version_1 reads the old per-row layout (written here as the old format's docs say)."""
    _, rng = fresh_rng()
    shape = (13, 3 * group_size)
    weight = quantize(rng.standard_normal(shape).astype(np.float32), bits, group_size)
    q = unpack_codes(weight.arrays["quants" if bits == 8 else "nibbles"], np.arange(13)).reshape(13, -1, 32)  # [N, B, 32]
    if bits == 8:
        old = {"quants": np.ascontiguousarray(q.transpose(0, 2, 1)).astype(np.int8)}  # [N, 32, B]
    else:
        biased = (q + 8).astype(np.uint8)
        old = {"nibbles": np.ascontiguousarray((biased[:, :, :16] | (biased[:, :, 16:] << 4)).transpose(0, 2, 1))}
    old["scales"] = np.ascontiguousarray(unpack_scales(weight.arrays["scales"], np.arange(13)))  # [N, G]
    repacked = from_version_1(bits, group_size, shape, old)
    for name, array in weight.arrays.items():
        np.testing.assert_array_equal(repacked[name], array)
    with pytest.raises(TinyExaoneError, match="has shape"):
        from_version_1(bits, group_size, shape, weight.arrays)


@pytest.mark.parametrize("bits", [8, 6])
def test_rows_returns_dequantized_embedding_rows(bits):
    _, rng = fresh_rng()
    weight = quantize(rng.standard_normal((50, 96)).astype(np.float32), bits, 32)
    ids = np.array([49, 0, 7, 7])
    np.testing.assert_array_equal(weight.rows(ids), weight.dequantize()[ids])


def test_int6_weight_error_on_gaussian_weights():
    """int6 g32 (6.5 bits) on 1024 x 2048 Gaussian weights: 0.0215 relative error (int4k 0.0712,
    int8 g128 0.0064); one bit less halves the step, so g32 must stay near a quarter of int4 g32's."""
    matrix = np.random.default_rng(0).standard_normal((1024, 2048)).astype(np.float32)
    error = lambda bits, group: float(np.linalg.norm(quantize(matrix, bits, group).dequantize() - matrix) / np.linalg.norm(matrix))  # noqa: E731
    int6 = error(6, 32)
    assert 0.020 < int6 < 0.022, int6
    assert 0.24 < int6 / error(4, 32) < 0.27
    assert error(6, 32) < error(6, 64) < error(6, 128)


def test_int6_does_not_exist_in_version_1():
    with pytest.raises(TinyExaoneError, match="int6 weights do not exist in compact format version 1"):
        expected_arrays(6, 32, (8, 64), version=1)


def test_quantize_rejects_bad_input():
    with pytest.raises(TinyExaoneError, match="not a multiple of the group size 64"):
        quantize(np.zeros((4, 96), np.float32), 4, 64)
    with pytest.raises(TinyExaoneError, match="4, 6 or 8 bits"):
        quantize(np.zeros((4, 64), np.float32), 3, 32)
    with pytest.raises(TinyExaoneError, match="group size"):
        quantize(np.zeros((4, 96), np.float32), 8, 48)
    with pytest.raises(TinyExaoneError, match="NaN or infinite"):
        quantize(np.full((2, 32), np.nan, np.float32), 8, 32)
    with pytest.raises(TinyExaoneError, match="too large for float16"):
        quantize(np.full((2, 32), 1e9, np.float32), 8, 32)
    with pytest.raises(TinyExaoneError, match="too large for float16"):
        quantize(np.full((2, 32), 5e5, np.float32), 4, 32)
    with pytest.raises(TinyExaoneError, match="2-D shape"):
        quantize(np.zeros(64, np.float32), 8, 32)


def _stored(bits, group_size, shape):
    return quantize(np.random.default_rng(0).standard_normal(shape).astype(np.float32), bits, group_size).arrays


@pytest.mark.parametrize("bits", [4, 6, 8])
def test_from_arrays_accepts_read_only_views_without_copying(bits):
    arrays = _stored(bits, 64, (5, 128))
    for array in arrays.values():
        array.flags.writeable = False
    weight = QuantizedWeight.from_arrays(bits, 64, (5, 128), arrays)
    assert all(weight.arrays[name] is arrays[name] for name in arrays)
    x = np.ones((1, 128), np.float32)
    np.testing.assert_allclose(weight.matmul(x), x @ weight.dequantize().T, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bits", [4, 6, 8])
def test_from_arrays_rejects_wrong_arrays(bits):
    shape, group_size = (5, 128), 32
    good = _stored(bits, group_size, shape)
    codes = CODE_ARRAYS[bits]
    bad_cases = {
        "missing": ({"scales": good["scales"]}, "needs arrays"),
        "extra": ({**good, "biases": good["scales"]}, "needs arrays"),
        "dtype": ({**good, "scales": good["scales"].astype(np.float32)}, "dtype float32"),
        "codes dtype": ({**good, codes: good[codes].view(np.int16 if bits == 8 else np.int8)}, "dtype"),
        "shape": ({**good, codes: good[codes][:, :2]}, "has shape"),
        "size": ({**good, "scales": good["scales"][:, :2]}, "has shape"),
        "layout": ({**good, "scales": np.asfortranarray(good["scales"])}, "C-contiguous"),
        "not an array": ({**good, "scales": good["scales"].tolist()}, "not a NumPy array"),
    }
    for label, (arrays, message) in bad_cases.items():
        with pytest.raises(TinyExaoneError, match=message):
            QuantizedWeight.from_arrays(bits, group_size, shape, arrays)
    with pytest.raises(TinyExaoneError, match="not a multiple"):
        QuantizedWeight.from_arrays(bits, 64, (5, 96), good)
    with pytest.raises(TinyExaoneError, match="has shape"):
        QuantizedWeight.from_arrays(bits, group_size, (5, 160), good)  # arrays of another in-size


def test_matmul_rejects_mismatched_input_and_output():
    weight = quantize(np.ones((3, 64), np.float32), 8, 32)
    with pytest.raises(TinyExaoneError, match=r"shape \[T, 64\]"):
        weight.matmul(np.ones((2, 32), np.float32))
    with pytest.raises(TinyExaoneError, match="output"):
        weight.matmul(np.ones((2, 64), np.float32), out=np.empty((2, 4), np.float32))


@pytest.fixture(scope="module")
def float_model(tmp_path_factory):
    directory = tmp_path_factory.mktemp("quantized_model")
    build_reference_model(directory, seed=3, **LAYOUTS["global_tied_llama3"])
    return tinyexaone.load(directory)


def _quantized_model(model, bits, group_size, embedding_bits):
    """The same Model with every matrix replaced by its QuantizedWeight (tied head shared)."""
    weights = model.model.weights

    def q(dense, matrix_bits):
        return quantize(dense.matrix, matrix_bits, group_size)

    layers = [
        type(layer)(**{
            name: q(value, bits) if name.endswith("_proj") else value for name, value in vars(layer).items()
        })
        for layer in weights.layers
    ]
    embed = q(weights.embed_tokens, embedding_bits)
    assert weights.lm_head is weights.embed_tokens  # the layout is tied
    quantized = type(weights)(embed_tokens=embed, layers=layers, norm=weights.norm, lm_head=embed)
    return tinyexaone.Model(model.config, quantized)


def _cosine(a, b):
    return float(np.sum(a * b) / (np.linalg.norm(a) * np.linalg.norm(b)))


# int4 g32 cannot reach the cosine 0.99 on this random model: over 20 input seeds its
# logits cosine is 0.934-0.960 (affine int4 measured 0.958 on one), because 4-bit codes leave an
# 8.4% rms weight error that the random 3-layer model amplifies; int8 gives 0.9993-0.9996. The
# argmax agreement is decided by near-ties of random logits: over 20 sequences of 200 it is
# 91.5-97% (mean 94.5%, the same with the plain absmax scale as with the fitted one), so it is
# measured on 5 fixed sequences of 200 (1000 positions), for prefill (blocked kernel) and for
# decode (matvec kernels), activations quantized to int8 per 32-element block in both: measured
# 94.0% for prefill (95.3% with the absmax scale: these 1000 positions alone move by a point).
@pytest.mark.parametrize("bits,min_cosine,min_argmax", [(8, 0.999, 0.92), (4, 0.93, None)])
def test_quantized_model_logits_close_to_float32(float_model, bits, min_cosine, min_argmax):
    """Cosine of all 200 x vocab logits, embedding/head int8; prefill (blocked kernel) and decode (matvec)."""
    model = _quantized_model(float_model, bits, 32, embedding_bits=8)
    rng = np.random.default_rng(2026)
    prefill_argmax, decode_argmax = [], []
    for sequence in range(5):
        ids = rng.integers(0, float_model.config.vocab_size, 200)
        # float32 KV caches: the bounds above are the weights' rounding, measured without the cache's
        expected = float_model.forward(ids, float_model.new_cache(cache_type="f32"))  # [200, vocab]
        prefill = model.forward(ids, model.new_cache(cache_type="f32"))
        cache = model.new_cache(cache_type="f32")
        decode = np.concatenate([model.forward(ids[t : t + 1], cache) for t in range(200)])  # token by token
        for name, logits in (("prefill", prefill), ("decode", decode)):
            cosine = _cosine(logits, expected)
            assert cosine >= min_cosine, f"sequence {sequence}: {name} cosine {cosine:.5f}"
        # decode differs from prefill only by the activation rounding: far less than the weights'
        assert _cosine(decode, prefill) >= 1 - (1 - min_cosine) / 4, f"sequence {sequence}: decode vs prefill"
        prefill_argmax.append(prefill.argmax(axis=1) == expected.argmax(axis=1))
        decode_argmax.append(decode.argmax(axis=1) == expected.argmax(axis=1))
    if min_argmax is not None:
        for name, same in (("prefill", prefill_argmax), ("decode", decode_argmax)):
            assert np.mean(same) >= min_argmax, f"{name}: same argmax on {np.mean(same):.1%} of 1000 positions"


# --- int4k: affine 4-bit codes with 6-bit sub-block scales and minimums (affine_fit.py) ---------------


def int4k_matrix(rng):
    """Odd row counts (9 or more: the constant block, which several candidates fit exactly, is a
    tie to rounding), heavy or light tails, a random scale; an all-zero block, an all-positive and
    an all-negative block, and one constant block."""
    shape = (int(rng.integers(4, 30)) * 2 + 1, 256 * int(rng.integers(1, 4)))
    kind = rng.integers(3)
    matrix = [rng.standard_normal(shape), rng.standard_t(3, shape), rng.laplace(size=shape)][kind]
    matrix = matrix * 10.0 ** rng.uniform(-4, 1)
    matrix[0, :32] = 0.0
    matrix[0, 32:64] = np.abs(matrix[0, 32:64])
    matrix[0, 64:96] = -np.abs(matrix[0, 64:96])
    matrix[0, 96:128] = matrix[0, 100]
    return matrix.astype(np.float32)


def int4k_values(codes, d, dmin, sc, mc):
    """w = d sc q - dmin m, float64 [N, K], from the fit's outputs."""
    steps = np.repeat(d.astype(np.float64), 8, axis=1) * sc  # [N, B]
    offsets = np.repeat(dmin.astype(np.float64), 8, axis=1) * mc
    return (np.repeat(steps, 32, axis=1) * codes - np.repeat(offsets, 32, axis=1))


def test_affine_fit_matches_its_numpy_reference():
    """The kernel's sums are reassociated, so two candidates of a block that tie to rounding can go
    either way; as each trial starts from the best minimum so far, such a tie changes the trials
    after it. Unweighted, that is rare (over 200 seeds at least 99.7% of the outputs agreed, the
    error within 0.05%); under column weights spanning ten decades (random^4) near-ties are common,
    and one changes a row's super-block (d, dmin and all its codes: a ninth of a 9-row matrix), so
    there the errors are held within 1% and most outputs to agree."""
    seed, rng = fresh_rng()
    for _ in range(3):
        matrix = int4k_matrix(rng)
        for weights, least, rtol in ((None, 0.99, 1e-3), (rng.random(matrix.shape[1]) ** 4, 0.8, 1e-2)):
            ours, ref = fit_affine(matrix, weights), fit_affine_numpy(matrix, weights)
            for got, want in zip(ours, ref):
                assert got.dtype == want.dtype and got.shape == want.shape
            same = np.mean([np.mean(got == want) for got, want in zip(ours, ref)])
            assert same > least, f"seed {seed}: only {same:.4f} of the outputs agree"  # ties to rounding only
            errors = [np.linalg.norm(int4k_values(*fit) - matrix) for fit in (ours, ref)]
            np.testing.assert_allclose(*errors, rtol=rtol, err_msg=f"seed {seed}")


def plain_affine_block(x, v):
    """Step 1 of affine_fit's module doc for one block, written out from its text: (a, m)."""
    x, v = x.astype(np.float64), v.astype(np.float64)
    lo, hi = min(x.min(), 0.0), x.max()
    if hi <= lo:
        return 0.0, -lo
    codes = np.clip(np.rint((x - lo) * (15 / (hi - lo))), 0, 15)
    best_a, best_c = (hi - lo) / 15, lo
    best = np.sum(v * (best_a * codes + best_c - x) ** 2)
    for step in range(21):  # t = -1, -0.9, ..., 1: (15 + t) = 14 + step / 10
        b = best_c
        if hi <= b:
            continue
        codes = np.clip(np.rint((x - b) * ((14 + 0.1 * step) / (hi - b))), 0, 15)
        w, wl, wll = np.sum(v), np.sum(v * codes), np.sum(v * codes * codes)
        wx, wlx = np.sum(v * x), np.sum(v * codes * x)
        det = w * wll - wl * wl  # the normal equations of x ~= a l + c, solved in closed form
        if det > 1e-12 * w * wll:
            a, c = (w * wlx - wl * wx) / det, (wll * wx - wl * wlx) / det
            if c > 0:
                a, c = wlx / wll, 0.0
        elif wx > 0 and wll > 0:
            a, c = wlx / wll, 0.0
        else:
            a, c = 0.0, min(wx / w, 0.0)
        c = min(c, 0.0)
        error = np.sum(v * (a * codes + c - x) ** 2)
        if error < best:
            best, best_a, best_c = error, a, c
    return max(best_a, 0.0), max(-best_c, 0.0)


def test_affine_fit_follows_the_documented_search_per_block():
    """The NumPy statement's scales and minimums (the kernel is held to it above) are those of
    step 1 (the trials from the best minimum so far, llama.cpp's make_qkx2_quants) written out
    here, put through step 2: sc = rint(a / d), m = rint(m / dmin)."""
    seed, rng = fresh_rng()
    matrix = int4k_matrix(rng)[:3]
    for weights in (None, rng.random(matrix.shape[1]) ** 4):
        _, d, dmin, sc, mc = fit_affine_numpy(matrix, weights)
        v = np.ones(matrix.shape[1]) if weights is None else weights
        fits = np.array([[plain_affine_block(matrix[n, k:k + 32], v[k:k + 32]) for k in range(0, matrix.shape[1], 32)]
                         for n in range(len(matrix))])  # [N, B, 2]
        unit = np.repeat(d.astype(np.float64), 8, axis=1), np.repeat(dmin.astype(np.float64), 8, axis=1)
        for got, fit, step in ((sc, fits[..., 0], unit[0]), (mc, fits[..., 1], unit[1])):
            want = np.where(step > 0, np.clip(np.rint(fit / np.where(step > 0, step, 1)), 0, 63), 0)
            assert np.mean(got == want) > 0.99, f"seed {seed}: {np.mean(got == want):.4f}"  # ties to rounding only


def test_affine_fit_follows_the_documented_rule_per_block():
    """Codes 0..15, 6-bit codes 0..63, the largest sub-scale and minimum of a super-block at 63 (of
    d, dmin = max / 63 in float16), each code the nearest level of its stored step and offset, an
    all-zero block all zero."""
    seed, rng = fresh_rng()
    matrix = int4k_matrix(rng)
    codes, d, dmin, sc, mc = fit_affine(matrix)
    assert codes.max() <= 15 and sc.max() <= 63 and mc.max() <= 63
    top_sc, top_mc = sc.reshape(len(matrix), -1, 8).max(axis=2), mc.reshape(len(matrix), -1, 8).max(axis=2)
    for top, unit in ((top_sc, d), (top_mc, dmin)):  # 62: d rounded up to float16; less where d is subnormal
        unit64 = unit.astype(np.float64)
        least = np.minimum(62, np.rint(63 * (1 - 0.5 * np.spacing(unit).astype(np.float64) / np.where(unit64 > 0, unit64, 1))))
        assert np.all((top >= least) | (unit == 0)), f"seed {seed}"
    steps = np.repeat(np.repeat(d.astype(np.float64), 8, axis=1) * sc, 32, axis=1)
    offsets = np.repeat(np.repeat(dmin.astype(np.float64), 8, axis=1) * mc, 32, axis=1)
    ideal = np.where(steps > 0, (matrix + offsets) / np.where(steps > 0, steps, 1), 0)
    np.testing.assert_array_equal(codes, np.where(steps > 0, np.clip(np.rint(ideal), 0, 15), 0), err_msg=f"seed {seed}")
    values = int4k_values(codes, d, dmin, sc, mc)
    assert not values[0, :32].any(), f"seed {seed}"


def test_int4k_weight_error_is_below_llama_cpp_q4_k_on_gaussian_weights():
    """llama.cpp's Q4_K has 0.0713 relative error on Gaussian weights (docs/quantization.md);
    symmetric int4 g32 0.0838. Fresh Gaussian matrices, 4.5 bits per weight."""
    seed, rng = fresh_rng()
    matrix = rng.standard_normal((256, 2048)).astype(np.float32)
    weight = quantize(matrix, 4, 32, affine=True)
    error = np.linalg.norm(weight.dequantize() - matrix) / np.linalg.norm(matrix)
    assert error < 0.0711, f"seed {seed}: {error}"  # below Q4_K's: numpy.random.default_rng(0) gives 0.0708
    assert weight.nbytes * 8 / matrix.size == 4.5


def test_int4k_layout_places_each_element_where_the_docstring_says():
    """Decode the stored bytes by the module doc's rules, written out here element by element."""
    seed, rng = fresh_rng()
    matrix = int4k_matrix(rng)
    n_rows, in_dim = matrix.shape
    codes, d, dmin, sc, mc = fit_affine(matrix)
    weight = quantize(matrix, 4, 32, affine=True)
    nibbles, scales = weight.arrays["nibbles"], weight.arrays["scales"]
    expected = int4k_values(codes, d, dmin, sc, mc)
    for n in rng.choice(n_rows, min(n_rows, 5), replace=False):
        g, r = divmod(int(n), 8)
        for k in rng.choice(in_dim, 40, replace=False):
            b, e = divmod(int(k), 32)
            s, j = divmod(b, 8)
            c, i = divmod(e % 16, 4)
            q = (nibbles[g, b, 32 * c + 4 * r + i] >> (4 * (e >= 16))) & 15
            row_d = scales[g, s, 2 * r : 2 * r + 2].copy().view(np.float16)[0]
            row_dmin = scales[g, s, 16 + 2 * r : 16 + 2 * r + 2].copy().view(np.float16)[0]
            words = scales[g, s, 32 + 12 * j : 44 + 12 * j].copy().view("<u4")
            scale_code = ((int(words[0]) >> (4 * r)) & 15) | (((int(words[2]) >> (2 * r)) & 3) << 4)
            min_code = ((int(words[1]) >> (4 * r)) & 15) | (((int(words[2]) >> (16 + 2 * r)) & 3) << 4)
            assert (q, scale_code, min_code) == (codes[n, k], sc[n, b], mc[n, b]), f"seed {seed}"
            value = float(row_d) * scale_code * q - float(row_dmin) * min_code
            assert value == expected[n, k], f"seed {seed}"
    np.testing.assert_allclose(weight.dequantize(), expected, rtol=1e-6, atol=1e-30)
    if n_rows % 8:  # the last group's rows past N: d = dmin = 0 and code 0
        last = n_rows % 8
        assert not scales[-1, :, 2 * last:16].any() and not scales[-1, :, 16 + 2 * last:32].any()
        assert not nibbles[-1].reshape(-1, 4, 8, 4)[:, :, last:].any()


def test_int4k_rejects_what_it_cannot_hold():
    with pytest.raises(TinyExaoneError, match="multiple of 256"):
        quantize(np.zeros((4, 192), np.float32), 4, 32, affine=True)
    with pytest.raises(TinyExaoneError, match="int4k and int6k need 4 or 6 bits"):
        quantize(np.zeros((4, 256), np.float32), 8, 32, affine=True)
    with pytest.raises(TinyExaoneError, match="int4k and int6k need 4 or 6 bits"):
        quantize(np.zeros((4, 256), np.float32), 4, 64, affine=True)
    with pytest.raises(TinyExaoneError, match="int4k and int6k need"):
        quantize(np.zeros((4, 256), np.float32), 6, 64, affine=True)
    with pytest.raises(TinyExaoneError, match="multiple of 256"):
        quantize(np.zeros((4, 192), np.float32), 6, 32, affine=True)
    with pytest.raises(TinyExaoneError, match="too large for int4k"):
        quantize(np.full((2, 256), 1e5, np.float32), 4, 32, affine=True)
    with pytest.raises(TinyExaoneError, match="NaN or infinite"):
        quantize(np.full((2, 256), np.inf, np.float32), 4, 32, affine=True)
    with pytest.raises(TinyExaoneError, match="column weights"):
        quantize(np.ones((2, 256), np.float32), 4, 32, np.ones(255), affine=True)


def test_int4k_from_arrays_rejects_wrong_arrays():
    shape = (5, 512)
    good = quantize(np.random.default_rng(0).standard_normal(shape).astype(np.float32), 4, 32, affine=True).arrays
    bad_cases = {
        "scales as float16": ({**good, "scales": good["scales"].view(np.float16)}, "dtype float16"),
        "scales cut": ({**good, "scales": good["scales"][:, :, :96]}, "has shape"),
        "one super-block": ({**good, "scales": good["scales"][:, :1]}, "has shape"),
        "nibbles cut": ({**good, "nibbles": good["nibbles"][:, :8]}, "has shape"),
        "missing": ({"nibbles": good["nibbles"]}, "needs arrays"),
    }
    for label, (arrays, message) in bad_cases.items():
        with pytest.raises(TinyExaoneError, match=message):
            QuantizedWeight.from_arrays(4, 32, shape, arrays, affine=True)
    with pytest.raises(TinyExaoneError, match="has dtype uint8, expected float16"):
        QuantizedWeight.from_arrays(4, 32, shape, good)  # read as symmetric int4
    weight = QuantizedWeight.from_arrays(4, 32, shape, good, affine=True)
    assert weight.scheme == "int4k" and weight.nbytes * 8 / (8 * 512) == 4.5


def plain_searched_scale(x, v, qn):
    """scale_fit's searched rule for one group, written out from its module doc: the float16 scale."""
    x, v = x.astype(np.float64), v.astype(np.float64)
    if not x.any():
        return np.float16(0)
    top = x[np.argmax(np.abs(x))]
    u = v * x * x
    best, scale = None, 0.0
    for t in [0] + [t for t in range(-9, 10) if t]:
        codes = np.clip(np.rint(x * (-(qn + 0.1 * t) / top)), -qn, qn - 1)
        ull = np.sum(u * codes * codes)
        fitted = np.sum(u * x * codes) / ull if ull > 0 else 0.0
        removed = fitted * np.sum(u * x * codes)
        if best is None or removed > best:
            best, scale = removed, fitted
    return np.float16(np.float32(scale))


@pytest.mark.parametrize("bits, group_size", [(6, 16), (4, 32), (8, 32)])
def test_searched_scales_follow_their_rule_and_kernel_matches(bits, group_size):
    """fit_search_scales_numpy against the rule written out per group (heavy tails, column weights,
    an all-zero group, a group of one value, which several trials fit exactly: there the choice is
    a tie to rounding, and any is exact); the Numba kernel against the NumPy statement."""
    seed, rng = fresh_rng()
    shape = (int(rng.integers(5, 12)) * 2 + 1, 1024)
    matrix = (rng.standard_t(4, shape) * 10.0 ** rng.uniform(-4, 1)).astype(np.float32)
    matrix[0, :group_size] = 0.0
    matrix[0, group_size:2 * group_size] = matrix[0, 5 * group_size]
    for weights in (None, rng.random(shape[1]) ** 4):
        scales, codes = fit_search_scales_numpy(matrix, bits, group_size, weights)
        v = np.ones(shape[1]) if weights is None else weights
        want = np.array([[plain_searched_scale(matrix[n, k:k + group_size], v[k:k + group_size], 2 ** (bits - 1))
                          for k in range(0, shape[1], group_size)] for n in range(len(matrix))])
        assert np.mean(scales == want) > 0.99, f"seed {seed}"  # ties to rounding only
        assert scales[0, 0] == 0 and not codes[0, :group_size].any()
        fast_scales, fast_codes = fit_search_scales(matrix, bits, group_size, weights)
        assert np.mean(fast_scales == scales) > 0.99 and np.mean(fast_codes == codes) > 0.99, f"seed {seed}"
        constant = matrix[0, group_size:2 * group_size]
        for got_scale, got_codes in ((scales, codes), (fast_scales, fast_codes)):  # exact but for the float16 scale
            scale, group_codes = got_scale[0, 1], got_codes[0, group_size:2 * group_size].astype(np.float64)
            slack = np.abs(group_codes) * float(np.spacing(np.abs(scale))) * 0.51 + 1e-9 * abs(float(constant[0]))
            assert np.all(np.abs(float(scale) * group_codes - constant) <= slack), f"seed {seed}"


def test_int6k_fit_follows_the_documented_rule():
    """Against the rule written out here from fit_search_scales_numpy's 16-element scales: d = float16(max |s| / 127)
    per 256, sub = rint(s / d), codes rounded against float32(d) * sub; an all-zero super-block
    gets d = 0; the Numba scale fit gives the same result but where its scales tie to rounding."""
    seed, rng = fresh_rng()
    matrix = (rng.standard_t(4, (int(rng.integers(1, 30)) * 2 + 1, 256 * int(rng.integers(1, 4)))) * 0.02).astype(np.float32)
    matrix[0, :256] = 0.0
    codes, d, sub = fit_sub_scales(matrix, fit=fit_search_scales_numpy)
    scales = fit_search_scales_numpy(matrix, 6, 16)[0].astype(np.float32).reshape(matrix.shape[0], -1, 16)  # [N, S, 16]
    want_d = (np.abs(scales).max(axis=2) / np.float32(127)).astype(np.float16)
    np.testing.assert_array_equal(d, want_d, err_msg=f"seed {seed}")
    d32 = want_d.astype(np.float32)[:, :, None]
    want_sub = np.where(d32 > 0, np.rint(scales / np.where(d32 > 0, d32, 1)), 0)
    np.testing.assert_array_equal(sub.reshape(want_sub.shape), want_sub, err_msg=f"seed {seed}")
    steps = np.repeat((d32 * want_sub).reshape(matrix.shape[0], -1), 16, axis=1)
    for n, k in zip(rng.integers(0, matrix.shape[0], 200), rng.integers(0, matrix.shape[1], 200)):
        step = steps[n, k]
        assert codes[n, k] == (0 if step == 0 else np.clip(np.rint(matrix[n, k] / step), -32, 31)), f"seed {seed}"
    assert d[0, 0] == 0 and not codes[0, :256].any()
    fast_codes, fast_d, fast_sub = fit_sub_scales(matrix)
    assert (fast_d == d).mean() > 0.99 and (fast_codes == codes).mean() > 0.99, f"seed {seed}"


def test_int6k_weight_error_is_below_int6_at_a_sixteenth_of_a_bit_more():
    """6.5625 bits (Q6_K's) against int6 g32's 6.5: Gaussian 1024 x 2048 0.0177 against 0.0215,
    Student-t (4) 0.0229 against 0.0292 (llama.cpp's Q6_K: 0.0178 on Gaussian weights, 0.0229 on
    Student-t): the 16-element sub-blocks follow heavy tails."""
    rng = np.random.default_rng(0)
    for matrix, bound in ((rng.standard_normal((1024, 2048)), 0.0179), (rng.standard_t(4, (512, 2048)), 0.0231)):
        matrix = matrix.astype(np.float32)
        error = lambda affine: float(np.linalg.norm(quantize(matrix, 6, 32, affine=affine).dequantize() - matrix) / np.linalg.norm(matrix))  # noqa: E731
        sub_scaled, plain = error(True), error(False)
        assert sub_scaled < bound and sub_scaled < 0.9 * plain, (sub_scaled, plain)


def test_int6k_layout_places_each_element_where_the_docstring_says():
    """Decode the stored int6k arrays element by element as documented (codes as int6's, d at
    bytes 2 r, sub-scale of block j half h at 16 + 16 j + 8 h + r); compare with dequantize()."""
    _, rng = fresh_rng()
    shape = (11, 512)
    weight = quantize(rng.standard_normal(shape).astype(np.float32), 6, 32, affine=True)
    assert weight.scheme == "int6k" and weight.nbytes * 8 / (16 * shape[1]) == 6.5625
    codes, scales = weight.arrays["codes"], weight.arrays["scales"]
    decoded = np.empty(shape, np.float32)
    for n in range(shape[0]):
        g, r = divmod(n, 8)
        for k in range(shape[1]):
            block, e = divmod(k, 32)
            c, i = divmod(e % 16, 4)
            h, j = e // 16, (e % 16) // 4
            byte, plane = int(codes[g, block, 32 * c + 4 * r + i]), int(codes[g, block, 128 + 32 * h + 4 * r + i])
            q = ((byte & 15 if h == 0 else byte >> 4) | ((plane >> (2 * j)) & 3) << 4) - 32
            s, b = divmod(block, 8)
            d = np.float32(scales[g, s, 2 * r:2 * r + 2].view(np.float16)[0])
            at = 16 + 16 * b + 8 * h + r
            sub = np.float32(scales[g, s, at:at + 1].view(np.int8)[0])
            decoded[n, k] = (d * sub) * q
    np.testing.assert_array_equal(decoded, weight.dequantize())
    assert not scales[1, :, 2 * 3:16].any()  # d of rows 11..15 of the last group


def test_int6k_from_arrays_rejects_wrong_arrays():
    good = quantize(np.random.default_rng(0).standard_normal((5, 256)).astype(np.float32), 6, 32, affine=True).arrays
    with pytest.raises(TinyExaoneError, match="has shape"):
        QuantizedWeight.from_arrays(6, 32, (5, 256), {**good, "scales": good["scales"][:, :, :128].copy()}, affine=True)
    with pytest.raises(TinyExaoneError, match="needs arrays"):
        QuantizedWeight.from_arrays(4, 32, (5, 256), good, affine=True)  # int4k's arrays are nibbles and scales
