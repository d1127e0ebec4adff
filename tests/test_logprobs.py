"""The `logprobs` generation option: per-token log-probabilities against a NumPy log-softmax of the
model's own forward logits, on the shipped demo model.

Each generation is replayed: the prompt and the generated tokens go through `model.forward`
with a fresh cache, and every step's logits give the reference log-softmax in float64, for the
chosen token and for the n most likely ones. Sampling settings (temperature, top-p, penalties)
must not change the numbers, forced tokens (the reasoning budget) get None, and the option is
checked against its bound like every other.
"""

from pathlib import Path

import numba
import numpy as np
import pytest

import tinyexaone
from tinyexaone import TinyExaoneError
from tinyexaone.sampling import token_logprobs

DEMO = Path(__file__).resolve().parents[1] / "models" / "exaone4-demo"


@pytest.fixture(scope="module", autouse=True)
def one_numba_thread():
    """One Numba thread: on a busy machine parallel launches cost more than the demo model's small matrices."""
    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    yield
    numba.set_num_threads(threads)


@pytest.fixture(scope="module")
def demo():
    return tinyexaone.load(DEMO)


def reference_logprobs(model, prompt_ids, tokens) -> np.ndarray:
    """[len(tokens), vocab] float64 log-softmax of the logits before each generated token."""
    cache = model.new_cache(cache_type="f32")
    ids = list(prompt_ids) + list(tokens)
    logits = model.forward(np.asarray(ids[:-1]), cache)[len(prompt_ids) - 1:]  # [len(tokens), vocab]
    logits = logits[:, : model.tokenizer.vocab_size].astype(np.float64)
    return logits - logits.max(axis=1, keepdims=True) - np.log(
        np.exp(logits - logits.max(axis=1, keepdims=True)).sum(axis=1, keepdims=True))


def check_against_reference(model, prompt_ids, tokens, logprobs, n):
    assert len(logprobs) == len(tokens)
    reference = reference_logprobs(model, prompt_ids, tokens)
    for step, (token, entry) in enumerate(zip(tokens, logprobs)):
        assert entry["id"] == token
        assert entry["logprob"] == pytest.approx(reference[step, token], abs=2e-3)
        assert len(entry["top"]) == n
        expected = np.argsort(-reference[step], kind="stable")[:n]
        top_values = [value for _, value in entry["top"]]
        assert top_values == sorted(top_values, reverse=True)
        assert np.allclose(top_values, reference[step, expected], atol=2e-3)
        for token_id, value in entry["top"]:
            assert value == pytest.approx(reference[step, token_id], abs=2e-3)


def test_greedy_logprobs_match_a_numpy_log_softmax(demo):
    prompt = demo.tokenizer.encode("[|user|]\nWhat is 4 + 5?[|endofturn|]\n[|assistant|]\n<think>\n\n</think>\n\n",
                                   add_special_tokens=False)
    result = demo.generate(prompt, temperature=0, max_new_tokens=12, logprobs=5, cache_type="f32")
    check_against_reference(demo, prompt, result.tokens, result.logprobs, 5)
    for entry in result.logprobs:  # greedy: the chosen token is the most likely one
        assert entry["top"][0][0] == entry["id"]


def test_sampling_settings_do_not_change_the_logprobs(demo):
    prompt = demo.tokenizer.encode("[|user|]\nHello![|endofturn|]\n[|assistant|]\n<think>\n\n</think>\n\n",
                                   add_special_tokens=False)
    result = demo.generate(prompt, temperature=1.7, top_p=0.5, top_k=3, repetition_penalty=1.5, presence_penalty=1.0,
                           seed=3, max_new_tokens=10, logprobs=2, cache_type="f32")
    check_against_reference(demo, prompt, result.tokens, result.logprobs, 2)


def test_logprobs_zero_gives_the_chosen_token_only(demo):
    result = demo.generate("What is", temperature=0, max_new_tokens=4, logprobs=0)
    assert len(result.logprobs) == len(result.tokens)
    assert all(entry["top"] == [] and entry["logprob"] <= 0 for entry in result.logprobs)


def test_logprobs_off_is_none_everywhere(demo):
    assert demo.generate("What is", temperature=0, max_new_tokens=3).logprobs is None
    reply = demo.chat([{"role": "user", "content": "Hi"}], temperature=0, max_new_tokens=3)
    assert reply.logprobs is None


def test_chat_logprobs_with_forced_tokens_are_none(demo):
    budget = 3
    stream = demo.chat([{"role": "user", "content": "What is 17 + 25?"}], enable_thinking=True, stream=True,
                       temperature=0, max_new_tokens=20, reasoning_budget=budget, logprobs=1, cache_type="f32")
    done = [event for event in stream if event["type"] == "done"][0]
    tokens, logprobs = done["tokens"], done["logprobs"]
    assert len(logprobs) == len(tokens)
    forced = demo.tokenizer.encode("\n</think>\n\n", add_special_tokens=False)
    assert [entry is None for entry in logprobs[budget: budget + len(forced)]] == [True] * len(forced)
    assert tokens[budget: budget + len(forced)] == forced
    assert all(entry is not None for entry in logprobs[:budget] + logprobs[budget + len(forced):])
    reply = demo.chat([{"role": "user", "content": "What is 17 + 25?"}], enable_thinking=True, temperature=0,
                      max_new_tokens=20, reasoning_budget=budget, logprobs=1, cache_type="f32")
    assert reply.logprobs == logprobs and reply.tokens == tokens


def test_text_stream_exposes_logprobs_as_it_goes(demo):
    stream = demo.stream("What is", temperature=0, max_new_tokens=4, logprobs=1)
    next(stream)
    assert len(stream.logprobs) >= 1
    for _ in stream:
        pass
    assert stream.logprobs == stream.result.logprobs


@pytest.mark.parametrize("bad", [-1, 21, 1.5, True, "3"])
def test_bad_logprobs_values_are_one_error(demo, bad):
    with pytest.raises(TinyExaoneError, match="invalid value for logprobs"):
        demo.generate("Hi", logprobs=bad)


def test_token_logprobs_on_hand_made_numbers():
    logits = np.array([1.0, 3.0, -np.inf, 3.0, np.nan, 0.0], np.float32)
    entry = token_logprobs(logits, 0, 10)
    finite = np.array([1.0, 3.0, 3.0, 0.0])
    log_total = np.log(np.exp(finite).sum())
    assert entry["logprob"] == pytest.approx(1.0 - log_total)
    assert [i for i, _ in entry["top"]] == [1, 3, 0, 5]  # masked (-inf) and NaN tokens are never listed
    assert entry["top"][0][1] == pytest.approx(3.0 - log_total)
