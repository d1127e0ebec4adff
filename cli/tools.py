"""`--tools FILE.py`: a Python file's public functions as tools the model can call.

`load_tools(path)` imports the file (its folder on sys.path while importing) and takes every
top-level function defined in it whose name does not start with `_`. Each becomes an
OpenAI-style tool schema -- the shape transformers' `get_json_schema` produces:
`{"type": "function", "function": {"name", "description", "parameters": {"type": "object",
"properties": {arg: {"type": ..., "description": ...}}, "required": [...]}}}` -- with types from
the type hints (str, int, float, bool, None, list[X], tuple, dict, Literal, Enum, Optional/Union)
and descriptions from the docstring (the text before `Args:`/`Returns:`/`Raises:`; arguments from
a Google-style `Args:` section or reST `:param name:` lines), written exactly as
`transformers.utils.get_json_schema` writes them -- but a missing hint or docstring, or a type
JSON cannot express, only leaves that part out instead of failing. A file that fails to import,
or has no public function, is a TinyExaoneError.

`ToolBox.call(tool_call)` runs one OpenAI-style call and always returns (text, ok): the result
as text (strings as they are, anything else as JSON) or, when the arguments are not a JSON
object, name unknown or missing parameters, or the function raises, a one-line "error: ..."
that is fed back to the model so the conversation goes on. Ctrl-C is not caught.
"""

from __future__ import annotations

import enum
import hashlib
import importlib.util
import inspect
import json
import re
import sys
import types
import typing
from pathlib import Path

from tinyexaone.errors import TinyExaoneError
from tinyexaone.signals import Terminated

SIMPLE_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean", type(None): "null",
                list: "array", tuple: "array", dict: "object"}
SECTION = re.compile(r"^\s*(Args|Returns|Raises)\s*:\s*$")
GOOGLE_ARG = re.compile(r"^(\s*)(\w+)\s*(?:\([^()]*\))?\s*:\s*(.*)$")
REST_FIELD = re.compile(r"^\s*:(param|returns?)\s*(?:[^:]*\s)?(\w*)\s*:\s*(.*)$")
CHOICES = re.compile(r"\(choices:\s*(.*?)\)\s*$", re.IGNORECASE)


def _enum_schema(values: list) -> dict:
    kinds = list(dict.fromkeys(SIMPLE_TYPES.get(type(v), "string") for v in values))
    return {"type": kinds[0] if len(kinds) == 1 else kinds, "enum": values}


def type_schema(hint) -> dict:
    """JSON schema of a Python type hint, as transformers' get_json_schema writes it; a hint it
    cannot express (a custom class, typing.Any) gives {} (any value) instead of an error."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is None:
        if inspect.isclass(hint) and issubclass(hint, enum.Enum):
            return _enum_schema([member.value for member in hint])
        return {"type": SIMPLE_TYPES[hint]} if hint in SIMPLE_TYPES else {}
    if origin in (typing.Union, types.UnionType):
        options = [type_schema(a) for a in args if a is not type(None)]
        if len(options) == 1:
            schema = options[0]
        elif all(set(o) == {"type"} and isinstance(o["type"], str) for o in options):
            names = sorted({o["type"] for o in options})
            schema = {"type": names[0] if len(names) == 1 else names}
        else:
            schema = {"anyOf": options}
        if type(None) in args:
            schema["nullable"] = True
        return schema
    if origin is typing.Literal:
        return _enum_schema(list(args))
    if origin in (list, set, frozenset):
        return {"type": "array", "items": type_schema(args[0])} if args else {"type": "array"}
    if origin is tuple:
        if not args:
            return {"type": "array"}
        if Ellipsis in args or len(args) == 1:  # variable length: every item has the first type
            return {"type": "array", "items": type_schema(args[0])}
        return {"type": "array", "prefixItems": [type_schema(a) for a in args]}
    if origin is dict:
        if len(args) == 2:
            return {"type": "object", "additionalProperties": type_schema(args[1])}
        return {"type": "object"}
    return {}


def parse_docstring(doc: str | None) -> tuple[str, dict[str, str], str | None]:
    """(description, {argument: description}, returns description) from a Google-style (as
    transformers reads it) or reST docstring; descriptions of arguments are joined into one line."""
    lines = inspect.cleandoc(doc if isinstance(doc, str) else "").splitlines()
    summary: list[str] = []
    arguments: dict[str, list[str]] = {}
    returns: list[str] = []
    section, current, argument_indent = None, None, 0
    for line in lines:
        heading = SECTION.match(line)
        rest = REST_FIELD.match(line)
        if heading:
            section, current = heading.group(1).lower(), None
        elif rest:
            section = "returns" if rest.group(1).startswith("return") else "rest"
            current = rest.group(2)
            (returns if section == "returns" else arguments.setdefault(current, [])).append(rest.group(3))
        elif section is None:
            summary.append(line)
        elif section == "returns":
            returns.append(line)
        elif section == "args":
            argument = GOOGLE_ARG.match(line)
            if argument and (current is None or len(argument.group(1)) <= argument_indent):
                argument_indent, current = len(argument.group(1)), argument.group(2)
                arguments[current] = [argument.group(3)]
            elif current is not None:
                arguments[current].append(line)
        elif section == "rest" and current is not None:
            arguments[current].append(line)
    described = {name: " ".join(" ".join(parts).split()) for name, parts in arguments.items()}
    return "\n".join(summary).strip(), described, "\n".join(returns).strip() or None


def _hint_schema(hint) -> dict:
    """type_schema, or {} for an annotation that is not a type at all (a list, a number, ...)."""
    try:
        return dict(type_schema(hint))
    except Exception:  # e.g. `x: [int]`: unhashable, no origin; the parameter only loses its type
        return {}


def function_schema(name: str, function) -> dict:
    """The OpenAI-style tool schema of one function (transformers' get_json_schema layout)."""
    description, argument_docs, returns_doc = parse_docstring(function.__doc__)
    try:
        hints = typing.get_type_hints(function)
    except Exception:  # a hint that does not evaluate (a typo, a missing import) only loses its type
        hints = {}
    properties, required = {}, []
    for parameter in inspect.signature(function).parameters.values():
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        schema = _hint_schema(hints[parameter.name]) if parameter.name in hints else {}
        text = argument_docs.get(parameter.name)
        if text:
            choices = CHOICES.search(text)
            if choices:
                try:
                    schema["enum"] = json.loads(choices.group(1))
                    text = text[: choices.start()].strip()
                except json.JSONDecodeError:
                    pass
            schema["description"] = text
        properties[parameter.name] = schema
        if parameter.default is parameter.empty:
            required.append(parameter.name)
    parameters = {"type": "object", "properties": properties}
    if required:
        parameters["required"] = required
    spec = {"name": name}
    if description:
        spec["description"] = description
    spec["parameters"] = parameters
    if "return" in hints:
        spec["return"] = _hint_schema(hints["return"])
        if returns_doc:
            spec["return"]["description"] = returns_doc
    return {"type": "function", "function": spec}


def _import_file(path: Path):
    digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
    module_name = f"tinyexaone_tools_{re.sub(r'[^0-9A-Za-z_]', '_', path.stem)}_{digest}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise TinyExaoneError(f"{path}: cannot import the tools file (not a Python source file)")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    folder = str(path.resolve().parent)
    sys.path.insert(0, folder)
    try:
        spec.loader.exec_module(module)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # SyntaxError, ImportError, SystemExit, anything the file raises
        del sys.modules[module_name]
        message = " ".join(str(exc).split()) or "no message"
        raise TinyExaoneError(f"{path}: cannot import the tools file: {type(exc).__name__}: {message}") from None
    finally:
        if folder in sys.path:  # the file may have edited sys.path itself
            sys.path.remove(folder)
    return module


class ToolBox:
    """The tools of one file: `schemas` for the chat template, `call()` to run one."""

    def __init__(self, path: Path, functions: dict):
        self.path = path
        self.functions = functions  # name -> function
        self.schemas = [function_schema(name, f) for name, f in functions.items()]

    def call(self, tool_call: dict) -> tuple[str, bool]:
        """Run one OpenAI-style tool call -> (result text, succeeded)."""
        spec = tool_call.get("function", {}) if isinstance(tool_call, dict) else {}
        name = spec.get("name")
        function = self.functions.get(name)
        if function is None:
            return f"error: unknown tool {name!r} (available: {', '.join(self.functions)})", False
        try:
            arguments = spec.get("arguments") or {}
            arguments = json.loads(arguments) if isinstance(arguments, str) else arguments
        except (json.JSONDecodeError, RecursionError) as exc:
            return f"error: the arguments are not valid JSON ({type(exc).__name__})", False
        if not isinstance(arguments, dict):
            return "error: the arguments must be a JSON object", False
        try:
            inspect.signature(function).bind(**arguments)
        except TypeError as exc:
            return f"error: {name}() {exc}", False
        try:
            result = function(**arguments)
        except (KeyboardInterrupt, Terminated):  # Ctrl-C or SIGTERM/SIGHUP stop the tool and the chat
            raise
        except BaseException as exc:  # the tool's own failure, even its sys.exit(), is reported to the model
            message = " ".join(str(exc).split())
            return f"error: {name}() raised {type(exc).__name__}" + (f": {message}" if message else ""), False
        if isinstance(result, str):
            return result, True
        try:
            return json.dumps(result, ensure_ascii=False, default=str), True
        except (TypeError, ValueError, RecursionError) as exc:
            return f"error: {name}() returned something that is not JSON ({type(exc).__name__})", False


def load_tools(path) -> ToolBox:
    """The public top-level functions of the Python file `path` as a ToolBox."""
    path = Path(path)
    if not path.is_file():
        raise TinyExaoneError(f"{path}: no such tools file")
    module = _import_file(path)
    functions = {
        name: value for name, value in vars(module).items()
        if not name.startswith("_") and inspect.isfunction(value) and value.__module__ == module.__name__
    }
    if not functions:
        raise TinyExaoneError(f"{path}: defines no public top-level function to use as a tool")
    return ToolBox(path, functions)
