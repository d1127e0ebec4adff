"""Chat over the token loop: one assistant turn as a stream of events, and sessions that keep a cache.

`ChatTurn(model, tokenizer, messages, tools, enable_thinking, options, template_kwargs, cache,
cached_ids, token)` renders the model's chat template when it is made (so a bad conversation
fails before anything streams) and `events()` generates the reply: "reasoning" and "content"
deltas, "tool_call" and "tool_call_error" entries, and a final "done" carrying the OpenAI-shaped
assistant message {"role", "content", "reasoning_content", "tool_calls", "tool_call_errors"},
finish_reason, usage, stats, tokens and logprobs (generation.py; None when off). Malformed or
unknown tool calls land in "tool_call_errors", never in an exception. String tool-call
arguments in the history (OpenAI style) are rendered as the objects they encode, the way the
model wrote them. `reasoning_budget=N` forces "\n</think>\n\n" after N reasoning tokens so the
model moves on to its answer. Once `events()` ends -- finished, abandoned (closed) or
interrupted (KeyboardInterrupt) -- the turn says what it left: `message` (what was generated so
far; None only when it failed with an error), `cached_ids` (exactly what the cache holds) and
`prefilled`.

Constraints (`ReplyConstraints`, compiled by grammar.py when the turn is made; they apply to the
answer, after the reasoning, which stays free): `response_format` or `grammar` makes the answer
follow it; `tool_choice` "required" makes the answer one or more tool calls, a named function
exactly one call of it, each `<tool_call>{"name", "arguments"}</tool_call>` of a declared tool
with arguments valid for its `parameters`; "none" forbids the `<tool_call>` token; "auto" (the
default) leaves text free and, once the model opens `<tool_call>`, holds the call's body to the
declared tools until `</tool_call>` (a lazy grammar, as llama-server's; without llguidance
installed calls stay unconstrained), or with a response_format lets the answer be either the
format or tool calls. With thinking on, the answer's constraint starts after `</think>` and the
template's "\n\n" (forced if the model does not write it), and until then end-of-turn and
`<tool_call>` are kept out of the reasoning.

`ChatSession` keeps one KV cache (of `context_size` tokens and `cache_type`) across turns. Each
turn re-renders the whole conversation, keeps the longest common token prefix with what the
cache holds and prefills only the rest; after each turn the session takes the turn's outcome
into its history. Its methods are the only way its history changes (`send`, `reset`,
`set_system`, `set_thinking`, `replace_messages`, `truncate`, `append`). `ChatStream` is a
streamed turn: an iterator of events with `cancel()`, which stops that turn only.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass
from time import perf_counter

from .cache import DEFAULT_CACHE_TYPE
from .errors import TinyExaoneError
from .generation import CancelToken, Options, Run, make_options
from .grammar import CALL_OPEN, Constraint, TokenBan, llguidance, tool_call_grammar, tool_parameters
from .parsing import THINK_CLOSE, OutputSplitter, parse_tool_call, starts_in_reasoning, tool_names
from .prompt import chat_prompt

REASONING_END = "\n</think>\n\n"  # what the template writes after reasoning; forced by reasoning_budget
ANSWER_SEPARATOR = "\n\n"  # what the template writes between </think> and the answer
RESERVED_TEMPLATE_KWARGS = ("enable_thinking", "tools", "messages", "add_generation_prompt", "max_tokens", "tokenize",
                            "special_tokens_in_content")
ROLES = ("system", "user", "assistant", "tool")


@dataclass
class ChatResponse:
    message: dict  # OpenAI-shaped assistant message; append it to the conversation as is
    finish_reason: str  # "stop" | "length" | "tool_calls" | "cancelled"
    usage: dict  # prompt_tokens, completion_tokens, total_tokens
    stats: dict
    tokens: list[int]  # generated (and forced) token ids, as in GenerationResult
    logprobs: list | None = None  # aligned with tokens when the logprobs option is on, as in GenerationResult


class ReplyConstraints:
    """What constrains one reply, from the options and the declared tools (see the module
    docstring): a grammar for the whole answer (`answer`), or a ban of the `<tool_call>` token
    (`ban`, tool_choice "none"), and/or the grammar of a call's body once the model opens one
    (`call_body`, tool_choice "auto"). While the model reasons before a constrained answer,
    `reasoning_ban` keeps end-of-turn and `<tool_call>` out, so the reasoning cannot end the
    reply or swallow the call. Everything is compiled and checked when it is made."""

    def __init__(self, tokenizer, tools, options: Options):
        choice = options.tool_choice or "auto"
        answer_format = options.grammar or options.response_format
        specs = tool_parameters(tools) if tools else {}
        self.answer, self.ban, self.call_body = None, None, None
        self.reasoning_ban = TokenBan([*tokenizer.eos_token_ids, *options.stop_token_ids,
                                       *[i for i in [tokenizer.added_tokens.get(CALL_OPEN)] if i is not None]])
        if choice == "required" or choice.startswith("function:"):
            if not specs:
                raise TinyExaoneError(f"tool_choice {choice.split(':')[0]!r} needs declared tools")
            if choice != "required":
                name = choice.split(":", 1)[1]
                if name not in specs:
                    raise TinyExaoneError(f"tool_choice names {name!r:.40}, which is not a declared tool "
                                          f"(declared: {', '.join(sorted(specs))})")
                specs = {name: specs[name]}
            self.answer = tool_call_grammar(tokenizer, specs, several=choice == "required")
        elif choice == "none" or not specs:
            self.answer = answer_format
            call_open = tokenizer.added_tokens.get(CALL_OPEN)
            if answer_format is None and specs and call_open is not None:
                self.ban = TokenBan([call_open])
        elif answer_format is not None:
            self.answer = tool_call_grammar(tokenizer, specs, alternative=answer_format)
        elif _has_llguidance():  # without it, tool calls in "auto" stay unconstrained, as they were before
            self.call_body = tool_call_grammar(tokenizer, specs, lazy=True)


def _has_llguidance() -> bool:
    try:
        llguidance()
    except TinyExaoneError:
        return False
    return True


def arguments_as_objects(messages) -> list:
    """OpenAI clients send tool-call arguments as JSON strings; the template must see objects,
    or it would render them as a quoted string instead of what the model wrote."""
    out = []
    for i, message in enumerate(messages if isinstance(messages, (list, tuple)) else ()):
        calls = message.get("tool_calls") if isinstance(message, dict) else None
        if calls is not None and not isinstance(calls, list):
            raise TinyExaoneError(f"messages[{i}]: tool_calls must be a list, got {type(calls).__name__}")
        if calls:
            try:
                message = copy.deepcopy(message)
            except RecursionError:
                raise TinyExaoneError(f"messages[{i}] is nested too deeply") from None
            for call in message["tool_calls"]:
                target = call.get("function", call) if isinstance(call, dict) else None
                if isinstance(target, dict) and isinstance(target.get("arguments"), str):
                    try:
                        target["arguments"] = json.loads(target["arguments"])
                    except (json.JSONDecodeError, RecursionError):
                        pass
        out.append(message)
    return out


class ChatTurn:
    """One assistant reply to `messages`; see the module docstring."""

    def __init__(self, model, tokenizer, messages, tools, enable_thinking: bool, options: Options,
                 template_kwargs, cache, cached_ids, token: CancelToken, special_tokens_in_content: bool = False):
        self.started = perf_counter()
        if template_kwargs is not None and not isinstance(template_kwargs, dict):
            raise TinyExaoneError(f"template_kwargs must be a dict, got {type(template_kwargs).__name__}")
        template_kwargs = dict(template_kwargs or {})
        clash = sorted(set(template_kwargs) & set(RESERVED_TEMPLATE_KWARGS))
        if clash:
            raise TinyExaoneError(f"template_kwargs may not set {clash[0]!r}: pass it as its own argument")
        self.prompt, self.prompt_ids = chat_prompt(
            tokenizer, arguments_as_objects(messages), tools=tools, add_generation_prompt=True, max_tokens=cache.max_tokens,
            special_tokens_in_content=special_tokens_in_content, enable_thinking=enable_thinking, **template_kwargs)
        self.model, self.tokenizer, self.options, self.token = model, tokenizer, options, token
        self.cache, self.history = cache, list(messages)
        self.known_tools = tool_names(tools)
        self.constraints = ReplyConstraints(tokenizer, tools, options)
        self.answer_started = False  # whether the answer's constraint (if any) has been set
        self.started_in_reasoning = starts_in_reasoning(self.prompt)
        self.splitter = OutputSplitter(self.started_in_reasoning)
        self.parts = {"reasoning": [], "content": []}
        self.calls, self.errors = [], []
        self.reasoning_tokens, self.budget_spent = 0, False
        self.run: Run | None = None
        self.message: dict | None = None
        self._cached_at_start = list(cached_ids)

    @property
    def cached_ids(self) -> list[int]:
        return list(self.run.decoder.ids) if self.run is not None else self._cached_at_start

    @property
    def prefilled(self) -> int:
        return self.run.prefilled if self.run is not None else 0

    def events(self):
        """Generate the reply, yielding event dicts; the last one is "done"."""
        unconstrained = dataclasses.replace(self.options, grammar=None)  # the answer's grammar is set by _steer
        self.run = Run(self.model, self.tokenizer, self.cache, self._cached_at_start, self.prompt_ids, unconstrained,
                       self.token, self.started)
        try:
            yield from self._generate()
        except (GeneratorExit, KeyboardInterrupt):  # abandoned or interrupted: keep what was generated
            self.message = self._message()
            raise

    def _generate(self):
        self._close_reasoning_if_over_budget()
        self._steer(self.splitter.state)
        for token, text, forced in self.run:
            state_before = self.splitter.state
            if token is not None and not forced and state_before == "reasoning":
                self.reasoning_tokens += 1
            for kind, value in self.splitter.feed(text):
                yield self._event(kind, value)
            self._close_reasoning_if_over_budget()
            self._steer(state_before)
        for kind, value in self.splitter.finish():
            yield self._event(kind, value)
        self.message = self._message()
        yield self._done()

    def _close_reasoning_if_over_budget(self) -> None:
        budget = self.options.reasoning_budget
        if (budget is not None and not self.budget_spent and self.splitter.state == "reasoning"
                and self.reasoning_tokens >= budget):
            self.run.force(self.tokenizer.encode(REASONING_END, add_special_tokens=False))
            self.budget_spent = True

    def _steer(self, state_before: str) -> None:
        """Set or release the run's constraint: the answer's once the reasoning is over (after the
        template's "\n\n", forced if the model has not written it), a call body's from the moment
        the model opens `<tool_call>` until `</tool_call>`."""
        run, state, plan = self.run, self.splitter.state, self.constraints
        if state == "reasoning" and plan.answer is not None and run.constraint is None:
            run.constrain(plan.reasoning_ban)  # the answer must come: no end of turn, no call inside the reasoning
        if run.forcing or state == "reasoning":
            return
        if not self.answer_started:
            if plan.answer is not None and self.started_in_reasoning:
                after = run.text[run.text.rfind(THINK_CLOSE) + len(THINK_CLOSE):]
                written = len(after) - len(after.lstrip("\n"))
                if written < len(ANSWER_SEPARATOR) and not after.strip():
                    run.force(self.tokenizer.encode(ANSWER_SEPARATOR[written:], add_special_tokens=False))
                    return
                self._constrain_answer(after.lstrip())
            elif plan.answer is not None:
                self._constrain_answer("")
            elif plan.ban is not None:
                run.constrain(plan.ban)
            self.answer_started = True
        if plan.call_body is None:
            return
        if state == "tool_call" and state_before != "tool_call":
            body = Constraint(self.tokenizer, plan.call_body)
            if body.consume_text(run.text[run.text.rfind(CALL_OPEN) + len(CALL_OPEN):]):
                run.constrain(body)  # (a call whose start the grammar rejects stays as it is: a tool_call_error)
        elif run.constraint is not None and (state != "tool_call" or run.constraint.finished):
            run.constrain(None)

    def _constrain_answer(self, written: str) -> None:
        constraint = Constraint(self.tokenizer, self.constraints.answer)
        if not constraint.consume_text(written):
            raise TinyExaoneError(f"the model began its answer with text the {self.constraints.answer.what} rejects: "
                                  f"{written[:40]!r}")
        self.run.constrain(constraint)

    def _event(self, kind: str, value: str) -> dict:
        if kind in self.parts:
            self.parts[kind].append(value)
            return {"type": kind, "delta": value}
        entry = parse_tool_call(value, self.known_tools, terminated=kind == "tool_call")
        if "error" in entry:
            self.errors.append(entry)
            return {"type": "tool_call_error", "error": entry}
        self.calls.append(entry)
        return {"type": "tool_call", "tool_call": entry}

    def _message(self) -> dict:
        content = "".join(self.parts["content"])
        return {
            "role": "assistant",
            "content": content if content or not self.calls else None,
            "reasoning_content": "".join(self.parts["reasoning"]) or None,
            "tool_calls": list(self.calls),
            "tool_call_errors": list(self.errors),
        }

    def _done(self) -> dict:
        run = self.run
        finish = "tool_calls" if self.calls and run.finish_reason == "stop" else run.finish_reason
        stats = run.stats()
        usage = {"prompt_tokens": stats["prompt_tokens"], "completion_tokens": stats["generated_tokens"],
                 "total_tokens": stats["prompt_tokens"] + stats["generated_tokens"]}
        return {"type": "done", "message": self.message, "finish_reason": finish, "usage": usage, "stats": stats,
                "tokens": list(run.tokens), "logprobs": None if run.logprobs is None else list(run.logprobs)}


class ChatStream:
    """The events of one streamed turn; `cancel()` stops this turn (and no other) before its next
    forward pass, `close()` abandons it (keeping what was generated)."""

    def __init__(self, events, token: CancelToken):
        self._events = events
        self._token = token

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        return next(self._events)

    def cancel(self) -> None:
        self._token.cancel()

    def close(self) -> None:
        self._events.close()


def collect(events) -> ChatResponse:
    """Run a turn's events to the end; its ChatResponse."""
    done = None
    for event in events:
        if event["type"] == "done":
            done = event
    return ChatResponse(done["message"], done["finish_reason"], done["usage"], done["stats"], done["tokens"],
                        done["logprobs"])


def as_messages(message) -> list[dict]:
    """A user message (str), a message dict or a list of them, as a list of message dicts."""
    if isinstance(message, str):
        return [{"role": "user", "content": message}]
    if isinstance(message, dict):
        return [message]
    if isinstance(message, (list, tuple)) and all(isinstance(m, dict) for m in message):
        return list(message)
    raise TinyExaoneError("send() takes a str, a message dict or a list of message dicts")


class ChatSession:
    """A conversation that keeps its KV cache between turns (see the module docstring).

    `send(message, stream=False, **options)` appends a user message (a str), a message dict or a
    list of them (e.g. tool results {"role": "tool", "content": ...}), generates the assistant's
    reply and appends it to `messages`. A cancelled or abandoned turn keeps what was generated.
    """

    def __init__(self, chat_model, system: str | None = None, tools=None, enable_thinking: bool = False,
                 context_size: int | None = None, cache_type: str = DEFAULT_CACHE_TYPE,
                 template_kwargs: dict | None = None, special_tokens_in_content: bool = False, **options):
        self._chat_model = chat_model
        self._tokenizer = chat_model.require_tokenizer()
        make_options(enable_thinking, **options)  # fail now on bad defaults
        self.system = system
        self.tools = tools
        self.enable_thinking = enable_thinking
        self.template_kwargs = template_kwargs
        self.special_tokens_in_content = special_tokens_in_content
        self.default_options = dict(options)
        self.cache = chat_model.model.new_cache(context_size, cache_type)
        self._turn: ChatTurn | None = None
        self._turn_events = None  # the generator of that turn's events
        self._busy = False
        self.reset()

    @property
    def context_size(self) -> int:
        return self.cache.max_tokens

    # --- the conversation ----------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget the conversation (the system prompt stays) and empty the cache."""
        self._check_idle("reset")
        self.messages = [] if self.system is None else [{"role": "system", "content": self.system}]
        self.cache.reset()
        self.cached_ids: list[int] = []
        self.last_prefilled_tokens = 0

    def set_system(self, text: str | None) -> None:
        """Set (or with None remove) the system prompt, at the head of the conversation."""
        self._check_idle("change the system prompt")
        self.system = text
        if self.messages and self.messages[0].get("role") == "system":
            self.messages.pop(0)
        if text is not None:
            self.messages.insert(0, {"role": "system", "content": text})

    def set_thinking(self, enabled: bool) -> None:
        self.enable_thinking = bool(enabled)

    def replace_messages(self, messages: list[dict]) -> None:
        """Continue another conversation: its messages (a leading system message sets the system prompt)."""
        self._check_idle("replace the conversation")
        for i, message in enumerate(messages):
            if not isinstance(message, dict) or message.get("role") not in ROLES:
                raise TinyExaoneError(f"message {i} has no valid role (one of {', '.join(ROLES)})")
        self.system = messages[0].get("content") if messages and messages[0]["role"] == "system" else None
        self.messages = list(messages)

    def truncate(self, count: int) -> list[dict]:
        """Keep the first `count` messages; returns those removed."""
        self._check_idle("truncate the conversation")
        removed, self.messages = self.messages[count:], self.messages[:count]
        return removed

    def append(self, message: dict) -> None:
        """Add a message that no turn generated (e.g. a tool result after an interrupted tool call)."""
        self._check_idle("add a message")
        self.messages.append(dict(message))

    # --- turns -------------------------------------------------------------------------------------------

    def cancel(self) -> None:
        """Stop this session's running turn before its next forward pass."""
        if self._turn is not None:
            self._turn.token.cancel()

    def send(self, message, stream: bool = False, **options):
        self._close_cancelled_turn()
        self._check_idle("start a turn")
        new = as_messages(message)
        opts = make_options(self.enable_thinking, **{**self.default_options, **options})
        token = self._chat_model.runs.new_token(opts.cancel)
        turn = ChatTurn(self._chat_model.model, self._tokenizer, self.messages + new, self.tools,
                        self.enable_thinking, opts, self.template_kwargs, self.cache, self.cached_ids, token,
                        self.special_tokens_in_content)
        self._turn = turn
        self._turn_events = events = self._events(turn)
        return ChatStream(events, token) if stream else collect(events)

    def _close_cancelled_turn(self) -> None:
        """A cancelled turn whose stream was left suspended (started, then neither advanced nor
        closed) is closed here, keeping what it generated, so that cancel() then send() works."""
        events = self._turn_events
        if self._busy and self._turn.token.cancelled and events is not None and not events.gi_running:
            events.close()

    def _events(self, turn: ChatTurn):
        self._check_idle("start a turn")
        self._busy = True
        try:
            yield from turn.events()
        finally:
            self._busy = False
            self._take(turn)

    def _take(self, turn: ChatTurn) -> None:
        """What a finished, abandoned or failed turn leaves: the cache's ids, and its reply if it has one."""
        self.cached_ids = turn.cached_ids
        self.last_prefilled_tokens = turn.prefilled
        if turn.message is not None:
            self.messages = turn.history + [turn.message]

    def _check_idle(self, action: str) -> None:
        if self._busy:
            raise TinyExaoneError(f"cannot {action}: a turn of this session is still streaming; finish, cancel "
                                  f"or close it first")
