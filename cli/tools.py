"""`--tools FILE.py`: a Python file's public functions as tools the model can call.

`load_tools(path)` imports the file (its folder on sys.path while importing) and takes every
top-level function defined in it whose name does not start with `_`. Each becomes an
OpenAI-style tool schema -- the shape transformers' `get_json_schema` produces:
`{"type": "function", "function": {"name", "description", "parameters": {"type": "object",
"properties": {arg: {"type": ..., "description": ...}}, "required": [...]}}}` -- with types from
the type hints (str, int, float, bool, None, list[X], tuple, dict, Literal, Enum, Optional/Union)
and descriptions from the docstring (the text before its first section; arguments from a
Google-style `Args:` section or reST `:param name:` lines). A file that fails to import, or has
no public function, is a TinyExaoneError.

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

SIMPLE_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean", type(None): "null"}
SECTION = re.compile(r"^\s*(Args|Arguments|Parameters|Params|Returns?|Yields?|Raises|Examples?|Notes?|See Also)\s*:\s*$",
                     re.IGNORECASE)
GOOGLE_ARG = re.compile(r"^\s*\*{0,2}(\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$")
REST_PARAM = re.compile(r"^\s*:param\s+(?:[^:]*\s)?(\w+)\s*:\s*(.*)$")


def type_schema(hint) -> dict:
    """JSON schema of a Python type hint ({} when it says nothing JSON can express)."""
    if hint in SIMPLE_TYPES:
        return {"type": SIMPLE_TYPES[hint]}
    if inspect.isclass(hint) and issubclass(hint, enum.Enum):
        values = [member.value for member in hint]
        return {**_values_type(values), "enum": values}
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Literal:
        return {**_values_type(list(args)), "enum": list(args)}
    if origin in (typing.Union, types.UnionType):
        options = [type_schema(a) for a in args]
        kinds = [o.get("type") for o in options]
        if all(isinstance(k, str) for k in kinds) and all(set(o) == {"type"} for o in options if o.get("type") != "null"):
            return {"type": kinds if len(kinds) > 1 else kinds[0]}
        non_null = [o for o in options if o.get("type") != "null"]
        return non_null[0] if len(non_null) == 1 else {}
    if hint in (list, tuple, set, frozenset) or origin in (list, tuple, set, frozenset):
        items = [a for a in args if a is not Ellipsis]
        schema = {"type": "array"}
        if len(set(items)) == 1:
            schema["items"] = type_schema(items[0])
        return schema
    if hint is dict or origin is dict:
        return {"type": "object"}
    return {}


def _values_type(values) -> dict:
    kinds = {SIMPLE_TYPES.get(type(v)) for v in values}
    return {"type": kinds.pop()} if len(kinds) == 1 and None not in kinds else {}


def parse_docstring(doc: str | None) -> tuple[str, dict[str, str]]:
    """(description, {argument: description}) from a Google-style or reST docstring."""
    lines = inspect.cleandoc(doc or "").splitlines()
    summary: list[str] = []
    arguments: dict[str, list[str]] = {}
    section, current = None, None
    arguments_indent = 0
    for line in lines:
        heading = SECTION.match(line)
        if heading:
            section, current = heading.group(1).lower(), None
            continue
        rest = REST_PARAM.match(line)
        if rest:
            section, current = "rest", rest.group(1)
            arguments[current] = [rest.group(2).strip()]
            continue
        if section is None:
            summary.append(line)
        elif section in ("args", "arguments", "parameters", "params"):
            argument = GOOGLE_ARG.match(line)
            indent = len(line) - len(line.lstrip())
            if argument and (current is None or indent <= arguments_indent):
                arguments_indent = indent
                current = argument.group(1)
                arguments[current] = [argument.group(2).strip()]
            elif current is not None and line.strip():
                arguments[current].append(line.strip())
        elif section == "rest" and current is not None and line.strip() and not line.lstrip().startswith(":"):
            arguments[current].append(line.strip())
    description = " ".join(" ".join(summary).split())
    return description, {name: " ".join(" ".join(parts).split()) for name, parts in arguments.items()}


def function_schema(name: str, function) -> dict:
    """The OpenAI-style tool schema of one function."""
    description, argument_docs = parse_docstring(function.__doc__)
    try:
        hints = typing.get_type_hints(function)
    except Exception:  # a hint that does not evaluate (a typo, a missing import) only loses its type
        hints = {}
    properties, required = {}, []
    for parameter in inspect.signature(function).parameters.values():
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        schema = type_schema(hints[parameter.name]) if parameter.name in hints else {}
        if parameter.name in argument_docs and argument_docs[parameter.name]:
            schema["description"] = argument_docs[parameter.name]
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
    return {"type": "function", "function": spec}


def _import_file(path: Path):
    digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
    module_name = f"tinyexaone_tools_{re.sub(r'[^0-9A-Za-z_]', '_', path.stem)}_{digest}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise TinyExaoneError(f"{path}: cannot import the tools file (not a Python source file)")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    sys.path.insert(0, str(path.resolve().parent))
    try:
        spec.loader.exec_module(module)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # SyntaxError, ImportError, SystemExit, anything the file raises
        del sys.modules[module_name]
        message = " ".join(str(exc).split()) or "no message"
        raise TinyExaoneError(f"{path}: cannot import the tools file: {type(exc).__name__}: {message}") from None
    finally:
        sys.path.remove(str(path.resolve().parent))
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
        except json.JSONDecodeError as exc:
            return f"error: the arguments are not valid JSON ({exc})", False
        if not isinstance(arguments, dict):
            return "error: the arguments must be a JSON object", False
        try:
            inspect.signature(function).bind(**arguments)
        except TypeError as exc:
            return f"error: {name}() {exc}", False
        try:
            result = function(**arguments)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # the tool's own failure is reported to the model, not fatal
            message = " ".join(str(exc).split())
            return f"error: {name}() raised {type(exc).__name__}" + (f": {message}" if message else ""), False
        if isinstance(result, str):
            return result, True
        try:
            return json.dumps(result, ensure_ascii=False, default=str), True
        except (TypeError, ValueError) as exc:
            return f"error: {name}() returned something that is not JSON ({exc})", False


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
