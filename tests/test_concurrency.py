"""One model used from several threads: no crash, no cross-talk, and cancel() from another thread.

The model is a small quantized compact file, so every decode step runs Numba's parallel
kernels (whose default threading layer aborts the process on concurrent entry unless the
runtime serialises it). Each thread's greedy output must equal the same request run alone.
"""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

import tinyexaone
from cli_models import build_tiny_chat_model
from tinyexaone.quant.convert import convert

PROMPTS = ["Hello there", "안녕하세요", "¿Cómo estás?", "1 + 2 =", "def f(x):", "The sky is", "Tools:", "🙂🙂"]


@pytest.fixture(scope="module")
def compact_path(tmp_path_factory):
    folder = tmp_path_factory.mktemp("concurrency")
    source = build_tiny_chat_model(folder / "hf", seed=3)
    return convert(source, folder / "model.tx", bits=4, group_size=32, show_progress=False).out


@pytest.fixture(scope="module")
def model(compact_path):
    return tinyexaone.load(compact_path)


def run_alone(model, prompt):
    return model.generate(prompt, temperature=0, max_new_tokens=12).tokens


def test_parallel_generations_equal_sequential_ones(model):
    expected = {p: run_alone(model, p) for p in PROMPTS}
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda p: (p, run_alone(model, p)), PROMPTS * 3))
    for prompt, tokens in results:
        assert tokens == expected[prompt], prompt


def test_parallel_chat_sessions_keep_their_own_state(model):
    def converse(i):
        session = model.chat_session(system=f"You are assistant number {i}.")
        replies = [session.send(f"Turn one of {i}", temperature=0, max_new_tokens=8).message["content"]]
        replies.append(session.send(f"Turn two of {i}", temperature=0, max_new_tokens=8).message["content"])
        return replies, len(session.messages)

    alone = [converse(i) for i in range(4)]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(converse, range(4)))
    assert together == alone


def test_cancel_from_another_thread_stops_within_one_token(model):
    done = {}
    steps = []

    def worker():
        stream = model.stream("Tell me a long story", temperature=0, max_new_tokens=100_000, context_size=2048)
        for _ in stream:
            steps.append(time.perf_counter())
        done["result"] = stream.result

    thread = threading.Thread(target=worker)
    thread.start()
    while len(steps) < 5:
        time.sleep(0.001)
    model.cancel()
    cancelled_at = len(steps)
    thread.join(timeout=60)
    assert not thread.is_alive()
    assert done["result"].finish_reason == "cancelled"
    assert len(done["result"].tokens) <= cancelled_at + 2  # the token in flight, and at most one more
    assert model.generate("Hello there", temperature=0, max_new_tokens=12).tokens == run_alone(model, "Hello there")


WORKQUEUE_SCRIPT = """
import sys
from concurrent.futures import ThreadPoolExecutor
import numba, tinyexaone
model = tinyexaone.load(sys.argv[1])
prompts = ["Hello there", "1 + 2 =", "The sky is", "def f(x):"] * 4
with ThreadPoolExecutor(4) as pool:
    outputs = list(pool.map(lambda p: model.generate(p, temperature=0, max_new_tokens=8).tokens, prompts))
assert numba.threading_layer() == "workqueue", numba.threading_layer()
print("ok", len(outputs))
"""


def test_workqueue_threading_layer_survives_concurrent_use(compact_path, tmp_path):
    """Numba's workqueue layer aborts the process on concurrent parallel calls unless we serialise."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, NUMBA_THREADING_LAYER="workqueue")
    done = subprocess.run([sys.executable, "-c", WORKQUEUE_SCRIPT, str(compact_path)], env=env, capture_output=True, text=True,
                          cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "ok 16"
