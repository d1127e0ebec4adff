"""Evaluate the demo model on a held-out set from its own generator (another seed), with tinyexaone.

`python models/exaone4-demo/evaluate.py [MODEL] [--seed N] [--quick]` loads MODEL (this
directory by default, or a compact file from `tinyexaone quantize`) with `tinyexaone.load`, so the
float32 NumPy runtime is what is measured, and decodes greedily with its own short loop over
`Model.forward` (argmax until [|endofturn|] or MAX_NEW_TOKENS). It reports:
  - arith / arith_think: share of arithmetic questions whose final answer (the last integer of the
    content after `</think>`) is right, thinking off / on (`multi` asks one inside a dialogue);
  - tool_call: share of tool prompts whose reply holds `<tool_call>` JSON that parses and names a
    tool listed in the system turn; tool_args: ... with exactly the right arguments;
  - tool_answer: share of final answers (after the `[|tool|]` result) that state the result;
  - endofturn: share of all generated replies that end with [|endofturn|];
  - perplexity: exp(mean NLL) over the reply tokens (the training loss mask) of the held-out
    conversations, teacher-forced.
`evaluate(model, counts, seed)` returns those numbers as a dict (tests/test_demo_model.py).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import corpus  # noqa: E402

EVAL_SEED = 777  # training uses make.CORPUS_SEED; any other seed gives unseen conversations
MAX_NEW_TOKENS = 160
FULL_COUNTS = {"arith": 300, "arith_think": 150, "multi": 50, "tool": 150, "greet": 50, "greet_think": 25}
QUICK_COUNTS = {"arith": 40, "arith_think": 15, "multi": 5, "tool": 20, "greet": 6, "greet_think": 4}
TOOL_CALL = re.compile(r"<tool_call>(.*?)</tool_call>", re.S)


def held_out(counts: dict, seed: int = EVAL_SEED) -> list[dict]:
    """The first counts[kind] conversations of each kind from the generator stream of `seed`."""
    import random

    rng, left, items = random.Random(seed), dict(counts), []
    while any(left.values()):
        item = corpus.conversation(rng)
        if left.get(item["kind"], 0):
            left[item["kind"]] -= 1
            items.append(item)
    return items


def greedy(model, prompt_ids: list[int], eos_id: int, max_new_tokens: int = MAX_NEW_TOKENS) -> list[int]:
    """Argmax decoding with a KV cache; the result includes the eos token when one was produced."""
    cache = model.new_cache()
    logits = model.forward(prompt_ids, cache)  # [T, vocab]
    out: list[int] = []
    for _ in range(max_new_tokens):
        token = int(np.argmax(logits[-1]))
        out.append(token)
        if token == eos_id:
            break
        logits = model.forward([token], cache)
    return out


def final_content(reply: str) -> str:
    """The answer part of a reply: after the last </think>, without the end-of-turn marker."""
    return reply.split("</think>")[-1].replace(corpus.END_OF_TURN, "").strip()


def last_integer(text: str) -> int | None:
    numbers = re.findall(r"-?\d+", text)
    return int(numbers[-1]) if numbers else None


def tool_call_ok(reply: str, tools: list) -> tuple[bool, dict | None]:
    """(the reply holds a parsable tool call naming a listed tool, its arguments)."""
    match = TOOL_CALL.search(reply)
    if not match:
        return False, None
    try:
        call = json.loads(match.group(1))
    except json.JSONDecodeError:
        return False, None
    names = {tool["function"]["name"] for tool in tools}
    ok = isinstance(call, dict) and call.get("name") in names and isinstance(call.get("arguments"), dict)
    return ok, call.get("arguments") if ok else None


def perplexity(model, tokenizer, texts: list[str]) -> float:
    """exp(mean NLL) of the reply tokens, each predicted from everything before it."""
    nll, count = 0.0, 0
    for text in texts:
        encoding = tokenizer.backend.encode(text, add_special_tokens=False)
        ids = np.asarray(encoding.ids)
        mask = np.asarray(corpus.loss_mask(text, encoding.offsets))  # [T]
        logits = model.forward(ids[:-1]).astype(np.float64)  # [T-1, vocab]: row t predicts ids[t+1]
        logits -= logits.max(axis=-1, keepdims=True)
        log_probs = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
        picked = log_probs[np.arange(len(ids) - 1), ids[1:]]  # [T-1]
        nll -= float(picked[mask[1:]].sum())
        count += int(mask[1:].sum())
    return math.exp(nll / count)


def evaluate(model, counts: dict = QUICK_COUNTS, seed: int = EVAL_SEED, show_failures: bool = False) -> dict:
    tokenizer = model.tokenizer
    eos_id = tokenizer.token_to_id(corpus.END_OF_TURN)
    hits: dict[str, list[bool]] = {k: [] for k in
                                   ("arith", "arith_think", "multi", "tool_call", "tool_args", "tool_answer", "endofturn")}

    def run(messages, tools, thinking):
        prompt = corpus.render(messages, tools, thinking=thinking, add_generation_prompt=True)
        ids = greedy(model, tokenizer.encode(prompt, add_special_tokens=False), eos_id)
        hits["endofturn"].append(ids[-1] == eos_id)
        return tokenizer.decode(ids)

    items = held_out(counts, seed)
    for item in items:
        kind, messages, tools = item["kind"], item["messages"], item["tools"]
        if kind == "tool":
            call_at = next(i for i, m in enumerate(messages) if m.get("tool_calls"))
            reply = run(messages[:call_at], tools, False)
            ok, args = tool_call_ok(reply, tools)
            hits["tool_call"].append(ok)
            hits["tool_args"].append(ok and args == item["tool_args"])
            answer = final_content(run(messages[:-1], tools, False))
            expected = [str(item["answer"])] + ([item["tool_args"]["city"]] if "city" in item["tool_args"] else [])
            hits["tool_answer"].append(all(e in answer for e in expected))
            if show_failures and not (ok and hits["tool_answer"][-1]):
                print(f"  tool miss: {messages[call_at - 1]['content']!r} -> {reply!r} / {answer!r}")
        else:
            reply = run(messages[:-1], tools, item["thinking"])
            if "answer" in item:
                correct = last_integer(final_content(reply)) == item["answer"]
                hits[kind].append(correct)
                if show_failures and not correct:
                    print(f"  {kind} miss: {messages[-2]['content']!r} -> {reply!r}")
    scores = {k: sum(v) / len(v) for k, v in hits.items() if v}
    scores["counts"] = {k: len(v) for k, v in hits.items() if v}
    scores["perplexity"] = perplexity(model, tokenizer, [corpus.render_item(item) for item in items])
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default=str(HERE), help="model directory or compact file")
    parser.add_argument("--seed", type=int, default=EVAL_SEED)
    parser.add_argument("--quick", action="store_true", help="the small held-out set of the tests")
    parser.add_argument("--show-failures", action="store_true")
    args = parser.parse_args()

    import numba

    import tinyexaone

    numba.set_num_threads(1)  # decode-sized kernels of this tiny model run faster on one thread
    started = time.time()
    model = tinyexaone.load(args.model)
    scores = evaluate(model, QUICK_COUNTS if args.quick else FULL_COUNTS, args.seed, args.show_failures)
    counts = scores.pop("counts")
    for name, value in scores.items():
        print(f"{name:12s} {value:8.4f}" + (f"  ({counts[name]} replies)" if name in counts else ""))
    print(f"evaluated {args.model} in {time.time() - started:.1f} s")


if __name__ == "__main__":
    main()
