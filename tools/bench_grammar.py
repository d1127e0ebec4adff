"""What a grammar mask costs a decode token at the EXAONE-4.0-1.2B shape (not a test).

Usage: python tools/bench_grammar.py [MODEL] [--pairs N] [--tokens N] [--threads N]
MODEL defaults to the synthetic 1.2B int4 file of `tinyexaone bench --synthetic 1.2b` (written
into its cache folder on first use); the tokenizer is the real EXAONE 4.0 one in
tests/fixtures (102,400 tokens), so every mask covers the full vocabulary. Each pair decodes
--tokens greedy tokens after the same prompt twice, without and with a grammar, one right after
the other and in alternating order (the host is shared: interleaved pairs see the same load),
for two grammars:
"open string", an unterminated JSON string (regex), which never ends and allows the most tokens
-- llguidance's costliest masks -- and "tool call", the grammar of `tool_choice="required"` over
two tools (it may end early; ms/token is per token produced). Prints, per grammar, the median
ms/token of both arms, the median of the per-pair ratios, and the time spent inside the mask and
consume calls of the constrained runs (timed in the run itself, so it does not drift with the
host's load the way two whole runs can).
"""

import argparse
import statistics
import time
from pathlib import Path

import numba

from tinyexaone import ChatModel, load, load_tokenizer
from tinyexaone.cli.bench import synthetic_model
from tinyexaone.generation import CancelToken, Run, make_options
from tinyexaone.grammar import Constraint, grammar_option, tool_call_grammar, tool_parameters

FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "exaone-4.0-1.2b"
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {
             "type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
             "required": ["city"]}}},
         {"type": "function", "function": {"name": "add", "parameters": {
             "type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}}}}}]


class TimedConstraint(Constraint):
    """A Constraint that adds up the seconds its mask and consume calls take."""

    seconds = 0.0

    def mask(self, logits):
        start = time.perf_counter()
        try:
            return super().mask(logits)
        finally:
            self.seconds += time.perf_counter() - start

    def consume(self, token):
        start = time.perf_counter()
        super().consume(token)
        self.seconds += time.perf_counter() - start


def decode(model, prompt, tokens: int, grammar=None) -> tuple[float, float, int]:
    """Greedy decode of `tokens` tokens, under `grammar` (a grammar.Grammar) if given: (ms per
    token after the first, ms per token in mask + consume, tokens produced)."""
    options = make_options(temperature=0, max_new_tokens=tokens)
    constraint = None if grammar is None else TimedConstraint(model.tokenizer, grammar)
    run = Run(model.model, model.tokenizer, model.new_cache(1024), [], prompt, options, CancelToken(), constraint=constraint)
    for _ in run:
        pass
    mask_ms = 0.0 if constraint is None else constraint.seconds * 1e3 / len(run.tokens)
    return 1e3 / run.stats()["generation_tokens_per_s"], mask_ms, len(run.tokens)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model", nargs="?", default=None)
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=numba.config.NUMBA_NUM_THREADS)
    args = parser.parse_args()
    numba.set_num_threads(args.threads)
    tokenizer = load_tokenizer(FIXTURE)
    model = ChatModel(load(args.model or synthetic_model("1.2b", 4, 32)).model, tokenizer)
    prompt = tokenizer.encode("[|user|]\nWeather in Seoul?[|endofturn|]\n[|assistant|]\n<think>\n\n</think>\n\n",
                              add_special_tokens=False)
    grammars = {"open string": grammar_option({"regex": r'"([^"\\]|\\.)*'}),
                "tool call": tool_call_grammar(tokenizer, tool_parameters(TOOLS))}
    decode(model, prompt, 4)  # compile and warm up
    decode(model, prompt, 4, grammars["tool call"])
    print(f"threads {args.threads}, {args.pairs} interleaved pairs of {args.tokens} greedy tokens, vocab "
          f"{tokenizer.vocab_size}")
    for name, grammar in grammars.items():
        plain, masked, ratios, mask_ms, produced = [], [], [], [], []
        for pair in range(args.pairs):  # the order alternates, so neither arm always runs on a warmer host
            if pair % 2 == 0:
                a, _, _ = decode(model, prompt, args.tokens)
                b, m, n = decode(model, prompt, args.tokens, grammar)
            else:
                b, m, n = decode(model, prompt, args.tokens, grammar)
                a, _, _ = decode(model, prompt, args.tokens)
            plain.append(a)
            masked.append(b)
            ratios.append(b / a)
            mask_ms.append(m)
            produced.append(n)
        print(f"{name}: plain {statistics.median(plain):.1f} ms/tok, masked {statistics.median(masked):.1f} ms/tok, "
              f"median pair ratio {100 * (statistics.median(ratios) - 1):+.1f}% "
              f"(pairs {', '.join(f'{100 * (r - 1):+.0f}%' for r in ratios)}); mask + consume "
              f"{statistics.median(mask_ms):.3f} ms/tok = {100 * statistics.median(mask_ms) / statistics.median(plain):.2f}%"
              f" of a plain token; {statistics.median(produced):.0f} tokens")

if __name__ == "__main__":
    main()
