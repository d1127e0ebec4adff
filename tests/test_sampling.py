"""Sampling filters on hand-made logits, the seeded draw, and parameter validation."""

import numpy as np
import pytest

from tinyexaone import TinyExaoneError
from tinyexaone.sampling import (
    Sampler,
    SamplingParams,
    apply_presence_frequency_penalty,
    apply_repetition_penalty,
    apply_temperature,
    draw,
    min_p_filter,
    softmax,
    top_k_filter,
    top_p_filter,
)

NEG = -np.inf


def kept(logits) -> list[int]:
    return np.flatnonzero(np.isfinite(logits)).tolist()


def test_repetition_penalty_divides_positive_and_multiplies_negative():
    logits = np.array([2.0, -2.0, 1.0, 0.5], np.float32)
    out = apply_repetition_penalty(logits, [0, 1, 1], 2.0)
    np.testing.assert_array_equal(out, [1.0, -4.0, 1.0, 0.5])
    np.testing.assert_array_equal(logits, [2.0, -2.0, 1.0, 0.5])  # input untouched
    np.testing.assert_array_equal(apply_repetition_penalty(logits, [0], 1.0), logits)


def test_presence_and_frequency_penalties_use_counts():
    out = apply_presence_frequency_penalty(np.zeros(5), [1, 1, 3], presence=0.5, frequency=0.25)
    np.testing.assert_allclose(out, [0.0, -1.0, 0.0, -0.75, 0.0])
    np.testing.assert_array_equal(apply_presence_frequency_penalty(np.ones(3), [], 1.0, 1.0), np.ones(3))


def test_temperature_scales_logits():
    np.testing.assert_allclose(apply_temperature(np.array([1.0, -2.0]), 0.5), [2.0, -4.0])


def test_top_k_keeps_the_k_largest_and_ties():
    logits = np.array([1.0, 5.0, 3.0, 5.0, 0.0])
    assert kept(top_k_filter(logits, 1)) == [1, 3]  # the tie with the first place survives
    assert kept(top_k_filter(logits, 3)) == [1, 2, 3]
    assert kept(top_k_filter(logits, 0)) == [0, 1, 2, 3, 4]
    assert kept(top_k_filter(logits, 99)) == [0, 1, 2, 3, 4]
    np.testing.assert_array_equal(top_k_filter(logits, 3)[[1, 2, 3]], [5.0, 3.0, 5.0])


def test_top_p_keeps_the_smallest_nucleus():
    logits = np.log(np.array([0.15, 0.5, 0.05, 0.3]))
    assert kept(top_p_filter(logits, 0.5)) == [1]  # 0.5 alone reaches p
    assert kept(top_p_filter(logits, 0.75)) == [1, 3]
    assert kept(top_p_filter(logits, 0.85)) == [0, 1, 3]
    assert kept(top_p_filter(logits, 1.0)) == [0, 1, 2, 3]
    assert kept(top_p_filter(logits, 1e-9)) == [1]  # never empty


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_top_p_matches_a_full_sort_on_large_vocabularies(seed):
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal(5000) * rng.uniform(0.2, 4.0)
    for p in (0.3, 0.9, 0.999):
        probs = softmax(logits)
        order = np.argsort(-probs, kind="stable")
        cumulative = np.cumsum(probs[order])
        size = int(np.searchsorted(cumulative, p)) + 1  # smallest prefix with mass >= p
        assert kept(top_p_filter(logits, p)) == sorted(order[:size].tolist())


def test_min_p_is_relative_to_the_top_token():
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05]))
    assert kept(min_p_filter(logits, 0.2)) == [0, 1, 2]  # threshold 0.1
    assert kept(min_p_filter(logits, 0.7)) == [0]
    assert kept(min_p_filter(logits, 0.0)) == [0, 1, 2, 3]


def test_draw_follows_the_distribution_and_never_picks_filtered_tokens():
    rng = np.random.default_rng(0)
    logits = np.log(np.array([0.7, 0.2, 0.1, 1e-3]))
    logits[3] = NEG
    counts = np.bincount([draw(logits, rng) for _ in range(20000)], minlength=4)
    assert counts[3] == 0
    np.testing.assert_allclose(counts[:3] / counts.sum(), [0.7, 0.2, 0.1], atol=0.015)


def test_greedy_ignores_seed_but_sees_penalties():
    logits = np.array([3.0, 2.9, -1.0])
    for seed in (0, 1):
        assert Sampler(SamplingParams(temperature=0, seed=seed)).next_token(logits, [], []) == 0
    penalised = Sampler(SamplingParams(temperature=0, presence_penalty=0.5))
    assert penalised.next_token(logits, [], [0]) == 1
    repeated = Sampler(SamplingParams(temperature=0, repetition_penalty=1.5))
    assert repeated.next_token(logits, [0], []) == 1  # prompt tokens count for repetition


def _sample_sequence(seed, steps=40):
    logits = np.random.default_rng(123).standard_normal(1000)
    sampler = Sampler(SamplingParams(temperature=1.0, top_p=1.0, seed=seed))
    out = []
    for _ in range(steps):
        out.append(sampler.next_token(logits, [], out))
    return out


def test_same_seed_same_tokens_different_seed_different_tokens():
    assert _sample_sequence(7) == _sample_sequence(7)
    assert _sample_sequence(7) != _sample_sequence(8)
    assert len({tuple(_sample_sequence(seed)) for seed in range(5)}) == 5


def test_filters_combine_in_the_sampler():
    logits = np.log(np.array([0.4, 0.3, 0.2, 0.1]))
    sampler = Sampler(SamplingParams(temperature=1.0, top_k=2, top_p=1.0, seed=0))
    assert {sampler.next_token(logits, [], []) for _ in range(200)} == {0, 1}
    sampler = Sampler(SamplingParams(temperature=1.0, top_p=0.65, seed=0))
    assert {sampler.next_token(logits, [], []) for _ in range(200)} == {0, 1}
    sampler = Sampler(SamplingParams(temperature=1.0, top_p=1.0, min_p=0.6, seed=0))
    assert {sampler.next_token(logits, [], []) for _ in range(200)} == {0, 1}


@pytest.mark.parametrize("bad", [
    dict(temperature=-0.1), dict(temperature=float("nan")), dict(temperature="hot"), dict(top_k=-1),
    dict(top_k=2.5), dict(top_p=0.0), dict(top_p=1.5), dict(min_p=-0.1), dict(repetition_penalty=0.0),
    dict(presence_penalty=float("inf")), dict(seed=-1), dict(seed=1.5),
])
def test_invalid_parameters_are_clear_errors(bad):
    with pytest.raises(TinyExaoneError):
        SamplingParams(**bad)


def reference_chain(logits, p, rng, prompt_ids, generated_ids):
    """The filter chain of sampling.py's docstring, one full-vocabulary filter after another."""
    from tinyexaone.sampling import (apply_presence_frequency_penalty, apply_repetition_penalty, apply_temperature,
                                     min_p_filter, top_k_filter, top_p_filter)

    scores = apply_repetition_penalty(logits, [*prompt_ids, *generated_ids], p.repetition_penalty)
    scores = apply_presence_frequency_penalty(scores, generated_ids, p.presence_penalty, p.frequency_penalty)
    scores = top_k_filter(apply_temperature(scores, p.temperature), p.top_k)
    return draw(min_p_filter(top_p_filter(scores, p.top_p), p.min_p), rng)


@pytest.mark.parametrize("settings", [
    dict(temperature=0.5, top_p=0.95), dict(temperature=1.3, top_p=1.0), dict(temperature=0.7, top_k=40, top_p=0.9),
    dict(temperature=0.6, top_p=0.95, min_p=0.05, presence_penalty=1.5, repetition_penalty=1.2),
    dict(temperature=1.0, top_p=0.3, frequency_penalty=0.4), dict(temperature=0.8, top_k=1),
])
def test_sampler_equals_the_reference_filter_chain(settings):
    seed = np.random.SeedSequence().entropy
    rng = np.random.default_rng(seed)
    params = SamplingParams(seed=int(seed % 2**32), **settings)
    fast, reference_rng = Sampler(params), np.random.default_rng(params.seed)
    for step in range(40):
        logits = (rng.standard_normal(5003) * rng.uniform(0.5, 6)).astype(np.float32)
        prompt, generated = list(rng.integers(0, 5003, 30)), list(rng.integers(0, 5003, step))
        expected = reference_chain(logits, params, reference_rng, prompt, generated)
        assert fast.next_token(logits, prompt, generated) == expected, f"seed {seed}, step {step}"


@pytest.mark.parametrize("temperature", [0, 0.8])
def test_nan_and_infinite_logits_never_crash_the_sampler(temperature):
    rng = np.random.default_rng(4)
    sampler = Sampler(SamplingParams(temperature=temperature, top_k=5, top_p=0.9, min_p=0.05, seed=1,
                                     repetition_penalty=1.3, presence_penalty=0.5))
    logits = rng.standard_normal(300)
    logits[[3, 50, 299]] = np.nan
    logits[7] = -np.inf
    token = sampler.next_token(logits, [1, 2, 3], [4, 50])
    assert token not in (3, 50, 299, 7)
    logits[11] = np.inf
    assert sampler.next_token(logits, [11], [11]) == 11  # a certain token wins outright
    for hopeless in (np.full(300, np.nan), np.full(300, -np.inf)):
        with pytest.raises(TinyExaoneError, match="no usable logits"):
            sampler.next_token(hopeless, [], [])


@pytest.mark.parametrize("option", ["temperature", "repetition_penalty"])
def test_subnormal_options_are_refused(option):
    for value in (1e-320, 1e-310, 5e-7):
        with pytest.raises(TinyExaoneError, match=option):
            SamplingParams(**{option: value})


def full_sort_draw(logits, params, u):
    """The module docstring's chain stated with full stable sorts (ties in id order), on the
    uniform number u of the draw."""
    scores = np.asarray(logits, dtype=np.float64)
    candidate = scores >= scores.max() - 40.0 * params.temperature
    scaled = scores / params.temperature
    weights = np.where(candidate, np.exp(scaled - scaled.max()), 0.0)
    if 0 < params.top_k < candidate.sum():
        kth = np.sort(weights[candidate])[::-1][params.top_k - 1]
        weights[weights < kth] = 0.0
    if params.top_p < 1.0:
        order = np.argsort(-weights, kind="stable")
        mass_before = np.cumsum(weights[order]) - weights[order]
        weights[order[mass_before >= params.top_p * weights.sum()]] = 0.0
    if params.min_p > 0.0:
        weights[weights < params.min_p * weights.max()] = 0.0
    cumulative = np.cumsum(weights)
    index = int(np.searchsorted(cumulative, u * cumulative[-1], side="right"))
    return min(index, int(np.flatnonzero(weights)[-1]))


@pytest.mark.parametrize("vocab", [7, 5003, 102400])
@pytest.mark.parametrize("settings", [
    dict(temperature=0.5, top_p=0.95), dict(temperature=0.7, top_k=40, top_p=0.9), dict(temperature=1.0, top_k=3),
    dict(temperature=0.6, top_p=0.5, min_p=0.2), dict(temperature=2.0, top_p=0.999),
])
def test_sampler_cuts_ties_in_id_order_on_flat_and_tied_logits(vocab, settings):
    """Flat logits (every token a candidate) and logits on a few levels (ties at every cut): the
    binned kernel gives the token of the full-sort statement above, draw by draw."""
    seed = int(np.random.SeedSequence().entropy % 2**32)
    rng = np.random.default_rng(seed)
    params = SamplingParams(seed=seed, **settings)
    sampler, reference_rng = Sampler(params), np.random.default_rng(seed)
    for step in range(12):
        if step % 2:
            logits = rng.integers(-4, 4, vocab) * rng.choice([0.25, 1.0, 3.0])  # few levels: ties
        else:
            logits = rng.standard_normal(vocab) * rng.uniform(0.05, 0.5)  # flat: all candidates
        expected = full_sort_draw(logits.astype(np.float32), params, reference_rng.random())
        assert sampler.next_token(logits.astype(np.float32), [], []) == expected, f"seed {seed}, step {step}"
