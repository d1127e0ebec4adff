"""One generation of one sequence: options, prefill with prefix reuse, the token loop, cancellation.

`make_options(enable_thinking, **options)` checks the keyword options of every generation call
once (names, and values against options.py's bounds) into `Options`; sampling defaults follow
the model card and differ with reasoning on and off; `cache_type` ("f16" by default, "f32",
"q8") is the type of the KV cache a run makes (cache.py); `grammar`, `response_format` and
`tool_choice` are checked by grammar.py (an invalid grammar or schema fails here, before any
generation). `logprobs` (None = off, or n in 0..20) makes a run record `run.logprobs`, aligned
with `run.tokens`: for a sampled token {"id", "logprob", "top": [(id, logprob), ...] (the n most
likely, highest first)}, for a forced one None. They are the log-softmax of the model's logits
(over the tokenizer's vocabulary) after any grammar mask and before the penalties, temperature
and top-k/p/min-p filters, so they describe the model, not the sampler.

`Run(model, tokenizer, cache, cached_ids, prompt_ids, options, token, constraint=None)` is one
generation (constrained from its first token by `options.grammar` unless a constraint is given;
chat.py passes its options without it and steers the constraint itself): iterating it prefills the prompt through a `Decoder` (which keeps the longest common
prefix of what the cache already holds and computes only the rest, in chunks of PREFILL_CHUNK),
then samples one token (under the constraint's mask, if one is set), feeds it, and repeats,
yielding (token_id | None, text, forced) per step. It stops on an end-of-sequence id
(generation_config.json and the tokenizer's eos, plus `stop_token_ids`), a stop string (the
text is cut before it), `max_new_tokens`, a full context ("length"), or cancellation
("cancelled"); a grammar that cannot be completed within `max_new_tokens` ends with "length"
and the text so far. A prompt longer than the context raises `ContextOverflowError`; nothing is
truncated silently. `tokens` lists every token the model produced or was forced to take,
including the end-of-sequence token that stopped it; `text` never contains that token.

Cancellation belongs to a run. Each run has its own `CancelToken`, set by that run's `cancel()`
(or the caller's `threading.Event` passed as `cancel=`) and checked before every forward pass.
A `RunRegistry` holds the tokens of one model's live runs, so a model-wide `cancel_all()`
reaches each run that exists at that moment; a run started afterwards has a fresh token, so it
can neither clear nor inherit a cancel aimed at another.

Stats (seconds, tokens/s): prompt_tokens, prefilled_tokens, prompt_tokens_per_s,
generated_tokens, generation_tokens_per_s (tokens after the first / time after the first),
time_to_first_token_s (None if none was produced), total_s, context_full.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass
from time import perf_counter

import numpy as np

from .cache import DEFAULT_CACHE_TYPE
from .errors import ContextOverflowError, TinyExaoneError
from .grammar import Constraint, Grammar, grammar_option, response_format_option, tool_choice_option
from .options import check_option
from .parsing import partial_marker_length
from .sampling import NON_REASONING_DEFAULTS, REASONING_DEFAULTS, Sampler, SamplingParams, token_logprobs
from .tokenizer import token_id_list

PREFILL_CHUNK = 256  # prompt tokens per forward call: bounds the [T, vocab] logits of a prefill step
DEFAULT_MAX_NEW_TOKENS = 1024
SAMPLING_OPTIONS = ("temperature", "top_k", "top_p", "min_p", "presence_penalty", "frequency_penalty",
                    "repetition_penalty", "seed")
OTHER_OPTIONS = ("max_new_tokens", "stop", "stop_token_ids", "reasoning_budget", "context_size", "cache_type",
                 "cancel", "logprobs", "grammar", "response_format", "tool_choice")


@dataclass
class GenerationResult:
    text: str
    tokens: list[int]
    finish_reason: str  # "stop" | "length" | "cancelled"
    stats: dict
    logprobs: list | None = None  # aligned with tokens when the logprobs option is on (see Run)


@dataclass(frozen=True)
class Options:
    sampling: SamplingParams
    max_new_tokens: int
    stop: tuple[str, ...]
    stop_token_ids: frozenset[int]
    reasoning_budget: int | None
    context_size: int | None
    cache_type: str
    cancel: threading.Event | None
    logprobs: int | None = None  # None = off; n = the chosen token's logprob and the n most likely
    grammar: Grammar | None = None  # the `grammar` option, checked (grammar.py)
    response_format: Grammar | None = None  # chat's `response_format`; None for text
    tool_choice: str | None = None  # chat's: "auto", "none", "required" or "function:NAME"; None = not given


def make_options(enable_thinking: bool = False, **options) -> Options:
    """Validate generation keyword options; sampling defaults depend on reasoning mode."""
    if not isinstance(enable_thinking, bool):
        raise TinyExaoneError(f"enable_thinking must be True or False, got {enable_thinking!r:.40}")
    unknown = sorted(set(options) - set(SAMPLING_OPTIONS) - set(OTHER_OPTIONS))
    if unknown:
        known = ", ".join(SAMPLING_OPTIONS + OTHER_OPTIONS)
        raise TinyExaoneError(f"unknown generation option {unknown[0]!r:.40} (known: {known})")
    defaults = REASONING_DEFAULTS if enable_thinking else NON_REASONING_DEFAULTS
    sampling = {**defaults, **{k: options[k] for k in SAMPLING_OPTIONS if options.get(k) is not None}}
    max_new = check_option("max_new_tokens", options.get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS))
    budget, context_size = options.get("reasoning_budget"), options.get("context_size")
    if budget is not None:
        check_option("reasoning_budget", budget)
    if context_size is not None:
        check_option("context_size", context_size)
    cache_type = options.get("cache_type")
    cache_type = DEFAULT_CACHE_TYPE if cache_type is None else check_option("cache_type", cache_type)
    stop = options.get("stop") or ()
    stop = (stop,) if isinstance(stop, str) else tuple(stop) if isinstance(stop, (list, tuple)) else (None,)
    if not all(isinstance(s, str) and s for s in stop):
        raise TinyExaoneError(f"stop must be a non-empty string or a list of them, got {options.get('stop')!r:.80}")
    stop_ids = options.get("stop_token_ids") or ()
    if not isinstance(stop_ids, (list, tuple, set, frozenset)) or not all(
            isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in stop_ids):
        raise TinyExaoneError(f"stop_token_ids must be non-negative integers, got {stop_ids!r:.80}")
    cancel_event = options.get("cancel")
    if cancel_event is not None and not isinstance(cancel_event, threading.Event):
        raise TinyExaoneError(f"cancel must be a threading.Event, got {type(cancel_event).__name__}")
    logprobs = options.get("logprobs")
    if logprobs is not None:
        check_option("logprobs", logprobs)
    grammar = grammar_option(options.get("grammar"))
    response_format = response_format_option(options.get("response_format"))
    if grammar is not None and response_format is not None:
        raise TinyExaoneError("give either grammar or a JSON response_format, not both")
    return Options(SamplingParams(**sampling), max_new, stop, frozenset(stop_ids), budget, context_size, cache_type,
                   cancel_event, logprobs, grammar, response_format, tool_choice_option(options.get("tool_choice")))


# --- cancellation -------------------------------------------------------------------------------------


class CancelToken:
    """Whether one run is cancelled: by its own `cancel()`, or by the caller's Event (`cancel=`)."""

    def __init__(self, external: threading.Event | None = None):
        self._own = threading.Event()
        self._external = external

    def cancel(self) -> None:
        self._own.set()

    @property
    def cancelled(self) -> bool:
        return self._own.is_set() or (self._external is not None and self._external.is_set())


class RunRegistry:
    """The cancel tokens of one model's runs that are still referenced (weakly held)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._tokens: weakref.WeakSet[CancelToken] = weakref.WeakSet()

    def new_token(self, external: threading.Event | None = None) -> CancelToken:
        token = CancelToken(external)
        with self._lock:
            self._tokens.add(token)
        return token

    def cancel_all(self) -> None:
        """Cancel every run that exists now; runs made later are not affected."""
        with self._lock:
            tokens = list(self._tokens)
        for token in tokens:
            token.cancel()


# --- the token loop -------------------------------------------------------------------------------------


def common_prefix_length(a, b) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


class Decoder:
    """One sequence in one cache: prefill with prefix reuse, then feed tokens and keep the last logits."""

    def __init__(self, model, cache, cached_ids, token: CancelToken):
        self.model = model
        self.cache = cache
        self.ids = list(cached_ids)  # exactly the tokens the cache holds
        self.token = token
        self.logits = None  # [vocab] after the last position fed
        if cache.length != len(self.ids):  # a cache we did not fill: start over
            cache.reset()
            self.ids = []

    def prefill(self, prompt_ids) -> int:
        """Make the cache hold prompt_ids with logits for its last token; returns tokens computed."""
        if len(prompt_ids) > self.cache.max_tokens:
            raise ContextOverflowError(f"prompt of {len(prompt_ids)} tokens does not fit the context of "
                                       f"{self.cache.max_tokens} tokens", len(prompt_ids), self.cache.max_tokens)
        keep = min(common_prefix_length(self.ids, prompt_ids), len(prompt_ids) - 1)
        if self.cache.can_trim(keep):
            self.cache.trim(keep)
        else:  # a sliding-window layer no longer holds what position `keep` needs
            self.cache.reset()
            keep = 0
        self.ids = self.ids[:keep]
        for start in range(keep, len(prompt_ids), PREFILL_CHUNK):
            if self.token.cancelled:
                return start - keep
            self.feed(prompt_ids[start : start + PREFILL_CHUNK])
        return len(prompt_ids) - keep

    def feed(self, ids) -> None:
        self.logits = self.model.forward(np.asarray(ids, dtype=np.int64), self.cache, last_only=True)[0]  # [vocab]
        self.ids.extend(int(i) for i in ids)

    @property
    def room(self) -> int:
        return self.cache.max_tokens - self.cache.length


class StopStrings:
    """Cuts the text before the first stop string, holding back tails that might start one."""

    def __init__(self, stops):
        self.stops = stops
        self.pending = ""
        self.hit = False

    def push(self, text: str) -> str:
        if not self.stops or not text:
            return text
        self.pending += text
        found = [self.pending.find(s) for s in self.stops if s in self.pending]
        if found:
            out, self.pending, self.hit = self.pending[: min(found)], "", True
            return out
        keep = partial_marker_length(self.pending, self.stops)
        out, self.pending = self.pending[: len(self.pending) - keep], self.pending[len(self.pending) - keep:]
        return out

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out


class Run:
    """One generation. Iterating it prefills, then yields (token_id | None, text, forced) per step.
    Between steps, `force(ids)` makes the model take those tokens next (as they are: no
    constraint sees them), and `constrain(c)` sets the constraint (grammar.Constraint or TokenBan,
    None for none) that masks the logits of every token sampled from then on and consumes it;
    `forcing` tells whether forced tokens are still queued."""

    def __init__(self, model, tokenizer, cache, cached_ids, prompt_ids, options: Options, token: CancelToken,
                 started: float | None = None, constraint=None):
        self.model, self.tokenizer, self.options, self.token = model, tokenizer, options, token
        self.prompt_ids = [int(i) for i in prompt_ids]
        if not self.prompt_ids:
            raise TinyExaoneError("the prompt is empty: at least one token is needed")
        self.decoder = Decoder(model, cache, cached_ids, token)
        self.started = perf_counter() if started is None else started
        self.tokens: list[int] = []
        self.logprobs: list[dict | None] | None = [] if options.logprobs is not None else None
        self.text_parts: list[str] = []
        self.finish_reason = None
        self.prefilled = 0  # prompt tokens actually computed (the rest came from the cache)
        self.context_full = False
        self._forced: list[int] = []
        self._times = {}
        if constraint is None and options.grammar is not None:
            constraint = Constraint(tokenizer, options.grammar)
        self.constraint = constraint

    def force(self, ids) -> None:
        self._forced.extend(int(i) for i in ids)

    @property
    def forcing(self) -> bool:
        return bool(self._forced)

    def constrain(self, constraint) -> None:
        self.constraint = constraint

    def __iter__(self):
        opts, tok, dec = self.options, self.tokenizer, self.decoder
        t0 = perf_counter()
        self.prefilled = dec.prefill(self.prompt_ids)
        self._times["prefill"] = perf_counter() - t0
        eos = set(tok.eos_token_ids) | opts.stop_token_ids
        sampler = Sampler(opts.sampling)
        detok = tok.detokenizer()
        stops = StopStrings(opts.stop)
        to_feed: list[int] = []  # sampled or forced tokens the cache has not seen yet
        while True:
            if self._forced:
                while self._forced:  # one at a time: `forcing` stays true until the last is yielded
                    token = self._forced.pop(0)
                    self._take(token, None)
                    to_feed.append(token)
                    yield token, self._text(stops.push(detok.add(token))), True
                if stops.hit:
                    reason = "stop"
                    break
            if self.token.cancelled:
                reason = "cancelled"
                break
            if len(self.tokens) >= opts.max_new_tokens:
                reason = "length"
                break
            if to_feed:
                if dec.room < len(to_feed):
                    self.context_full, reason = True, "length"
                    break
                dec.feed(to_feed)
                to_feed = []
                if self.token.cancelled:
                    reason = "cancelled"
                    break
            logits = dec.logits[: tok.vocab_size]  # [vocab]
            constraint = self.constraint
            if constraint is not None:
                logits = constraint.mask(logits)
            token = sampler.next_token(logits, self.prompt_ids, self.tokens)
            if constraint is not None and token not in eos:
                constraint.consume(token)
            self._times.setdefault("first_token", perf_counter())
            self._take(token, None if opts.logprobs is None else token_logprobs(logits, token, opts.logprobs))
            if token in eos:
                reason = "stop"
                break
            yield token, self._text(stops.push(detok.add(token))), False
            if stops.hit:
                reason = "stop"
                break
            to_feed = [token]
        if not stops.hit:
            yield None, self._text(stops.push(detok.flush()) + stops.flush()), False
        self.finish_reason = reason
        self._times["end"] = perf_counter()

    def _take(self, token: int, logprobs: dict | None) -> None:
        self.tokens.append(token)
        if self.logprobs is not None:
            self.logprobs.append(logprobs)

    def _text(self, piece: str) -> str:
        if piece:
            self.text_parts.append(piece)
        return piece

    @property
    def text(self) -> str:
        return "".join(self.text_parts)

    def stats(self) -> dict:
        end = self._times.get("end", perf_counter())
        first = self._times.get("first_token")
        prefill_s = self._times.get("prefill", 0.0)
        n = len(self.tokens)
        return {
            "prompt_tokens": len(self.prompt_ids),
            "prefilled_tokens": self.prefilled,
            "prompt_tokens_per_s": self.prefilled / prefill_s if prefill_s > 0 else 0.0,
            "generated_tokens": n,
            "generation_tokens_per_s": (n - 1) / (end - first) if first is not None and n > 1 and end > first else 0.0,
            "time_to_first_token_s": None if first is None else first - self.started,
            "total_s": end - self.started,
            "context_full": self.context_full,
        }

    def result(self) -> GenerationResult:
        return GenerationResult(self.text, list(self.tokens), self.finish_reason, self.stats(),
                                None if self.logprobs is None else list(self.logprobs))


# --- raw text ---------------------------------------------------------------------------------------------


def prompt_ids(tokenizer, prompt) -> list[int]:
    """Token ids of a raw prompt: text, or a sequence of ids."""
    if isinstance(prompt, str):
        return tokenizer.encode(prompt)
    try:
        return token_id_list(prompt)
    except TinyExaoneError:
        raise TinyExaoneError(f"prompt must be text or a list of token ids, got {type(prompt).__name__}") from None


class TextStream:
    """Iterator over the text chunks of one run; `.result` (a GenerationResult) once it is
    exhausted; `cancel()` stops this run (and no other) before its next forward pass."""

    def __init__(self, run: Run):
        self._run = run
        self._chunks = self._generate()
        self.result: GenerationResult | None = None

    def _generate(self):
        for _, text, _ in self._run:
            if text:
                yield text
        self.result = self._run.result()

    def __iter__(self):
        return self

    def __next__(self) -> str:
        return next(self._chunks)

    @property
    def stats(self) -> dict:
        return self._run.stats()

    @property
    def logprobs(self) -> list | None:
        """The run's logprobs so far (None when the option is off), one entry per token taken."""
        return self._run.logprobs

    def cancel(self) -> None:
        self._run.token.cancel()

    def close(self) -> None:
        self._chunks.close()
