"""Soak and resource tests on the shipped demo model: many generations across threads, and
memory that stays flat over many chat turns with resets.

CI runs reduced counts; `pytest -m slow` runs the full ones (200 generate calls across 4
threads; 100 chat turns). RSS is read from /proc (Linux), after a warm-up that compiles every
kernel and fills every cache once, so growth means a leak, not start-up.
"""

import gc
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import tinyexaone

DEMO = Path(__file__).resolve().parents[1] / "models" / "exaone4-demo"
QUESTIONS = ["What is 3 + 4?", "Hello!", "¿Cuánto es 12 - 5?", "7 곱하기 8은 얼마인가요?", "Who are you?"]


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


@pytest.fixture(scope="module")
def model():
    return tinyexaone.load(DEMO)


def generate_many(model, calls: int, threads: int) -> list:
    def one(i):
        messages = [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}]
        return model.chat(messages, temperature=0.7, seed=i, max_new_tokens=16).finish_reason

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(one, range(calls)))


def soak(model, calls: int) -> None:
    generate_many(model, 8, 4)  # warm-up: kernels compiled, allocator pools filled
    gc.collect()
    before = rss_bytes()
    reasons = generate_many(model, calls, 4)
    gc.collect()
    assert all(reason in ("stop", "length") for reason in reasons)
    assert rss_bytes() <= before * 1.05, f"RSS grew from {before / 1e6:.1f} MB to {rss_bytes() / 1e6:.1f} MB"


def test_soak_reduced(model):
    soak(model, 16)


@pytest.mark.slow
def test_soak_full(model):
    soak(model, 200)


def chat_turns(model, turns: int) -> None:
    session = model.chat_session()
    for i in range(6):  # warm-up
        session.send(QUESTIONS[i % len(QUESTIONS)], temperature=0, max_new_tokens=16)
        if i % 3 == 2:
            session.reset()
    gc.collect()
    before = rss_bytes()
    for i in range(turns):
        session.send(QUESTIONS[i % len(QUESTIONS)], temperature=0, max_new_tokens=16)
        if i % 3 == 2:
            session.reset()  # what /clear does
    gc.collect()
    assert len(session.messages) <= 3 * 2
    assert rss_bytes() <= before * 1.05, f"RSS grew from {before / 1e6:.1f} MB to {rss_bytes() / 1e6:.1f} MB"


def test_memory_flat_across_chat_turns_reduced(model):
    chat_turns(model, 12)


@pytest.mark.slow
def test_memory_flat_across_chat_turns_full(model):
    chat_turns(model, 100)
