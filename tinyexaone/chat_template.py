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
syntax error, a runtime error of the template's own arithmetic or recursion) becomes one
`TinyExaoneError` line.

A template is untrusted code, so each render runs on a budget: at most RENDER_SECONDS of time
and `max_chars` characters of output (the caller's bound: what could still fit its context).
The budget is checked at every call, attribute or item access, arithmetic operator, range step,
namespace assignment and output chunk; operations that could allocate far beyond it in one step
are refused before they run (`*` and `+` on sequences, `**` on large integers, printf widths,
the width of `center`/`indent`/`tojson` and the like, `lipsum`), and constants are not folded
at compile time (`{{ 7**(10**9) }}` would otherwise be computed while compiling).
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
from datetime import datetime

import jinja2
import jinja2.ext
import jinja2.utils
from jinja2.exceptions import SecurityError, TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment, safe_range

from .errors import ContextOverflowError, TinyExaoneError

REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")
RENDER_SECONDS = 10.0
DEFAULT_MAX_CHARS = 64 << 20
MAX_INT_BITS = 64 * 1024  # the largest integer a template may compute by `**`
PRINTF_WIDTH = re.compile(r"%[-+ #0]*(\d*)(?:\.(\d+))?")


class TemplateBudgetError(TemplateError):
    """The template went over its time or size budget."""


class _OutputTooLarge(TemplateBudgetError):
    def __init__(self, size: int, limit: int):
        super().__init__(f"the chat template's output passed {limit:,} characters")
        self.size, self.limit = size, limit


class _Budget(threading.local):
    """The running render's deadline and output bound (one per thread)."""

    deadline = math.inf
    max_chars = DEFAULT_MAX_CHARS

    def tick(self) -> None:
        if time.monotonic() > self.deadline:
            raise TemplateBudgetError(f"the chat template ran for more than {RENDER_SECONDS:.0f} s")

    def check_size(self, size: int, what: str) -> None:
        self.tick()
        if size > self.max_chars:
            raise TemplateBudgetError(f"the chat template would build {what} of {size:,} items "
                                      f"(at most {self.max_chars:,})")


_BUDGET = _Budget()


def _size(value) -> int:
    return len(value) if isinstance(value, (str, bytes, list, tuple, dict)) else 0


class _StrictSandbox(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def unsafe_undefined(self, obj, attribute):
        raise SecurityError(f"access to attribute {attribute!r} of {type(obj).__name__!r} object is unsafe")

    def call_binop(self, context, operator, left, right):
        _BUDGET.tick()
        if operator == "*":
            for sequence, count in ((left, right), (right, left)):
                if _size(sequence) and isinstance(count, int):
                    _BUDGET.check_size(_size(sequence) * max(count, 0), "a repeated sequence")
        elif operator == "+" and _size(left) and _size(right):
            _BUDGET.check_size(_size(left) + _size(right), "a joined sequence")
        elif operator == "**" and isinstance(left, int) and isinstance(right, int) and abs(left) > 1 and right > 0:
            if right * math.log2(abs(left)) > MAX_INT_BITS:
                raise TemplateBudgetError(f"the chat template would compute an integer of over {MAX_INT_BITS:,} bits")
        elif operator == "%" and isinstance(left, str):
            for width, precision in PRINTF_WIDTH.findall(left):
                _BUDGET.check_size(int(width or 0) + int(precision or 0), "a formatted field")
        return super().call_binop(context, operator, left, right)

    def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 (jinja2's signature)
        _BUDGET.tick()
        if isinstance(getattr(__obj, "__self__", None), (str, list, tuple)):  # 'a'.center(10**10)
            sizes = [a for a in (*args, *kwargs.values()) if isinstance(a, int)]
            _BUDGET.check_size(max(sizes, default=0), "a method result")
        return super().call(__context, __obj, *args, **kwargs)

    def getattr(self, obj, attribute):
        _BUDGET.tick()
        if isinstance(obj, str) and attribute in ("format", "format_map"):  # '{:>999999999}'.format(1)
            _BUDGET.check_size(max((int(d) for d in re.findall(r"\d+", obj)), default=0), "a formatted field")
        return super().getattr(obj, attribute)

    def getitem(self, obj, argument):
        _BUDGET.tick()
        return super().getitem(obj, argument)


class _BudgetRange:
    """`range(...)` for templates: jinja2's bounded range, ticking the budget at every step."""

    def __init__(self, *args):
        self._range = safe_range(*args)

    def __iter__(self):
        for value in self._range:
            _BUDGET.tick()
            yield value

    def __len__(self):
        return len(self._range)

    def __getitem__(self, index):
        return self._range[index]


def _sized_filter(original, size_of):
    """A filter that first checks the size its arguments ask for against the budget."""
    def checked(*args, **kwargs):
        _BUDGET.check_size(size_of(*args, **kwargs), "a filter result")
        return original(*args, **kwargs)
    return checked


def _width_arg(position: int, name: str):
    def size_of(*args, **kwargs):
        width = kwargs.get(name, args[position] if len(args) > position else 0)
        return width if isinstance(width, int) else 0
    return size_of


def _lipsum_size(n=5, html=True, min=20, max=100):  # noqa: A002 (jinja2's parameter names)
    return (n if isinstance(n, int) else 0) * (max if isinstance(max, int) else 0)


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
        _BUDGET.check_size(_size(value), "a namespace value")
        jinja2.utils.Namespace.__setitem__(self, name, value)


def _check_namespace_name(name) -> None:
    if isinstance(name, str) and name.startswith("_"):
        raise SecurityError(f"chat templates cannot set underscore-prefixed namespace attributes ({name!r})")


def _raise_exception(message):
    raise TemplateError(message)


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    if isinstance(indent, int):
        _BUDGET.check_size(indent, "a tojson indent")
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
    env = _StrictSandbox(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols], optimized=False)
    env.filters["tojson"] = _tojson
    for name, position in (("center", 1), ("indent", 1), ("wordwrap", 1), ("truncate", 1)):
        env.filters[name] = _sized_filter(env.filters[name], _width_arg(position, "width" if name != "truncate"
                                                                               else "length"))
    env.globals["range"] = _BudgetRange
    env.globals["lipsum"] = _sized_filter(env.globals["lipsum"], _lipsum_size)
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["dict"] = _DictFactory()
    env.globals["namespace"] = _Namespace
    try:
        return env.from_string(source)
    except (TemplateError, RecursionError, MemoryError, ValueError, OverflowError) as e:
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


def _plain_or_error(value, where: str):
    try:
        return _plain(value, where)
    except RecursionError:
        raise TinyExaoneError(f"{where}: nested too deeply") from None


def prepare_messages(messages) -> list[dict]:
    """Messages as plain dicts, None-valued keys dropped, reasoning visible under both names."""
    try:
        return _prepare_messages(messages)
    except RecursionError:
        raise TinyExaoneError("messages are nested too deeply") from None


def _prepare_messages(messages) -> list[dict]:
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
    max_chars: int = DEFAULT_MAX_CHARS,
    **kwargs,
) -> str:
    """Render a conversation; `special_tokens` (bos_token, eos_token, ...) are template variables
    that `kwargs` may override. At most `max_chars` characters and RENDER_SECONDS of work."""
    chat = prepare_messages(messages)
    if tools is not None:
        if not isinstance(tools, (list, tuple)) or not all(isinstance(tool, dict) for tool in tools):
            raise TinyExaoneError("tools must be a list of JSON-schema dicts")
        tools = _plain_or_error(tools, "tools")
    variables = {**(special_tokens or {}), **_plain_or_error(kwargs, "chat template argument")}
    _BUDGET.deadline, _BUDGET.max_chars = time.monotonic() + RENDER_SECONDS, max_chars
    try:
        chunks, size = [], 0
        for chunk in template.generate(messages=chat, tools=tools, documents=None,
                                       add_generation_prompt=add_generation_prompt, **variables):
            size += len(chunk)
            _BUDGET.tick()
            if size > max_chars:
                raise _OutputTooLarge(size, max_chars)
            chunks.append(chunk)
        return "".join(chunks)
    except _OutputTooLarge as e:
        raise ContextOverflowError(f"the conversation does not fit the context ({e})", e.size, e.limit) from None
    except TemplateBudgetError as e:
        raise TinyExaoneError(f"chat template over its budget: {_one_line(e)}") from None
    except SecurityError as e:
        raise TinyExaoneError(f"chat template tried something the sandbox forbids: {_one_line(e)}") from None
    except TemplateError as e:
        raise TinyExaoneError(f"chat template error: {_one_line(e)}") from None
    except (TypeError, ValueError, AttributeError, KeyError, IndexError, ArithmeticError, RecursionError,
            MemoryError) as e:
        raise TinyExaoneError(f"chat template failed: {type(e).__name__}: {_one_line(e)[:200]}") from None
    finally:
        _BUDGET.deadline, _BUDGET.max_chars = math.inf, DEFAULT_MAX_CHARS


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split()) or type(error).__name__
