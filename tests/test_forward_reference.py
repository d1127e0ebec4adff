"""The float32 forward pass against transformers (float64) on tiny random-weight models.

Each layout of `reference_models.LAYOUTS` is built with transformers, saved, loaded by
tinyexaone, and compared with a float32 KV cache ("f32"): full-sequence logits, token-by-token
and chunked decoding through the cache, and 32 greedy tokens against transformers' `generate`.
Also bf16/f16 and sharded checkpoints, the sliding layers' constant cache memory, trim/re-prefill
and rollback after an interrupted forward pass; and the f16 (default) and q8 caches within their
own, looser bounds (CACHE_BOUNDS).
"""

import numpy as np
import pytest

import tinyexaone
from reference_models import LAYOUTS, build_reference_model, reference_greedy, reference_logits
from tinyexaone.errors import TinyExaoneError

MAX_ABS = 2e-3
MAX_REL_L2 = 5e-5
SEQ_LEN = 40  # >= 3x every window used in LAYOUTS (6 and 5)
# (max abs, rel L2) of the logits with a rounded KV cache. Measured over the four layouts with
# seeds 7, 8 and 9 (full sequence, token by token, chunks of 7): f16 at most 2.6e-3 and 6.3e-4,
# q8 at most 6.3e-2 and 1.5e-2 (f32: 3e-6 and 8e-7); the bounds leave about 3x.
CACHE_BOUNDS = {"f16": (1e-2, 2e-3), "q8": (0.2, 5e-2)}


def assert_close(ours, ref, max_abs_bound=MAX_ABS, rel_l2_bound=MAX_REL_L2):
    assert ours.shape == ref.shape
    assert np.all(np.isfinite(ours))
    max_abs = np.abs(ours - ref).max()
    rel_l2 = np.linalg.norm(ours - ref) / np.linalg.norm(ref)
    assert max_abs <= max_abs_bound and rel_l2 <= rel_l2_bound, f"max abs {max_abs:.3g}, rel L2 {rel_l2:.3g}"


def f32_cache(model):
    """A float32 KV cache: the one the transformers bounds above hold for."""
    return model.new_cache(cache_type="f32")


_BUILT = {}


def build(name, tmp_path_factory):
    """(layout name, tinyexaone model, float64 transformers model, token ids), built once per layout."""
    if name not in _BUILT:
        directory = tmp_path_factory.mktemp(name)
        ref = build_reference_model(directory, seed=7, **LAYOUTS[name])
        ids = np.random.default_rng(11).integers(0, LAYOUTS[name]["vocab_size"], SEQ_LEN)
        _BUILT[name] = name, tinyexaone.load(directory), ref, ids
    return _BUILT[name]


@pytest.fixture(scope="module", params=sorted(LAYOUTS))
def built(request, tmp_path_factory):
    return build(request.param, tmp_path_factory)


@pytest.fixture(scope="module", params=sorted(n for n, layout in LAYOUTS.items() if layout["sliding_window"]))
def built_sliding(request, tmp_path_factory):
    return build(request.param, tmp_path_factory)


def test_layer_kinds_match_transformers(built):
    _, model, ref, _ = built
    assert list(model.config.layer_types) == list(ref.config.layer_types)


def test_full_sequence_logits(built):
    _, model, ref, ids = built
    assert_close(model.forward(ids, f32_cache(model)), reference_logits(ref, ids))


def test_token_by_token_decoding_equals_full_sequence(built):
    _, model, ref, ids = built
    cache = f32_cache(model)
    steps = [model.forward(ids[:1], cache)] + [model.forward(ids[i : i + 1], cache) for i in range(1, len(ids))]
    assert cache.length == len(ids)
    assert_close(np.concatenate(steps), reference_logits(ref, ids))


@pytest.mark.parametrize("cache_type", sorted(CACHE_BOUNDS))
def test_rounded_caches_stay_within_their_bounds(built, cache_type):
    """The f16 (default) and q8 caches against the same reference, prefill and token by token."""
    _, model, ref, ids = built
    full = reference_logits(ref, ids)
    assert_close(model.forward(ids, model.new_cache(cache_type=cache_type)), full, *CACHE_BOUNDS[cache_type])
    cache = model.new_cache(cache_type=cache_type)
    steps = np.concatenate([model.forward(ids[i : i + 1], cache) for i in range(len(ids))])
    assert_close(steps, full, *CACHE_BOUNDS[cache_type])


def test_chunked_prefill_equals_full_sequence(built):
    _, model, ref, ids = built
    cache = f32_cache(model)
    chunks = [model.forward(ids[i : i + 7], cache) for i in range(0, len(ids), 7)]
    assert_close(np.concatenate(chunks), reference_logits(ref, ids))


def test_greedy_tokens_equal_transformers_generate(built):
    _, model, ref, ids = built
    prompt = ids[:9]
    expected = reference_greedy(ref, prompt, 32)
    cache = f32_cache(model)
    logits = model.forward(prompt, cache)
    ours = []
    for _ in range(32):
        token = int(np.argmax(logits[-1]))
        ours.append(token)
        logits = model.forward([token], cache)
    assert ours == expected


def test_sliding_layers_keep_window_sized_memory(built_sliding):
    name, model, ref, ids = built_sliding
    cfg = model.config
    cache = f32_cache(model)
    for token in ids:
        model.forward([int(token)], cache)
    row_bytes = 2 * cfg.num_key_value_heads * cfg.head_dim * 4
    for i, layer_cache in enumerate(cache.layers):
        if cfg.layer_is_sliding(i):
            assert layer_cache.nbytes == cfg.sliding_window * row_bytes
        else:
            assert layer_cache.nbytes >= len(ids) * row_bytes


def test_trim_and_reprefill_reproduce_logits(built):
    _, model, ref, ids = built
    full = reference_logits(ref, ids)
    cache = f32_cache(model)
    model.forward(ids[:30], cache)
    if cache.can_trim(20):
        cache.trim(20)
        assert cache.length == 20
        assert_close(model.forward(ids[20:], cache), full[20:])
    else:  # a ring buffer no longer holds what position 20 would see
        with pytest.raises(TinyExaoneError, match="cannot roll back"):
            cache.trim(20)
        cache.reset()
        assert_close(model.forward(ids, cache), full)
    # rolling back the newest token is always possible
    cache.trim(cache.length - 1)
    assert_close(model.forward(ids[-1:], cache), full[-1:])


def test_interrupted_forward_leaves_cache_usable(built, monkeypatch):
    _, model, ref, ids = built
    full = reference_logits(ref, ids)
    cache = f32_cache(model)
    model.forward(ids[:20], cache)
    calls = {"n": 0}
    original = model.model._mlp_block

    def interrupt_in_second_layer(layer, h):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return original(layer, h)

    monkeypatch.setattr(model.model, "_mlp_block", interrupt_in_second_layer)
    with pytest.raises(KeyboardInterrupt):
        model.forward(ids[20:25], cache)
    monkeypatch.undo()
    assert cache.length in (0, 20)  # rolled back, or emptied where a ring buffer cannot roll back
    assert len({layer.length for layer in cache.layers}) == 1
    start = cache.length
    assert_close(model.forward(ids[start:], cache), full[start:])


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_checkpoints(tmp_path, dtype):
    ref = build_reference_model(tmp_path, seed=3, dtype=dtype, **LAYOUTS["global_tied_llama3"])
    ids = np.random.default_rng(5).integers(0, 211, 24)
    model = tinyexaone.load(tmp_path)
    assert_close(model.forward(ids, f32_cache(model)), reference_logits(ref, ids))


def test_sharded_checkpoint(tmp_path):
    ref = build_reference_model(tmp_path / "full", seed=4, **LAYOUTS["hybrid_lllg_untied"])
    ref.float().save_pretrained(tmp_path / "sharded", max_shard_size="40KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    ids = np.random.default_rng(6).integers(0, 173, 30)
    model = tinyexaone.load(tmp_path / "sharded")
    assert_close(model.forward(ids, f32_cache(model)), reference_logits(ref, ids))


def test_context_limit_is_a_clear_error(built):
    _, model, _, ids = built
    cache = model.new_cache(max_tokens=10)
    model.forward(ids[:8], cache)
    with pytest.raises(TinyExaoneError, match="context is full"):
        model.forward(ids[8:11], cache)
    assert cache.length == 8
    limit = model.config.max_position_embeddings
    with pytest.raises(TinyExaoneError, match="context is full"):
        model.new_cache(max_tokens=limit + 100).check_room(limit + 1)


def test_bad_token_ids(built):
    _, model, _, _ = built
    with pytest.raises(TinyExaoneError, match="outside the vocabulary"):
        model.forward([1, model.config.vocab_size])
    with pytest.raises(TinyExaoneError, match="non-empty"):
        model.forward([])


def test_last_only_logits_equal_the_last_row(built):
    _, model, _, ids = built
    np.testing.assert_allclose(model.forward(ids, last_only=True), model.forward(ids)[-1:], rtol=1e-5, atol=1e-5)


def test_ring_buffer_trims_freely_until_it_evicts(built_sliding):
    _, model, _, ids = built_sliding
    window = model.config.sliding_window
    cache = f32_cache(model)
    model.forward(ids[: window - 1], cache)  # nothing evicted yet: every earlier prefix is held
    assert all(cache.can_trim(n) for n in range(window))
    model.forward(ids[window - 1 : window + 3], cache)  # positions 0..3 are gone now
    assert not cache.can_trim(1) and cache.can_trim(cache.length - 1)


def test_a_cache_of_another_shape_is_refused_before_any_kernel(built, tmp_path):
    """Each layout's cache against a model of every other layout (and a hand-made object): one
    error line, never the kernels writing past a buffer."""
    name, model, _, ids = built
    for other_name, layout in LAYOUTS.items():
        if other_name == name:
            continue
        build_reference_model(tmp_path / other_name, seed=1, **layout)
        other = tinyexaone.load(tmp_path / other_name)
        if other.model.cache_layout == model.model.cache_layout:
            continue
        for n_tokens in (1, 5):  # decode and prefill
            with pytest.raises(TinyExaoneError, match="not made for this model"):
                model.forward(ids[:n_tokens], other.new_cache())
    with pytest.raises(TinyExaoneError, match="not made for this model"):
        model.forward(ids[:3], object())
    for bad in ("x", 0, -5, 2.5, True):
        with pytest.raises(TinyExaoneError, match="cache size"):
            model.new_cache(bad)
