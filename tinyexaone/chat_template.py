"""Rendering a model's Jinja chat template exactly as transformers does, inside a sandbox.

`compile_chat_template(source)` builds the template in jinja2's `ImmutableSandboxedEnvironment`
set up like transformers' `apply_chat_template`: trim_blocks, lstrip_blocks, the loop-controls
extension (`{% break %}`, `{% continue %}`), a `tojson` filter that is `json.dumps` with
`ensure_ascii=False` and no HTML escaping, and the globals `raise_exception`, `strftime_now`,
`dict` and a `namespace` that refuses underscore names. Unlike plain jinja2, touching an unsafe
attribute (`''.__class__`) raises at once instead of rendering as an empty string.

`render_chat_template(template, messages, ...)` prepares the inputs as transformers 5 does --
message keys whose value is None are dropped, reasoning given as `reasoning_content`, `thinking`
or `reasoning` is visible under the first two names, and everything is copied into plain JSON
types -- then renders. Every failure (bad input, `raise_exception`, a sandbox violation, a
syntax error) becomes one `TinyExaoneError` line.
"""

from __future__ import annotations

import json
from datetime import datetime

import jinja2
import jinja2.ext
import jinja2.utils
from jinja2.exceptions import SecurityError, TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from .errors import TinyExaoneError

REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


class _StrictSandbox(ImmutableSandboxedEnvironment):
    def unsafe_undefined(self, obj, attribute):
        raise SecurityError(f"access to attribute {attribute!r} of {type(obj).__name__!r} object is unsafe")


class _Namespace(jinja2.utils.Namespace):
    """jinja2's `namespace()` that refuses underscore-prefixed attribute names."""

    def __init__(*args, **kwargs):  # same signature trick as jinja2's Namespace
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _check_namespace_name(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name, value):
        _check_namespace_name(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)


def _check_namespace_name(name) -> None:
    if isinstance(name, str) and name.startswith("_"):
        raise SecurityError(f"chat templates cannot set underscore-prefixed namespace attributes ({name!r})")


def _raise_exception(message):
    raise TemplateError(message)


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt):
    return datetime.now().strftime(fmt)


class _DictFactory:
    """`dict(...)` for templates without exposing the `dict` type itself."""

    def __call__(self, *args, **kwargs):
        return dict(*args, **kwargs)

    def fromkeys(self, *args, **kwargs):
        return dict.fromkeys(*args, **kwargs)


def compile_chat_template(source: str) -> jinja2.Template:
    """Compile template text in the sandbox; a syntax error becomes TinyExaoneError."""
    env = _StrictSandbox(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["dict"] = _DictFactory()
    env.globals["namespace"] = _Namespace
    try:
        return env.from_string(source)
    except TemplateError as e:
        raise TinyExaoneError(f"chat template does not compile: {_one_line(e)}") from None


def _plain(value, where: str):
    """A deep copy of `value` made only of JSON types (str, int, float, bool, None, dict, list)."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, dict):
        return {_plain(k, where): _plain(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    raise TinyExaoneError(f"{where}: {type(value).__name__} is not JSON data (use str, number, bool, None, dict, list)")


def prepare_messages(messages) -> list[dict]:
    """Messages as plain dicts, None-valued keys dropped, reasoning visible under both names."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise TinyExaoneError("messages must be a non-empty list of {'role': ..., 'content': ...} dicts")
    prepared = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise TinyExaoneError(f"messages[{i}] is a {type(message).__name__}, not a dict")
        message = _plain({k: v for k, v in message.items() if v is not None}, f"messages[{i}]")
        reasoning = next((message[key] for key in REASONING_FIELDS if key in message), None)
        if reasoning is not None:
            message = {"thinking": reasoning, **message, "reasoning_content": reasoning}
        prepared.append(message)
    return prepared


def render_chat_template(
    template: jinja2.Template,
    messages,
    tools=None,
    add_generation_prompt: bool = True,
    special_tokens: dict | None = None,
    **kwargs,
) -> str:
    """Render a conversation; `special_tokens` (bos_token, eos_token, ...) are template variables
    that `kwargs` may override."""
    chat = prepare_messages(messages)
    if tools is not None:
        if not isinstance(tools, (list, tuple)) or not all(isinstance(tool, dict) for tool in tools):
            raise TinyExaoneError("tools must be a list of JSON-schema dicts")
        tools = _plain(tools, "tools")
    variables = {**(special_tokens or {}), **_plain(kwargs, "chat template argument")}
    try:
        return template.render(messages=chat, tools=tools, documents=None,
                               add_generation_prompt=add_generation_prompt, **variables)
    except SecurityError as e:
        raise TinyExaoneError(f"chat template tried something the sandbox forbids: {_one_line(e)}") from None
    except TemplateError as e:
        raise TinyExaoneError(f"chat template error: {_one_line(e)}") from None
    except (TypeError, ValueError, AttributeError, KeyError, IndexError) as e:
        raise TinyExaoneError(f"chat template failed: {type(e).__name__}: {_one_line(e)}") from None


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split()) or type(error).__name__
