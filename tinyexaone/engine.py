"""What the server runs: requests in a fair queue, prefix-cached KV caches, batched decoding.

`Engine(chat_model, model_id, context_size, parallel, ...)` serves generations for many
clients at once. At most `parallel` generate together (their decode steps batched by
batching.StepScheduler); more wait in a first-come, first-served queue of at most
`max_waiting`, beyond which `admit()` answers 429. Each generation takes the idle KV cache that
shares the longest token prefix with its prompt from a prefix_cache.PrefixCachePool (so the
second turn of a conversation prefills only its new tokens) and returns it when done.

A request goes in two steps, so that everything the client got wrong is a 400 before a byte
of the response is sent: `prepare_chat(request)` / `prepare_completion(request)` check the
options (generation.make_options) and render and tokenize the prompt (a prompt longer than the
context is a 400 with both counts), and return a `Prepared`; then `run(prepared, alive)` yields
generation events (chat.py's events, or {"type": "text"|"done"} for raw text) as the run makes
them. `alive()` is asked before every forward pass; when it says the client has gone, the run
ends within that token (`ClientGone`). `close()` cancels every run, makes queued requests and
pending steps fail with 503, and stops the compute thread.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass

from .batching import StepScheduler
from .chat import ChatTurn
from .errors import ContextOverflowError, TinyExaoneError
from .generation import Run, RunRegistry, make_options, prompt_ids
from .openai_api import ApiError, ChatRequest, CompletionRequest
from .prefix_cache import PrefixCachePool

QUEUE_POLL_S = 0.25  # how often a queued request looks whether its client is still there


class ClientGone(Exception):
    """The client of a running request disconnected."""


class FairQueue:
    """At most `slots` holders at once; the others wait in arrival order, at most `max_waiting`."""

    def __init__(self, slots: int, max_waiting: int):
        self._cond = threading.Condition()
        self._free = slots
        self._waiting: deque[object] = deque()
        self.max_waiting = max_waiting
        self.closed = False

    def enter(self) -> object:
        """A ticket for the queue, or 429 when it is full (503 once closed)."""
        with self._cond:
            if self.closed:
                raise ApiError(503, "the server is shutting down", code="shutting_down")
            if self._free == 0 and len(self._waiting) >= self.max_waiting:
                raise ApiError(429, f"the server is busy: {len(self._waiting)} requests are already waiting",
                               code="queue_full")
            ticket = object()
            self._waiting.append(ticket)
            return ticket

    def wait(self, ticket: object, alive) -> None:
        """Block until `ticket` is first and a slot is free, then hold that slot."""
        with self._cond:
            while not (self._free > 0 and self._waiting[0] is ticket):
                if self.closed or not alive():
                    self._waiting.remove(ticket)
                    self._cond.notify_all()
                    if self.closed:
                        raise ApiError(503, "the server is shutting down", code="shutting_down")
                    raise ClientGone()
                self._cond.wait(QUEUE_POLL_S)
            self._waiting.popleft()
            self._free -= 1
            self._cond.notify_all()

    @property
    def free(self) -> int:
        """Slots not held now."""
        with self._cond:
            return self._free

    def leave(self) -> None:
        with self._cond:
            self._free += 1
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()


@dataclass
class Prepared:
    kind: str  # "chat" | "completion"
    request: ChatRequest | CompletionRequest
    options: object  # generation.Options
    prompt_ids: list[int]
    ticket: object
    turn: ChatTurn | None = None  # the running chat turn, once `run` made it
    generation: Run | None = None  # the running raw-text run


def _bad_request(exc: TinyExaoneError) -> ApiError:
    if isinstance(exc, ContextOverflowError):
        message = str(exc) or f"the prompt needs {exc.needed} tokens, more than the context of {exc.limit} tokens"
        return ApiError(400, message, param="messages", code="context_length_exceeded")
    return ApiError(400, str(exc))


class Engine:
    """See the module docstring."""

    def __init__(self, chat_model, model_id: str, context_size: int | None = None, parallel: int = 4,
                 max_waiting: int = 64, cache_type: str = "f16", prompt_cache_bytes: int = 1 << 30):
        self.chat_model = chat_model
        self.model_id = model_id
        self.tokenizer = chat_model.require_tokenizer()
        model = chat_model.model
        self.context_size = min(context_size or model.config.max_position_embeddings,
                                model.config.max_position_embeddings)
        self.cache_type = cache_type
        self.scheduler = StepScheduler(model)
        self.pool = PrefixCachePool(lambda: model.new_cache(self.context_size, cache_type), prompt_cache_bytes)
        self.queue = FairQueue(parallel, max_waiting)
        self.runs = RunRegistry()  # this engine's runs only: closing it stops no other user of the model

    # --- step 1: everything the client can get wrong -------------------------------------------------

    def _options(self, request, enable_thinking: bool) -> object:
        extra = {}
        if isinstance(request, ChatRequest):
            if request.response_format is not None:
                extra["response_format"] = request.response_format
            if request.tools and request.tool_choice != "auto":
                extra["tool_choice"] = request.tool_choice
        options = {"max_new_tokens": self.context_size, **request.options, **extra}
        return make_options(enable_thinking, context_size=self.context_size, cache_type=self.cache_type, **options)

    def prepare_chat(self, request: ChatRequest) -> Prepared:
        try:
            options = self._options(request, request.enable_thinking)
            turn = self._turn(request, options, self.chat_model.model.new_cache(self.context_size, self.cache_type), [],
                              None)
            if len(turn.prompt_ids) > self.context_size:
                raise ContextOverflowError("", len(turn.prompt_ids), self.context_size)
        except TinyExaoneError as exc:
            raise _bad_request(exc) from None
        return Prepared("chat", request, options, turn.prompt_ids, self.queue.enter())

    def prepare_completion(self, request: CompletionRequest) -> Prepared:
        try:
            options = self._options(request, False)
            if isinstance(request.prompt, str):
                self.tokenizer.check_fits(request.prompt, self.context_size)
            ids = prompt_ids(self.tokenizer, request.prompt)
            if any(not 0 <= i < self.chat_model.config.vocab_size for i in ids):
                raise TinyExaoneError(f"prompt token ids must be in [0, {self.chat_model.config.vocab_size})")
            if len(ids) > self.context_size:
                raise ContextOverflowError("", len(ids), self.context_size)
        except TinyExaoneError as exc:
            raise _bad_request(exc) from None
        return Prepared("completion", request, options, ids, self.queue.enter())

    def _turn(self, request: ChatRequest, options, cache, cached_ids, model) -> ChatTurn:
        token = self.runs.new_token()
        return ChatTurn(model or self.chat_model.model, self.tokenizer, request.messages, request.tools,
                        request.enable_thinking, options, request.template_kwargs, cache, cached_ids, token)

    # --- step 2: the generation ----------------------------------------------------------------------

    def run(self, prepared: Prepared, alive):
        """Yield the generation's events; the caller must exhaust or close this generator."""
        self.queue.wait(prepared.ticket, alive)
        try:
            cache, cached_ids = self.pool.take(prepared.prompt_ids)

            def before_step():
                if not alive():
                    raise ClientGone()

            try:
                with self.scheduler.sequence(before_step) as model:
                    if prepared.kind == "chat":
                        prepared.turn = self._turn(prepared.request, prepared.options, cache, cached_ids, model)
                        yield from prepared.turn.events()
                    else:
                        prepared.generation = run = Run(model, self.tokenizer, cache, cached_ids, prepared.prompt_ids,
                                                        prepared.options, self.runs.new_token())
                        for _, text, _ in run:
                            if text:
                                yield {"type": "text", "delta": text}
                        result = run.result()
                        yield {"type": "done", "finish_reason": result.finish_reason, "tokens": result.tokens,
                               "stats": result.stats, "logprobs": result.logprobs}
            finally:
                self.pool.put(cache, self._held_ids(prepared, cached_ids))
        finally:
            self.queue.leave()

    @staticmethod
    def _held_ids(prepared: Prepared, cached_ids) -> list[int]:
        """Exactly the tokens the request's cache holds now."""
        if prepared.turn is not None:
            return prepared.turn.cached_ids
        if prepared.generation is not None:
            return prepared.generation.decoder.ids
        return cached_ids

    def close(self) -> None:
        """Stop serving: every run is cancelled, queued requests and pending steps fail (503)."""
        self.queue.close()
        self.runs.cancel_all()
        self.scheduler.close()
