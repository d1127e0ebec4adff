"""Total decode speed of `tinyexaone serve` with 1, 2, 4 ... concurrent streams (not a test).

Usage: python tools/bench_server.py MODEL [--streams 1,2,4] [--tokens 64] [--threads N] [--rounds 2]
                                     [--temperature 0] [--tokenizer DIR]

MODEL is any model path `tinyexaone` takes (e.g. the synthetic 1.2B file `tinyexaone bench
--synthetic 1.2b` writes into its cache folder); a model without a tokenizer (the synthetic
files) gets the one in --tokenizer (default: the real EXAONE 4.0 tokenizer in tests/fixtures). A server runs in this process on a free
127.0.0.1 port and the clients in a child process (as real clients are: not sharing the
server's interpreter lock); for each stream count, that many clients at once each stream one
/v1/completions request of --tokens tokens (greedy, or sampled at --temperature with top-p 0.95;
distinct short prompts, so no prefix is shared), over plain HTTP. It prints, per count, the total tokens/s over the whole wall time
(prefill included) and the decode tokens/s (tokens after each stream's first, over the time
from the first stream's first token to the last stream's end), and their ratio to one stream:
of the best round of each count, and round by round ("per round": the count's decode rate over
one stream's in the same round). The rounds alternate stream counts, so a drifting machine affects
every count alike.
After the server rounds, the same process times `Model.forward_batch` itself for each count (one
decode step of N sequences after 8 prompt tokens each, 10 steps, no server: the ceiling batching
can give), and on Linux it reports the CPU time the process spent outside the compute thread and
Numba's worker threads (HTTP, sampling, streaming), per generated token. `--step-only` runs only
the step timing.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import threading
import time
from pathlib import Path

import numba
import numpy as np

import tinyexaone
from tinyexaone.chat_model import ChatModel
from tinyexaone.engine import Engine
from tinyexaone.server import Server


def one_stream(address, prompt: str, tokens: int, temperature: float, out: dict) -> None:
    connection = http.client.HTTPConnection(*address, timeout=600)
    body = json.dumps({"prompt": prompt, "max_tokens": tokens, "temperature": temperature, "top_p": 0.95,
                       "stream": True})
    connection.request("POST", "/v1/completions", body=body, headers={"Content-Type": "application/json"})
    response = connection.getresponse()
    first, count = None, 0
    for line in response:
        if line.startswith(b"data: {"):
            event = json.loads(line[6:])
            if event.get("choices") and event["choices"][0]["text"]:
                count += 1
                first = first or time.perf_counter()
    out.update(first=first, end=time.perf_counter(), events=count)


def measure(address, streams: int, tokens: int, salt: int, temperature: float = 0.0) -> tuple[float, float, int]:
    results = [{} for _ in range(streams)]
    threads = [threading.Thread(target=one_stream, args=(address, f"Story {salt}-{i}: once upon a time", tokens,
                                                         temperature, results[i])) for i in range(streams)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    end = max(r["end"] for r in results)
    generated = sum(r["events"] for r in results)
    first = min(r["first"] for r in results if r["first"])
    decode = sum(max(0, r["events"] - 1) for r in results) / (end - first)
    return generated / (end - start), decode, generated


def time_steps(model, batch: int, steps: int = 10) -> float:
    """Seconds per `forward_batch` step of `batch` sequences."""
    caches = [model.new_cache() for _ in range(batch)]
    for b, cache in enumerate(caches):
        model.forward(np.arange(8) + b, cache)
    model.forward_batch(np.arange(batch), caches)  # compile and warm up
    start = time.perf_counter()
    for i in range(steps):
        model.forward_batch(np.arange(batch) + i, caches)
    return (time.perf_counter() - start) / steps


def thread_cpu_seconds() -> dict[int, float]:
    """CPU seconds (user + system) of each live thread of this process, by thread id (Linux)."""
    tick = os.sysconf("SC_CLK_TCK")
    seconds = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat", encoding="ascii") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        seconds[int(tid)] = (int(fields[11]) + int(fields[12])) / tick
    return seconds


def process_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("--streams", default="1,2,4")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=numba.config.NUMBA_NUM_THREADS)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy; else sampled with top-p 0.95")
    parser.add_argument("--step-only", action="store_true", help="time Model.forward_batch alone, no server")
    parser.add_argument("--tokenizer", default=str(Path(__file__).resolve().parents[1] / "tests" / "fixtures" /
                                                   "exaone-4.0-1.2b"))
    args = parser.parse_args()
    numba.set_num_threads(args.threads)
    counts = [int(n) for n in args.streams.split(",")]
    chat_model = tinyexaone.load(args.model)
    if args.step_only:
        seconds = {n: min(time_steps(chat_model.model, n) for _ in range(args.rounds)) for n in counts}
        print(f"model {args.model}, threads {args.threads}, Model.forward_batch alone")
        for n in counts:
            print(f"{n:>7} sequences {seconds[n] * 1000:8.1f} ms/step {n / seconds[n]:8.1f} tok/s "
                  f"{seconds[counts[0]] / seconds[n] * n / counts[0]:6.2f}x")
        return
    if chat_model.tokenizer is None:
        chat_model = ChatModel(chat_model.model, tinyexaone.load_tokenizer(args.tokenizer))
    engine = Engine(chat_model, "bench", parallel=max(counts), prompt_cache_bytes=0)
    server = Server(engine, "127.0.0.1", 0, log=lambda line: None)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    address = server.server_address[:2]
    linux = os.path.isdir("/proc/self/task")
    with multiprocessing.get_context("spawn").Pool(1) as clients:
        clients.apply(measure, (address, 1, 4, -1, args.temperature))  # compile and warm up
        python_threads = {t.native_id for t in threading.enumerate()}
        model_threads = ({t for t in thread_cpu_seconds() if t not in python_threads}  # Numba's workers
                         | {engine.scheduler._thread.native_id}) if linux else set()
        rates = {n: [] for n in counts}
        overhead = {n: [] for n in counts}  # CPU seconds outside the model's threads, per token
        for r in range(args.rounds):
            for n in counts:
                before, total_before = (thread_cpu_seconds(), process_cpu_seconds()) if linux else ({}, 0.0)
                rates[n].append(clients.apply(measure, (address, n, args.tokens, r * 100 + n, args.temperature)))
                if linux:
                    after = thread_cpu_seconds()
                    model = sum(after.get(t, 0.0) - before.get(t, 0.0) for t in model_threads)
                    overhead[n].append((process_cpu_seconds() - total_before - model) / rates[n][-1][2])
    server.shutdown_cleanly()
    steps = {n: min(time_steps(chat_model.model, n) for _ in range(2)) for n in counts}
    print(f"model {args.model}, threads {args.threads}, {args.tokens} tokens per stream, {args.rounds} rounds, "
          f"temperature {args.temperature}")
    print(f"{'streams':>7} {'total tok/s':>12} {'decode tok/s':>13} {'decode vs 1':>12} {'per round':>18} {'tokens':>7}"
          f" {'other CPU/token':>16} {'step alone':>11} {'step vs 1':>10}")
    base = max(d for _, d, _ in rates[counts[0]]) if counts[0] == 1 else None
    for n in counts:
        total, decode, generated = max(rates[n], key=lambda x: x[1])
        ratio = f"{decode / base:.2f}x" if base else "-"
        per_round = ("/".join(f"{rates[n][r][1] / rates[1][r][1]:.2f}" for r in range(args.rounds))
                     if counts[0] == 1 else "-")
        other = f"{1000 * sum(overhead[n]) / len(overhead[n]):.2f} ms" if overhead[n] else "-"
        step_ratio = f"{steps[counts[0]] / steps[n] * n / counts[0]:.2f}x"
        print(f"{n:>7} {total:>12.1f} {decode:>13.1f} {ratio:>12} {per_round:>18} {generated:>7} {other:>16}"
              f" {steps[n] * 1000:>8.1f} ms {step_ratio:>10}")

if __name__ == "__main__":
    main()
