"""OpenAI's chat-completions and completions wire format: requests checked in, responses shaped out.

`parse_chat_request(body, model_id)` and `parse_completion_request(body, model_id)` take a
decoded JSON body and return a `ChatRequest` / `CompletionRequest` (what to generate, and the
keyword options for generation.make_options), or raise `ApiError` (HTTP status, message, param,
code) for anything OpenAI or llama-server would refuse: a body that is not an object, a wrong
`model`, `n` > 1, a field this server does not know that would change the meaning of the
request (`HARMLESS_FIELDS` such as `user` and `metadata` are accepted and ignored), or a value
of the wrong type. Range checks of sampling values stay with options.py (their TinyExaoneError
becomes a 400). The response builders (`chat_completion`, `chat_chunk`, `text_completion`,
`text_chunk`, `error_body`, `logprob_content`) produce exactly the shapes of OpenAI's
reference: `id`, `object`, `created`, `model`, `choices`, `usage` with
`prompt_tokens_details.cached_tokens`; reasoning goes in `reasoning_content` (llama-server),
`reasoning` (mlx-lm, vLLM), or with "none" back into the content as the model wrote it
("<think>...</think>").
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

REASONING_FORMATS = ("reasoning_content", "reasoning", "none")
HARMLESS_FIELDS = frozenset({"user", "metadata", "store", "service_tier", "parallel_tool_calls", "prediction",
                             "modalities", "safety_identifier", "prompt_cache_key", "verbosity", "cache_prompt",
                             "id_slot", "timings_per_token"})
SAMPLING_FIELDS = ("temperature", "top_p", "min_p", "top_k", "presence_penalty", "frequency_penalty",
                   "repetition_penalty", "seed")
CHAT_FIELDS = frozenset(SAMPLING_FIELDS) | {
    "model", "messages", "tools", "tool_choice", "max_tokens", "max_completion_tokens", "stop", "stream",
    "stream_options", "logprobs", "top_logprobs", "response_format", "chat_template_kwargs", "reasoning_effort",
    "reasoning_budget", "n", "grammar"}
COMPLETION_FIELDS = frozenset(SAMPLING_FIELDS) | {
    "model", "prompt", "max_tokens", "stop", "stream", "stream_options", "logprobs", "n", "echo", "best_of",
    "suffix", "response_format", "grammar"}
ROLES = ("system", "developer", "user", "assistant", "tool")
MAX_STOP_STRINGS = 16


class ApiError(Exception):
    """An error answered as OpenAI's {"error": {...}} with an HTTP status."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.kind = kind or {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
                             413: "invalid_request_error", 429: "rate_limit_error",
                             503: "server_unavailable"}.get(status, "server_error")


def error_body(error: ApiError) -> dict:
    return {"error": {"message": error.message, "type": error.kind, "param": error.param, "code": error.code}}


@dataclass
class ChatRequest:
    messages: list[dict]
    tools: list[dict] | None
    tool_choice: object  # "auto" | "none" | "required" | {"type": "function", "function": {"name": ...}}
    enable_thinking: bool
    template_kwargs: dict
    options: dict  # keyword options for generation.make_options
    response_format: dict | None
    stream: bool = False
    include_usage: bool = False
    logprobs: bool = False


@dataclass
class CompletionRequest:
    prompt: object  # str or list of token ids
    options: dict  # a response_format or grammar is already in it, as the `grammar` option
    stream: bool = False
    include_usage: bool = False
    logprobs: int | None = None  # the legacy API's count of alternatives


def _object(body) -> dict:
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    return body


def _check_fields(body: dict, known: frozenset) -> None:
    for name in body:
        if name not in known and name not in HARMLESS_FIELDS:
            raise ApiError(400, f"unsupported field {name!r:.60}", param=name, code="unsupported_parameter")


def _check_model(body: dict, model_id: str) -> None:
    model = body.get("model")
    if model is not None and model != model_id:
        raise ApiError(404, f"the model {model!r:.80} does not exist; this server serves {model_id!r}",
                       param="model", code="model_not_found")


def _typed(body: dict, name: str, kinds, what: str):
    value = body.get(name)
    if value is not None and (not isinstance(value, kinds) or isinstance(value, bool) and bool not in kinds):
        raise ApiError(400, f"{name} must be {what}", param=name)
    return value


def _n(body: dict) -> None:
    n = _typed(body, "n", (int,), "an integer")
    if n is not None and n != 1:
        raise ApiError(400, "n must be 1: this server generates one choice per request", param="n")


def _stop(body: dict) -> list[str] | None:
    stop = body.get("stop")
    if stop is None:
        return None
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops) or len(stops) > MAX_STOP_STRINGS:
        raise ApiError(400, f"stop must be a string or a list of at most {MAX_STOP_STRINGS} strings", param="stop")
    return [s for s in stops if s] or None


def _stream_options(body: dict) -> tuple[bool, bool]:
    stream = bool(_typed(body, "stream", (bool,), "true or false"))
    options = body.get("stream_options")
    if options is not None and (not isinstance(options, dict) or not stream):
        raise ApiError(400, "stream_options must be an object, and only with stream: true", param="stream_options")
    return stream, bool((options or {}).get("include_usage"))


def _sampling(body: dict) -> dict:
    options = {}
    for name in SAMPLING_FIELDS:
        value = body.get(name)
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ApiError(400, f"{name} must be a number", param=name)
            options[name] = value
    if "top_k" in options and isinstance(options["top_k"], float) and options["top_k"].is_integer():
        options["top_k"] = int(options["top_k"])
    if "seed" in options and isinstance(options["seed"], float) and options["seed"].is_integer():
        options["seed"] = int(options["seed"])
    return options


def _max_tokens(body: dict, *names: str) -> int | None:
    value = None
    for name in names:
        given = _typed(body, name, (int,), "a positive integer")
        if given is not None:
            if given < 1:
                raise ApiError(400, f"{name} must be a positive integer", param=name)
            value = given
    return value


def _response_format(body: dict) -> dict | None:
    value = body.get("response_format")
    if value is None:
        return None
    if not isinstance(value, dict) or value.get("type") not in ("text", "json_object", "json_schema"):
        raise ApiError(400, "response_format must be {\"type\": \"text\" | \"json_object\" | \"json_schema\"}",
                       param="response_format")
    return None if value["type"] == "text" else value


def _grammar(body: dict, options: dict) -> None:
    """llama-server's `grammar` field: GBNF text, constraining the whole output."""
    grammar = _typed(body, "grammar", (str,), "GBNF grammar text")
    if grammar:
        options["grammar"] = {"gbnf": grammar}


def _completion_format(response_format: dict | None, options: dict) -> None:
    """response_format of a raw completion, as the grammar of the whole continuation."""
    if response_format is None:
        return
    if response_format["type"] == "json_object":
        options["grammar"] = {"json_schema": {"type": "object"}}
        return
    spec = response_format.get("json_schema")
    if not isinstance(spec, dict) or "schema" not in spec:
        raise ApiError(400, 'response_format json_schema needs {"json_schema": {"name": ..., "schema": {...}}}',
                       param="response_format")
    options["grammar"] = {"json_schema": spec["schema"]}


def _content_text(content, where: str):
    """A message's content as the template takes it: a string, None, or text parts joined."""
    if content is None or isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise ApiError(400, f"{where}: only text content parts are supported, got {kind!r:.40}",
                               param="messages")
            texts.append(part["text"])
        return "\n".join(texts)
    raise ApiError(400, f"{where}: content must be a string or a list of text parts", param="messages")


def _messages(body: dict) -> list[dict]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages must be a non-empty list of message objects", param="messages")
    out = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise ApiError(400, f"{where} must be an object with a role of {', '.join(ROLES)}", param="messages")
        message = dict(message)
        if message["role"] == "developer":  # OpenAI's newer name for the system role
            message["role"] = "system"
        message["content"] = _content_text(message.get("content"), where)
        if message.get("reasoning") is not None and message.get("reasoning_content") is None:
            message["reasoning_content"] = message.pop("reasoning")
        out.append(message)
    return out


def _tools(body: dict) -> list[dict] | None:
    tools = body.get("tools")
    if tools is None:
        return None
    if not isinstance(tools, list) or not all(
            isinstance(t, dict) and t.get("type", "function") == "function" and isinstance(t.get("function"), dict)
            and isinstance(t["function"].get("name"), str) for t in tools):
        raise ApiError(400, 'tools must be a list of {"type": "function", "function": {"name": ..., ...}}',
                       param="tools")
    return tools or None


def _tool_choice(body: dict, tools) -> object:
    choice = body.get("tool_choice", "auto")
    if choice in ("auto", "none", "required"):
        pass
    elif (isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("function"), dict)
          and isinstance(choice["function"].get("name"), str)):
        names = {t["function"]["name"] for t in tools or ()}
        if choice["function"]["name"] not in names:
            raise ApiError(400, f"tool_choice names {choice['function']['name']!r:.60}, which is not in tools",
                           param="tool_choice")
    else:
        raise ApiError(400, 'tool_choice must be "auto", "none", "required" or {"type": "function", '
                            '"function": {"name": ...}}', param="tool_choice")
    if choice != "auto" and choice != "none" and not tools:
        raise ApiError(400, "tool_choice requires tools", param="tool_choice")
    return choice


def _thinking(body: dict) -> tuple[bool, dict]:
    kwargs = body.get("chat_template_kwargs") or {}
    if not isinstance(kwargs, dict):
        raise ApiError(400, "chat_template_kwargs must be an object", param="chat_template_kwargs")
    kwargs = dict(kwargs)
    effort = _typed(body, "reasoning_effort", (str,), "a string")
    if effort is not None and effort not in ("none", "minimal", "low", "medium", "high"):
        raise ApiError(400, "reasoning_effort must be none, minimal, low, medium or high", param="reasoning_effort")
    thinking = effort not in (None, "none")
    if "enable_thinking" in kwargs:
        thinking = kwargs.pop("enable_thinking")
        if not isinstance(thinking, bool):
            raise ApiError(400, "chat_template_kwargs.enable_thinking must be true or false",
                           param="chat_template_kwargs")
    return thinking, kwargs


def parse_chat_request(body, model_id: str) -> ChatRequest:
    body = _object(body)
    _check_fields(body, CHAT_FIELDS)
    _check_model(body, model_id)
    _n(body)
    messages, tools = _messages(body), _tools(body)
    tool_choice = _tool_choice(body, tools)
    thinking, template_kwargs = _thinking(body)
    stream, include_usage = _stream_options(body)
    logprobs = bool(_typed(body, "logprobs", (bool,), "true or false"))
    top = _typed(body, "top_logprobs", (int,), "an integer from 0 to 20")
    if top is not None and not logprobs:
        raise ApiError(400, "top_logprobs requires logprobs: true", param="top_logprobs")
    options = _sampling(body)
    max_new = _max_tokens(body, "max_tokens", "max_completion_tokens")
    if max_new is not None:
        options["max_new_tokens"] = max_new
    stop = _stop(body)
    if stop:
        options["stop"] = stop
    if logprobs:
        options["logprobs"] = top or 0
    budget = _typed(body, "reasoning_budget", (int,), "a non-negative integer")
    if budget is not None and budget >= 0:  # llama-server: -1 means no budget
        options["reasoning_budget"] = budget
    _grammar(body, options)
    return ChatRequest(messages, tools, tool_choice, thinking, template_kwargs, options, _response_format(body),
                       stream, include_usage, logprobs)


def parse_completion_request(body, model_id: str) -> CompletionRequest:
    body = _object(body)
    _check_fields(body, COMPLETION_FIELDS)
    _check_model(body, model_id)
    _n(body)
    if body.get("echo"):
        raise ApiError(400, "echo is not supported", param="echo")
    if body.get("suffix"):
        raise ApiError(400, "suffix is not supported: EXAONE has no fill-in-the-middle mode", param="suffix")
    if body.get("best_of") not in (None, 1):
        raise ApiError(400, "best_of must be 1", param="best_of")
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]  # a batch of one prompt
    if not (isinstance(prompt, str) and prompt) and not (
            isinstance(prompt, list) and prompt and all(isinstance(i, int) and not isinstance(i, bool) for i in prompt)):
        raise ApiError(400, "prompt must be a non-empty string or a list of token ids (one prompt per request)",
                       param="prompt")
    stream, include_usage = _stream_options(body)
    logprobs = _typed(body, "logprobs", (int,), "an integer from 0 to 5")
    options = _sampling(body)
    max_new = _max_tokens(body, "max_tokens")
    options["max_new_tokens"] = 16 if max_new is None else max_new  # OpenAI's default for completions
    stop = _stop(body)
    if stop:
        options["stop"] = stop
    if logprobs is not None:
        options["logprobs"] = logprobs
    _grammar(body, options)
    _completion_format(_response_format(body), options)
    return CompletionRequest(prompt, options, stream, include_usage, logprobs)


# --- responses ----------------------------------------------------------------------------------------


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached_tokens}}


def logprob_content(entries, token_text) -> list[dict]:
    """OpenAI's logprobs.content list from generation's per-token entries ({id, logprob, top})."""
    def item(token_id, logprob):
        text = token_text(token_id)
        return {"token": text, "logprob": float(logprob), "bytes": list(text.encode("utf-8"))}

    return [{**item(e["id"], e["logprob"]), "top_logprobs": [item(i, lp) for i, lp in e["top"]]}
            for e in entries if e is not None]


def assistant_message(message: dict, reasoning_format: str) -> dict:
    """The response's message from chat.py's assistant message."""
    out = {"role": "assistant", "content": message.get("content")}
    reasoning = message.get("reasoning_content")
    if reasoning_format == "none":
        if reasoning:
            out["content"] = f"<think>\n{reasoning}\n</think>\n\n{out['content'] or ''}"
    elif reasoning:
        out[reasoning_format] = reasoning
    extra = "".join(f"<tool_call>{e['raw']}</tool_call>" for e in message.get("tool_call_errors") or ())
    if extra:  # a call that does not parse stays visible as the text the model wrote
        out["content"] = (out["content"] or "") + extra
    if message.get("tool_calls"):
        out["tool_calls"] = message["tool_calls"]
    return out


def chat_completion(completion_id: str, created: int, model_id: str, message: dict, finish_reason: str,
                    usage_: dict, logprobs: list | None) -> dict:
    return {"id": completion_id, "object": "chat.completion", "created": created, "model": model_id,
            "choices": [{"index": 0, "message": message, "logprobs": None if logprobs is None else {"content": logprobs},
                         "finish_reason": finish_reason}],
            "usage": usage_}


def chat_chunk(completion_id: str, created: int, model_id: str, delta: dict, finish_reason: str | None = None,
               logprobs: list | None = None) -> dict:
    return {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model_id,
            "choices": [{"index": 0, "delta": delta, "logprobs": None if logprobs is None else {"content": logprobs},
                         "finish_reason": finish_reason}]}


def usage_chunk(completion_id: str, created: int, model_id: str, usage_: dict, kind: str) -> dict:
    return {"id": completion_id, "object": kind, "created": created, "model": model_id, "choices": [],
            "usage": usage_}


def legacy_logprobs(entries, token_text, offset: int = 0) -> dict:
    """The completions API's logprobs object: tokens, token_logprobs, top_logprobs, text_offset."""
    tokens, token_logprobs, tops, offsets = [], [], [], []
    for e in entries:
        if e is None:
            continue
        text = token_text(e["id"])
        tokens.append(text)
        token_logprobs.append(float(e["logprob"]))
        tops.append({token_text(i): float(lp) for i, lp in e["top"]})
        offsets.append(offset)
        offset += len(text)
    return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": tops, "text_offset": offsets}


def text_completion(completion_id: str, created: int, model_id: str, text: str, finish_reason: str | None,
                    usage_: dict | None = None, logprobs: dict | None = None) -> dict:
    out = {"id": completion_id, "object": "text_completion", "created": created, "model": model_id,
           "choices": [{"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}]}
    if usage_ is not None:
        out["usage"] = usage_
    return out
