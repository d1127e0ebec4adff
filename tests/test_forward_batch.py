"""`Model.forward_batch` (several sequences, one decode step) against one-token `forward` per
sequence, and `Model.forward_many` (decode steps and prefill chunks together) against `forward`.

Sequences of different lengths, cache types and layer kinds (sliding and full) decode together;
each row must equal what that sequence alone gets, and the caches must end exactly as they
would alone. Bad batches (repeated cache, count mismatch, a full cache) fail before any cache
changes.
"""

from pathlib import Path

import numpy as np
import pytest

import tinyexaone
from tinyexaone.errors import ContextOverflowError, TinyExaoneError
from tinyexaone.quantized import QuantizedWeight


DEMO = Path(__file__).resolve().parents[1] / "models" / "exaone4-demo"


@pytest.fixture(scope="module", params=["demo-float32", "demo-int4", "hybrid-sliding"])
def model(request, tmp_path_factory):
    """The demo model in float32 (its directory) and as the int4 compact file (integer kernels),
    and a tiny transformers-made hybrid model whose sliding layers keep ring buffers of 6."""
    if request.param == "hybrid-sliding":
        from reference_models import LAYOUTS, build_reference_model

        directory = tmp_path_factory.mktemp("hybrid")
        build_reference_model(directory, **LAYOUTS["hybrid_lllg_untied"])
        return tinyexaone.load(directory).model
    return tinyexaone.load(DEMO if request.param == "demo-float32" else DEMO / "exaone4-demo-int4.tx").model


def quantized(model) -> bool:
    return isinstance(model.weights.layers[0].q_proj, QuantizedWeight)


def _prefilled(model, ids, cache_type):
    cache = model.new_cache(cache_type=cache_type)
    model.forward(ids, cache)
    return cache


@pytest.mark.parametrize("cache_type", ["f32", "f16", "q8"])
def test_batch_rows_equal_separate_decodes(model, cache_type):
    rng = np.random.default_rng()
    vocab = model.config.vocab_size
    lengths = [int(n) for n in rng.integers(1, 40, size=5)]
    prompts = [rng.integers(0, vocab, size=n) for n in lengths]
    alone = [_prefilled(model, p, cache_type) for p in prompts]
    together = [_prefilled(model, p, cache_type) for p in prompts]
    for step in range(3):
        next_ids = rng.integers(0, vocab, size=len(prompts))
        expected = np.concatenate([model.forward([t], c) for t, c in zip(next_ids, alone)])  # [B, vocab]
        got = model.forward_batch(next_ids, together)  # [B, vocab]
        assert got.shape == expected.shape
        if quantized(model):  # int32 dots and the same scale arithmetic: bit for bit
            np.testing.assert_array_equal(got, expected)
        else:  # BLAS rounds a B-row product differently from a 1-row one; a float16 or int8 cache
            # can round a key that differs in its last bit to the neighbouring code
            bound = 1e-4 if cache_type == "f32" else 3e-3
            np.testing.assert_allclose(got, expected, rtol=bound, atol=bound * np.abs(expected).max())
        for a, b in zip(alone, together):
            assert a.length == b.length
    # the caches hold the same keys: the next single-token step agrees too
    probe = rng.integers(0, vocab)
    for a, b in zip(alone, together):
        after_batch, after_alone = model.forward([probe], b), model.forward([probe], a)
        if quantized(model):
            np.testing.assert_array_equal(after_batch, after_alone)
        else:
            np.testing.assert_allclose(after_batch, after_alone, rtol=3e-3, atol=3e-3 * np.abs(after_alone).max())


def test_batch_of_one_is_forward(model):
    ids = np.arange(7) % model.config.vocab_size
    a, b = _prefilled(model, ids, "f16"), _prefilled(model, ids, "f16")
    np.testing.assert_array_equal(model.forward_batch([3], [a]), model.forward([3], b))


def test_bad_batches_change_nothing(model):
    cache = _prefilled(model, [1, 2, 3], "f16")
    other = _prefilled(model, [4, 5], "f16")
    with pytest.raises(TinyExaoneError, match="distinct cache"):
        model.forward_batch([1, 2], [cache, cache])
    with pytest.raises(TinyExaoneError, match="distinct cache"):
        model.forward_batch([1, 2], [cache])
    with pytest.raises(TinyExaoneError, match="outside the vocabulary"):
        model.forward_batch([1, model.config.vocab_size], [cache, other])
    full = model.new_cache(max_tokens=2)
    model.forward([1, 2], full)
    with pytest.raises(ContextOverflowError):
        model.forward_batch([1, 2], [cache, full])
    assert (cache.length, other.length, full.length) == (3, 2, 2)


@pytest.mark.parametrize("cache_type", ["f16", "q8"])
def test_forward_many_entries_equal_separate_forwards(model, cache_type):
    """Decode steps and prefill chunks of several sequences in one pass (the server's mixed
    rounds): each entry is what that sequence's own `forward` gives, for the last token or every
    one, and the caches end alike (the next step agrees)."""
    rng = np.random.default_rng()
    vocab = model.config.vocab_size
    prompts = [rng.integers(0, vocab, size=int(n)) for n in rng.integers(1, 30, size=5)]
    alone = [_prefilled(model, p, cache_type) for p in prompts]
    together = [_prefilled(model, p, cache_type) for p in prompts]
    for step in range(2):
        new = [rng.integers(0, vocab, size=int(n)) for n in [1, rng.integers(2, 20), 1, 9, 1]]  # past the ring of 6
        last_only = [bool(flag) for flag in rng.integers(0, 2, size=len(new))]
        expected = [model.forward(ids, c, last_only=only) for ids, c, only in zip(new, alone, last_only)]
        got = model.forward_many(new, together, last_only=last_only)
        for g, e, ids, only in zip(got, expected, new, last_only):
            assert g.shape == e.shape == (1 if only else len(ids), vocab)
            if quantized(model):
                np.testing.assert_array_equal(g, e)
            else:
                np.testing.assert_allclose(g, e, rtol=3e-3, atol=3e-3 * np.abs(e).max())
        assert [c.length for c in together] == [c.length for c in alone]
    probe = rng.integers(0, vocab)
    after_many = model.forward_batch([probe] * len(prompts), together)
    after_alone = np.concatenate([model.forward([probe], c) for c in alone])
    if quantized(model):
        np.testing.assert_array_equal(after_many, after_alone)
    else:
        np.testing.assert_allclose(after_many, after_alone, rtol=3e-3, atol=3e-3 * np.abs(after_alone).max())


def test_bad_forward_many_changes_nothing(model):
    cache = _prefilled(model, [1, 2, 3], "f16")
    other = _prefilled(model, [4, 5], "f16")
    with pytest.raises(TinyExaoneError, match="distinct cache"):
        model.forward_many([[1, 2], [3]], [cache, cache])
    with pytest.raises(TinyExaoneError, match="outside the vocabulary"):
        model.forward_many([[1, 2], [model.config.vocab_size]], [cache, other])
    with pytest.raises(TinyExaoneError, match="one type"):
        model.forward_many([[1, 2], [3]], [cache, _prefilled(model, [4], "q8")])
    full = model.new_cache(max_tokens=4)
    model.forward([1, 2], full)
    with pytest.raises(ContextOverflowError):
        model.forward_many([[1, 2, 3], [4]], [full, cache])
    assert (cache.length, other.length, full.length) == (3, 2, 2)
