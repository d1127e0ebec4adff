"""Constrained decoding: grammars, JSON schemas and tool calls compiled by llguidance, applied as token masks.

The options, checked before anything is generated (each failure is one TinyExaoneError line):
`grammar_option(value)` takes the `grammar=` option -- a Lark grammar as text (GBNF text is
converted), or one of {"lark": text}, {"gbnf": text}, {"regex": text}, {"json_schema": schema};
`response_format_option(value)` the OpenAI chat option {"type": "text"} (None: no constraint),
{"type": "json_object"} or {"type": "json_schema", "json_schema": {"name", "schema", ...}};
`tool_choice_option(value)` "auto", "none", "required" or {"type": "function", "function":
{"name": N}}. Each grammar is validated by llguidance into a `Grammar`, the text llguidance
runs. JSON from a schema is one line, with at most one space between its tokens (outlines' rule:
a small model given free whitespace can spend its tokens on it); a schema's own "x-guidance"
entry (llguidance's JSON options) overrides that.

`tool_call_grammar(tokenizer, tools, ...)` is the grammar of EXAONE's tool calls exactly as its
chat template writes them and `parsing.parse_tool_call` reads them:
`<tool_call>{"name": "N", "arguments": ARGS}</tool_call>`, with `<tool_call>` and `</tool_call>`
as their single added tokens, N one of the declared tools and ARGS matching that tool's
`parameters` schema (compact JSON with ", " and ": " as the template's `tojson` writes it; no
argument the schema does not name unless it sets "additionalProperties" itself, as llama.cpp
does; each schema is compiled on its own, so its `$ref`s resolve). `lazy=True` gives only what follows
`<tool_call>` (the body and `</tool_call>`), for a call the model opened itself; otherwise one
call (a named tool) or one or more separated by newlines, optionally as an alternative to a
content grammar.

`Constraint(tokenizer, grammar)` is one llguidance matcher over the tokenizer's whole vocabulary
(llguidance's tokenizer is built from the tokenizer.json text once per Tokenizer, ~1 s for
EXAONE's 102,400 tokens; its added tokens are single tokens there): `mask(logits)` sets every
token the grammar forbids next to -inf (a TinyExaoneError when it forbids all, or has failed),
`consume(token)` advances it, `consume_text(text)` advances it over text already written,
`finished` says nothing but end-of-sequence can follow. `TokenBan(ids)` masks fixed tokens and
needs no llguidance. llguidance is the optional extra `tinyexaone[grammar]`; without it every
grammar option is an error naming the extra.
"""

from __future__ import annotations

import json
import threading
import weakref
from dataclasses import dataclass

import numpy as np

from .errors import TinyExaoneError

EXTRA_HINT = "pip install 'tinyexaone[grammar]'"
CONTENT_JSON = {"whitespace_pattern": r"[ ]?"}  # between JSON tokens at most one space (outlines' default rule)
# tool-call arguments as the template's tojson writes them; unknown keywords (formats) do not fail a tool
TOOL_ARGUMENTS_JSON = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": ", "lenient": True}
CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
GRAMMAR_KINDS = ("lark", "gbnf", "regex", "json_schema")
TOOL_CHOICES = ("auto", "none", "required")
MAX_MESSAGE = 300  # characters of a llguidance error shown


def llguidance():
    """The llguidance module, or a TinyExaoneError naming the extra that installs it."""
    try:
        import llguidance as module
    except ImportError:
        raise TinyExaoneError(f"grammars and JSON schemas need the llguidance package: {EXTRA_HINT}") from None
    return module


def one_line(message, first_line_only: bool = False) -> str:
    """llguidance's (often multi-line) message as one short line (or its first line only: a
    matcher's error goes on with a dump of the parser state)."""
    text = str(message).strip()
    text = " ".join((text.split("\n", 1)[0] if first_line_only else text).split())
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "..."


@dataclass(frozen=True)
class Grammar:
    text: str  # what llguidance runs: Lark text or its JSON grammar list
    what: str  # for messages: "grammar", "response_format schema", ...

    def entries(self) -> list[dict]:
        """The grammar as llguidance's list of named grammars (the first is the start)."""
        if self.text.lstrip().startswith("{"):
            return json.loads(self.text)["grammars"]
        return [{"lark_grammar": self.text}]


def checked(text: str, what: str) -> Grammar:
    """A Grammar once llguidance accepts `text` (errors, not warnings, are refused)."""
    failed, messages = llguidance().LLMatcher.validate_grammar_with_warnings(text)
    if failed:
        raise TinyExaoneError(f"invalid {what}: {one_line(messages[0] if messages else 'rejected by llguidance')}")
    return Grammar(text, what)


def json_schema_grammar(schema, what: str, options: dict = CONTENT_JSON) -> Grammar:
    """The grammar of JSON matching `schema` (a dict); `options` are llguidance's JSON settings,
    which the schema's own "x-guidance" entry overrides."""
    if not isinstance(schema, dict):
        raise TinyExaoneError(f"invalid {what}: a JSON schema must be a JSON object, got {type(schema).__name__}")
    try:
        text = llguidance().LLMatcher.grammar_from_json_schema(schema, defaults=options)
    except (ValueError, TypeError, RecursionError) as exc:
        raise TinyExaoneError(f"invalid {what}: {one_line(exc)}") from None
    return checked(text, what)


def grammar_option(value) -> Grammar | None:
    """The `grammar=` option: Lark (or GBNF) text, or a one-key dict naming its kind."""
    if value is None:
        return None
    kind, text = ("lark", value) if isinstance(value, str) else (None, None)
    if isinstance(value, dict) and len(value) == 1:
        kind, text = next(iter(value.items()))
    if kind not in GRAMMAR_KINDS:
        raise TinyExaoneError("grammar must be Lark text or one of {'lark': text}, {'gbnf': text}, {'regex': text}, "
                              f"{{'json_schema': schema}}, got {value!r:.80}")
    if kind == "json_schema":
        return json_schema_grammar(text, "grammar (json_schema)")
    if not isinstance(text, str) or not text.strip():
        raise TinyExaoneError(f"grammar ({kind}) must be non-empty text")
    module = llguidance()
    try:
        serialized = module.grammar_from("grammar" if kind in ("lark", "gbnf") else "regex", text)
    except (ValueError, RecursionError) as exc:
        raise TinyExaoneError(f"invalid grammar ({kind}): {one_line(exc)}") from None
    return checked(serialized, f"grammar ({kind})")


def response_format_option(value) -> Grammar | None:
    """The OpenAI `response_format` of chat: None for {"type": "text"}, else the JSON grammar."""
    if value is None:
        return None
    kind = value.get("type") if isinstance(value, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return json_schema_grammar({"type": "object"}, "response_format")
    if kind == "json_schema":
        spec = value.get("json_schema")
        if not isinstance(spec, dict) or "schema" not in spec:
            raise TinyExaoneError('response_format json_schema needs {"json_schema": {"name": ..., "schema": {...}}}')
        return json_schema_grammar(spec["schema"], f"response_format schema {spec.get('name', '')!r:.40}")
    raise TinyExaoneError('response_format must be {"type": "text"}, {"type": "json_object"} or '
                          f'{{"type": "json_schema", "json_schema": {{...}}}}, got {value!r:.80}')


def tool_choice_option(value) -> str | None:
    """tool_choice as "auto", "none", "required" or "function:NAME" (None when not given)."""
    if value is None or value in TOOL_CHOICES:
        return value
    function = value.get("function") if isinstance(value, dict) and value.get("type") == "function" else None
    name = function.get("name") if isinstance(function, dict) else None
    if not isinstance(name, str) or not name:
        raise TinyExaoneError('tool_choice must be "auto", "none", "required" or {"type": "function", "function": '
                              f'{{"name": ...}}}}, got {value!r:.80}')
    return "function:" + name


# --- tool calls ------------------------------------------------------------------------------------------


def tool_parameters(tools) -> dict[str, dict]:
    """name -> parameters schema of each declared tool (OpenAI-style or bare; none given: any object)."""
    specs = {}
    for tool in tools or ():
        spec = tool.get("function", tool) if isinstance(tool, dict) else None
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            continue
        parameters = spec.get("parameters")
        if parameters is None:
            parameters = {"type": "object"}
        if not isinstance(parameters, dict):
            raise TinyExaoneError(f"tool {spec['name']!r:.40}: parameters must be a JSON schema object")
        specs[spec["name"]] = parameters
    return specs


def marker(tokenizer, text: str) -> str:
    """A Lark item for `text`: its single added token when the tokenizer has one, else the string."""
    token_id = tokenizer.added_tokens.get(text)
    return f"<[{token_id}]>" if token_id is not None else json.dumps(text)


def tool_call_grammar(tokenizer, tools: dict[str, dict], several: bool = True, lazy: bool = False,
                      alternative: Grammar | None = None) -> Grammar:
    """See the module docstring; `tools` is tool_parameters() of the tools a call may name."""
    if not tools:
        raise TinyExaoneError("a tool call grammar needs at least one declared tool")
    names = list(tools)
    rules = [f"body: {' | '.join(f'body_{i}' for i in range(len(names)))}"]
    grammars = []
    for i, name in enumerate(names):
        head = json.dumps({"name": name}, ensure_ascii=False)[:-1] + ', "arguments": '
        rules.append(f'body_{i}: {json.dumps(head, ensure_ascii=False)} @tool_arguments_{i} "}}"')
        schema = dict(tools[name])
        if "properties" in schema and "additionalProperties" not in schema:
            schema["additionalProperties"] = False  # the function's own parameters only (llama.cpp's default too)
        schema["x-guidance"] = {**TOOL_ARGUMENTS_JSON, **(schema.get("x-guidance") or {})}
        grammars.append({"name": f"tool_arguments_{i}", "json_schema": schema})
    open_call, close_call = marker(tokenizer, CALL_OPEN), marker(tokenizer, CALL_CLOSE)
    if lazy:
        start = [f"start: body {close_call}"]
    else:
        start = [f"start: {'@content_format | ' if alternative is not None else ''}calls",
                 'calls: call ("\\n" call)*' if several else "calls: call",
                 f"call: {open_call} body {close_call}"]
    if alternative is not None:
        first, *rest = alternative.entries()
        grammars += [{**first, "name": "content_format"}, *rest]
    text = json.dumps({"grammars": [{"lark_grammar": "\n".join(start + rules) + "\n"}, *grammars]}, ensure_ascii=False)
    return checked(text, "tool parameters schema")


# --- applying a grammar ---------------------------------------------------------------------------------

_ll_tokenizers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_ll_tokenizers_lock = threading.Lock()


def ll_tokenizer(tokenizer):
    """llguidance's tokenizer for one of ours, built from its tokenizer.json text on first use."""
    with _ll_tokenizers_lock:
        built = _ll_tokenizers.get(tokenizer)
        if built is None:
            built = llguidance().LLTokenizer(tokenizer.backend.to_str(), n_vocab=tokenizer.vocab_size,
                                             eos_token=list(tokenizer.eos_token_ids))
            _ll_tokenizers[tokenizer] = built
        return built


class Constraint:
    """One grammar applied token by token; see the module docstring."""

    def __init__(self, tokenizer, grammar: Grammar):
        module = llguidance()
        self.tokenizer = ll_tokenizer(tokenizer)
        self.grammar = grammar
        self.matcher = module.LLMatcher(self.tokenizer, grammar.text, log_level=0)
        if self.matcher.is_error():
            raise TinyExaoneError(f"invalid {grammar.what}: {one_line(self.matcher.get_error())}")
        self.vocab_size = tokenizer.vocab_size
        self.bits = np.zeros((self.vocab_size + 31) // 32, np.int32)  # [ceil(vocab / 32)] one bit per token
        self.taken = 0  # tokens consumed

    def mask(self, logits: np.ndarray) -> np.ndarray:
        """`logits` [vocab] with every token the grammar forbids next at -inf."""
        self.matcher.unsafe_compute_mask_ptr(self.bits.ctypes.data, self.bits.nbytes)
        allowed = np.unpackbits(self.bits.view(np.uint8), bitorder="little")[: self.vocab_size].view(bool)  # [vocab]
        if self.matcher.is_error() or not allowed.any():
            reason = one_line(self.matcher.get_error(), first_line_only=True) or "no token is allowed"
            raise TinyExaoneError(f"the {self.grammar.what} allows no next token after {self.taken} constrained "
                                  f"tokens ({reason})")
        return np.where(allowed, logits, -np.inf)

    def consume(self, token: int) -> None:
        if not self.matcher.consume_token(int(token)):
            raise TinyExaoneError(f"the {self.grammar.what} rejected token {token} after {self.taken} constrained "
                                  f"tokens ({one_line(self.matcher.get_error(), first_line_only=True)})")
        self.taken += 1

    def consume_text(self, text: str) -> bool:
        """Advance over text already generated; False (nothing consumed) when the grammar rejects it."""
        ids = self.tokenizer.tokenize_str(text) if text else []
        accepted = self.matcher.try_consume_tokens(ids)
        if accepted < len(ids):
            self.matcher.rollback(accepted)
            return False
        self.taken += len(ids)
        return True

    @property
    def finished(self) -> bool:
        return self.matcher.is_stopped()


class TokenBan:
    """Forbids fixed token ids (e.g. `<tool_call>` with tool_choice "none"); the Constraint interface."""

    def __init__(self, ids):
        self.ids = np.asarray(sorted(ids), dtype=np.int64)

    def mask(self, logits: np.ndarray) -> np.ndarray:
        out = np.array(logits)
        out[self.ids] = -np.inf
        return out

    def consume(self, token: int) -> None:
        pass

    finished = False
