"""The generation API: text in, tokens out, with sampling, stop conditions, chat and sessions.

- `generate(model, prompt, **options) -> GenerationResult` (text, tokens, finish_reason, stats)
  and `stream(model, prompt, **options) -> TextStream` (yields text chunks; `.result` at the
  end). The prompt is raw text (or token ids), no chat template.
- `chat(model, messages, tools=None, enable_thinking=False, stream=False, **options)` renders
  the model's template and returns a `ChatResponse` whose `.message` is an OpenAI-shaped
  assistant message {"role", "content", "reasoning_content", "tool_calls", "tool_call_errors"};
  with `stream=True` it yields event dicts ("reasoning" / "content" deltas, "tool_call",
  "tool_call_error", and a final "done" carrying the message, finish_reason, usage, stats and
  tokens). Malformed or unknown tool calls land in "tool_call_errors", never in an exception.
  String tool-call arguments in the history (OpenAI style) are rendered as the objects they
  encode, the way the model wrote them. `template_kwargs` (e.g. {"skip_think": False}) go to
  the template.
- `ChatSession` keeps one KV cache across turns. Each turn re-renders the whole conversation,
  keeps the longest common token prefix with what the cache holds (trimming the cache to it, or
  resetting it when a sliding-window layer can no longer roll back) and prefills only the rest;
  `last_prefilled_tokens` says how many tokens that was.

The loop: prefill the prompt with `model.forward(ids, cache)` in chunks of PREFILL_CHUNK, then
sample one token, feed it, repeat. It stops on an end-of-sequence id (generation_config.json
and the tokenizer's eos, plus `stop_token_ids`), a stop string (the text is cut before it),
`max_new_tokens`, a full context ("length"), or cancellation ("cancelled"): `cancel(model)`
(= `Model.cancel()`), a caller's `threading.Event` passed as `cancel=`, or `ChatSession.cancel()`
stop a running generation before its next forward pass. A prompt longer than the context
raises TinyExaoneError; nothing is truncated silently. `reasoning_budget=N` forces
"\n</think>\n\n" after N reasoning tokens so the model moves on to its answer. `tokens` lists
every token the model produced or was forced to take, including the end-of-sequence token that
stopped it; `text` never contains that token.

Stats (seconds, tokens/s): prompt_tokens, prefilled_tokens, prompt_tokens_per_s,
generated_tokens, generation_tokens_per_s (tokens after the first / time after the first),
time_to_first_token_s (None if none was produced), total_s, context_full.
"""

from __future__ import annotations

import copy
import json
import threading
import weakref
from dataclasses import dataclass
from time import perf_counter

import numpy as np

from .errors import TinyExaoneError
from .parsing import OutputSplitter, parse_tool_call, partial_marker_length, starts_in_reasoning, tool_names
from .sampling import NON_REASONING_DEFAULTS, REASONING_DEFAULTS, Sampler, SamplingParams

PREFILL_CHUNK = 256  # prompt tokens per forward call: bounds the [T, vocab] logits of a prefill step
DEFAULT_MAX_NEW_TOKENS = 1024
REASONING_END = "\n</think>\n\n"  # what the template writes after reasoning; forced by reasoning_budget
SAMPLING_OPTIONS = ("temperature", "top_k", "top_p", "min_p", "presence_penalty", "frequency_penalty",
                    "repetition_penalty", "seed")
OTHER_OPTIONS = ("max_new_tokens", "stop", "stop_token_ids", "reasoning_budget", "context_size", "cancel")

_model_cancel_events: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@dataclass
class GenerationResult:
    text: str
    tokens: list[int]
    finish_reason: str  # "stop" | "length" | "cancelled"
    stats: dict


@dataclass
class ChatResponse:
    message: dict  # OpenAI-shaped assistant message; append it to the conversation as is
    finish_reason: str  # "stop" | "length" | "tool_calls" | "cancelled"
    usage: dict  # prompt_tokens, completion_tokens, total_tokens
    stats: dict
    tokens: list[int]  # generated (and forced) token ids, as in GenerationResult


@dataclass(frozen=True)
class Options:
    sampling: SamplingParams
    max_new_tokens: int
    stop: tuple[str, ...]
    stop_token_ids: frozenset[int]
    reasoning_budget: int | None
    context_size: int | None
    cancel: threading.Event | None


def make_options(enable_thinking: bool = False, **options) -> Options:
    """Validate generation keyword options; sampling defaults depend on reasoning mode."""
    unknown = sorted(set(options) - set(SAMPLING_OPTIONS) - set(OTHER_OPTIONS))
    if unknown:
        known = ", ".join(SAMPLING_OPTIONS + OTHER_OPTIONS)
        raise TinyExaoneError(f"unknown generation option {unknown[0]!r} (known: {known})")
    defaults = REASONING_DEFAULTS if enable_thinking else NON_REASONING_DEFAULTS
    sampling = {**defaults, **{k: options[k] for k in SAMPLING_OPTIONS if options.get(k) is not None}}
    max_new = options.get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS)
    if isinstance(max_new, bool) or not isinstance(max_new, int) or max_new < 1:
        raise TinyExaoneError(f"max_new_tokens must be a positive integer, got {max_new!r}")
    stop = options.get("stop") or ()
    stop = (stop,) if isinstance(stop, str) else tuple(stop)
    if not all(isinstance(s, str) and s for s in stop):
        raise TinyExaoneError(f"stop must be a non-empty string or a list of them, got {options.get('stop')!r}")
    stop_ids = options.get("stop_token_ids") or ()
    if not isinstance(stop_ids, (list, tuple, set, frozenset)) or not all(
            isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in stop_ids):
        raise TinyExaoneError(f"stop_token_ids must be non-negative integers, got {stop_ids!r}")
    budget = options.get("reasoning_budget")
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int) or budget < 0):
        raise TinyExaoneError(f"reasoning_budget must be a non-negative integer or None, got {budget!r}")
    context_size = options.get("context_size")
    if context_size is not None and (isinstance(context_size, bool) or not isinstance(context_size, int)
                                     or context_size < 1):
        raise TinyExaoneError(f"context_size must be a positive integer or None, got {context_size!r}")
    cancel_event = options.get("cancel")
    if cancel_event is not None and not isinstance(cancel_event, threading.Event):
        raise TinyExaoneError(f"cancel must be a threading.Event, got {type(cancel_event).__name__}")
    return Options(SamplingParams(**sampling), max_new, stop, frozenset(stop_ids), budget, context_size, cancel_event)


def cancel(model) -> None:
    """Stop every generation running on `model` before its next forward pass."""
    _model_cancel_events.setdefault(model, threading.Event()).set()


def _model_cancel_event(model) -> threading.Event:
    event = _model_cancel_events.setdefault(model, threading.Event())
    event.clear()  # a cancel() only concerns generations already running
    return event


def _tokenizer(model):
    if model.tokenizer is None:
        raise TinyExaoneError("this model has no tokenizer (no tokenizer.json next to the weights); "
                              "attach one with tinyexaone.load_tokenizer(path)")
    return model.tokenizer


def common_prefix_length(a, b) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


# --- the token loop -------------------------------------------------------------------------------------


class _Decoder:
    """One sequence in one cache: prefill with prefix reuse, then feed tokens and keep the last logits."""

    def __init__(self, model, cache, cached_ids, cancelled):
        self.model = model
        self.cache = cache
        self.ids = list(cached_ids)  # exactly the tokens the cache holds
        self.cancelled = cancelled
        self.logits = None  # [vocab] after the last position fed
        if cache.length != len(self.ids):  # a cache we did not fill: start over
            cache.reset()
            self.ids = []

    def prefill(self, prompt_ids) -> int:
        """Make the cache hold prompt_ids with logits for its last token; returns tokens computed."""
        if len(prompt_ids) > self.cache.max_tokens:
            raise TinyExaoneError(f"prompt of {len(prompt_ids)} tokens does not fit the context of "
                                  f"{self.cache.max_tokens} tokens")
        keep = min(common_prefix_length(self.ids, prompt_ids), len(prompt_ids) - 1)
        if self.cache.can_trim(keep):
            self.cache.trim(keep)
        else:  # a sliding-window layer no longer holds what position `keep` needs
            self.cache.reset()
            keep = 0
        self.ids = self.ids[:keep]
        for start in range(keep, len(prompt_ids), PREFILL_CHUNK):
            if self.cancelled():
                return start - keep
            self.feed(prompt_ids[start : start + PREFILL_CHUNK])
        return len(prompt_ids) - keep

    def feed(self, ids) -> None:
        self.logits = self.model.forward(np.asarray(ids, dtype=np.int64), self.cache, last_only=True)[0]  # [vocab]
        self.ids.extend(int(i) for i in ids)

    @property
    def room(self) -> int:
        return self.cache.max_tokens - self.cache.length


class _StopStrings:
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


class _Run:
    """One generation. Iterating it prefills, then yields (token_id | None, text, forced) per step;
    `force(ids)` (called between steps) makes the model take those tokens next."""

    def __init__(self, model, tokenizer, cache, cached_ids, prompt_ids, options: Options, started: float):
        self.model, self.tokenizer, self.options = model, tokenizer, options
        self.prompt_ids = [int(i) for i in prompt_ids]
        if not self.prompt_ids:
            raise TinyExaoneError("the prompt is empty: at least one token is needed")
        model_event = _model_cancel_event(model)
        caller_event = options.cancel
        self.cancelled = lambda: model_event.is_set() or (caller_event is not None and caller_event.is_set())
        self.decoder = _Decoder(model, cache, cached_ids, self.cancelled)
        self.started = started
        self.tokens: list[int] = []
        self.text_parts: list[str] = []
        self.finish_reason = None
        self.prefilled = 0  # prompt tokens actually computed (the rest came from the cache)
        self.context_full = False
        self._forced: list[int] = []
        self._times = {}

    def force(self, ids) -> None:
        self._forced.extend(int(i) for i in ids)

    def __iter__(self):
        opts, tok, dec = self.options, self.tokenizer, self.decoder
        t0 = perf_counter()
        self.prefilled = dec.prefill(self.prompt_ids)
        self._times["prefill"] = perf_counter() - t0
        eos = set(tok.eos_token_ids) | opts.stop_token_ids
        sampler = Sampler(opts.sampling)
        detok = tok.detokenizer()
        stops = _StopStrings(opts.stop)
        to_feed: list[int] = []  # sampled or forced tokens the cache has not seen yet
        while True:
            if self._forced:
                forced, self._forced = self._forced, []
                for token in forced:
                    self.tokens.append(token)
                    yield token, self._text(stops.push(detok.add(token))), True
                to_feed += forced
                if stops.hit:
                    reason = "stop"
                    break
            if self.cancelled():
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
                if self.cancelled():
                    reason = "cancelled"
                    break
            token = sampler.next_token(dec.logits[: tok.vocab_size], self.prompt_ids, self.tokens)
            self._times.setdefault("first_token", perf_counter())
            self.tokens.append(token)
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
        return GenerationResult(self.text, list(self.tokens), self.finish_reason, self.stats())


# --- raw text generation --------------------------------------------------------------------------------


def _prompt_ids(tokenizer, prompt) -> list[int]:
    if isinstance(prompt, str):
        return tokenizer.encode(prompt)
    try:
        ids = [int(i) for i in prompt]
    except (TypeError, ValueError):
        raise TinyExaoneError(f"prompt must be text or a list of token ids, got {type(prompt).__name__}") from None
    return ids


class TextStream:
    """Iterator over generated text chunks; `.result` (a GenerationResult) once it is exhausted."""

    def __init__(self, run: _Run):
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

    def close(self) -> None:
        self._chunks.close()


def stream(model, prompt, **options) -> TextStream:
    started = perf_counter()
    tokenizer = _tokenizer(model)
    opts = make_options(False, **options)
    if opts.reasoning_budget is not None:
        raise TinyExaoneError("reasoning_budget applies to chat(), not to raw-text generation")
    run = _Run(model, tokenizer, model.new_cache(opts.context_size), [], _prompt_ids(tokenizer, prompt), opts, started)
    return TextStream(run)


def generate(model, prompt, **options) -> GenerationResult:
    chunks = stream(model, prompt, **options)
    for _ in chunks:
        pass
    return chunks.result


# --- chat -------------------------------------------------------------------------------------------------


def _arguments_as_objects(messages) -> list:
    """OpenAI clients send tool-call arguments as JSON strings; the template must see objects,
    or it would render them as a quoted string instead of what the model wrote."""
    out = []
    for message in messages:
        calls = message.get("tool_calls") if isinstance(message, dict) else None
        if calls:
            message = copy.deepcopy(message)
            for call in message["tool_calls"]:
                target = call.get("function", call) if isinstance(call, dict) else None
                if isinstance(target, dict) and isinstance(target.get("arguments"), str):
                    try:
                        target["arguments"] = json.loads(target["arguments"])
                    except json.JSONDecodeError:
                        pass
        out.append(message)
    return out


def _chat_events(model, messages, tools, enable_thinking, opts: Options, template_kwargs, cache, cached_ids, record):
    """Yield chat events; call record(message | None, cached_ids, prefilled) when the turn ends.

    message is None only when the turn failed with an error; an abandoned (closed) or interrupted
    (KeyboardInterrupt) stream records what was generated so far.
    """
    started = perf_counter()
    tokenizer = _tokenizer(model)
    run = None
    message = None
    parts = {"reasoning": [], "content": []}
    calls, errors = [], []

    def build_message():
        content = "".join(parts["content"])
        return {
            "role": "assistant",
            "content": content if content or not calls else None,
            "reasoning_content": "".join(parts["reasoning"]) or None,
            "tool_calls": list(calls),
            "tool_call_errors": list(errors),
        }

    try:
        template_kwargs = dict(template_kwargs or {})
        clash = sorted(set(template_kwargs) & {"enable_thinking", "tools", "messages", "add_generation_prompt"})
        if clash:
            raise TinyExaoneError(f"template_kwargs may not set {clash[0]!r}: pass it as its own argument")
        prompt = tokenizer.apply_chat_template(_arguments_as_objects(messages), tools=tools, add_generation_prompt=True,
                                               enable_thinking=enable_thinking, **template_kwargs)
        run = _Run(model, tokenizer, cache, cached_ids, tokenizer.encode(prompt, add_special_tokens=False), opts,
                   started)
        splitter = OutputSplitter(starts_in_reasoning(prompt))
        known = tool_names(tools)
        budget = opts.reasoning_budget
        reasoning_tokens, budget_spent = 0, False

        def handle(kind, value):
            if kind in parts:
                parts[kind].append(value)
                return {"type": kind, "delta": value}
            entry = parse_tool_call(value, known, terminated=kind == "tool_call")
            if "error" in entry:
                errors.append(entry)
                return {"type": "tool_call_error", "error": entry}
            calls.append(entry)
            return {"type": "tool_call", "tool_call": entry}

        def over_budget():
            return (budget is not None and not budget_spent and splitter.state == "reasoning"
                    and reasoning_tokens >= budget)

        if over_budget():
            run.force(tokenizer.encode(REASONING_END, add_special_tokens=False))
            budget_spent = True
        for token, text, forced in run:
            if token is not None and not forced and splitter.state == "reasoning":
                reasoning_tokens += 1
            for kind, value in splitter.feed(text):
                yield handle(kind, value)
            if over_budget():
                run.force(tokenizer.encode(REASONING_END, add_special_tokens=False))
                budget_spent = True
        for kind, value in splitter.finish():
            yield handle(kind, value)
        message = build_message()
        finish = "tool_calls" if calls and run.finish_reason == "stop" else run.finish_reason
        stats = run.stats()
        usage = {"prompt_tokens": stats["prompt_tokens"], "completion_tokens": stats["generated_tokens"],
                 "total_tokens": stats["prompt_tokens"] + stats["generated_tokens"]}
        yield {"type": "done", "message": message, "finish_reason": finish, "usage": usage, "stats": stats,
               "tokens": list(run.tokens)}
    except (GeneratorExit, KeyboardInterrupt):  # abandoned or interrupted: keep what was generated
        if run is not None:
            message = build_message()
        raise
    finally:
        if record is not None:
            ids = run.decoder.ids if run is not None else cached_ids
            record(message, ids, run.prefilled if run is not None else 0)


def _collect(events) -> ChatResponse:
    done = None
    for event in events:
        if event["type"] == "done":
            done = event
    return ChatResponse(done["message"], done["finish_reason"], done["usage"], done["stats"], done["tokens"])


def chat(model, messages, tools=None, enable_thinking: bool = False, stream: bool = False,
         template_kwargs: dict | None = None, **options):
    opts = make_options(enable_thinking, **options)
    _tokenizer(model)
    events = _chat_events(model, messages, tools, enable_thinking, opts, template_kwargs,
                          model.new_cache(opts.context_size), [], None)
    return events if stream else _collect(events)


class ChatSession:
    """A conversation that keeps its KV cache between turns.

    `send(message, stream=False, **options)` appends a user message (a str), a message dict or a
    list of them (e.g. tool results {"role": "tool", "content": ...}), generates the assistant's
    reply and appends it to `messages`. A cancelled or abandoned turn keeps what was generated.
    """

    def __init__(self, model, system: str | None = None, tools=None, enable_thinking: bool = False,
                 context_size: int | None = None, template_kwargs: dict | None = None, **options):
        _tokenizer(model)
        make_options(enable_thinking, **options)  # fail now on bad defaults
        self.model = model
        self.system = system
        self.tools = tools
        self.enable_thinking = enable_thinking
        self.template_kwargs = template_kwargs
        self.options = options
        self.cache = model.new_cache(context_size)
        self._cancel = threading.Event()
        self._busy = False
        self.reset()

    def reset(self) -> None:
        """Forget the conversation (the system prompt stays) and empty the cache."""
        if self._busy:
            raise TinyExaoneError("cannot reset while a turn is generating; cancel it first")
        self.messages = [] if self.system is None else [{"role": "system", "content": self.system}]
        self.cache.reset()
        self.cached_ids: list[int] = []
        self.last_prefilled_tokens = 0

    def cancel(self) -> None:
        """Stop this session's running turn before its next forward pass."""
        self._cancel.set()

    def send(self, message, stream: bool = False, **options):
        if isinstance(message, str):
            new = [{"role": "user", "content": message}]
        elif isinstance(message, dict):
            new = [message]
        elif isinstance(message, (list, tuple)) and all(isinstance(m, dict) for m in message):
            new = list(message)
        else:
            raise TinyExaoneError("send() takes a str, a message dict or a list of message dicts")
        opts = make_options(self.enable_thinking, **{**self.options, **options, "cancel": self._cancel})
        events = self._turn(new, opts)
        return events if stream else _collect(events)

    def _turn(self, new_messages, opts):
        if self._busy:
            raise TinyExaoneError("a previous turn of this session is still streaming; finish or close it first")
        self._busy = True
        self._cancel.clear()
        history = self.messages + new_messages

        def record(message, cached_ids, prefilled):
            self.cached_ids = list(cached_ids)
            self.last_prefilled_tokens = prefilled
            if message is not None:
                self.messages = history + [message]

        try:
            yield from _chat_events(self.model, history, self.tools, self.enable_thinking, opts, self.template_kwargs,
                                    self.cache, self.cached_ids, record)
        finally:
            self._busy = False
