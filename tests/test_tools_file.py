"""`--tools FILE.py`: which functions become tools, their JSON schemas, and running them.

Schemas are compared with transformers' `get_json_schema` (the reference) on functions it
accepts; our reader only differs by being lenient where transformers raises (missing hints or
docstrings). Running a tool never raises: bad arguments and exceptions come back as "error: ..."
text for the model.
"""

import enum
import json
import sys
import textwrap
import time
from typing import Literal, Optional, Union

import pytest

from tinyexaone import TinyExaoneError
from tinyexaone.cli.tools import load_tools, parse_docstring, function_schema
from tinyexaone.signals import Terminated, sigterm_raises


class Color(enum.Enum):
    RED = "red"
    GREEN = "green"


def add(a: int, b: int) -> int:
    """Add two integers.

    Args:
        a: The first number.
        b: The second number.
    """
    return a + b


def weather(city: str, unit: Literal["c", "f"] = "c", days: Optional[int] = None, tags: list[str] = None,
            extra: dict[str, float] = None, ratio: float = 1.0, flag: bool = False, mix: Union[int, str] = 1,
            color: Color = Color.RED, pair: tuple[int, str] = (1, "a"), maybe: int | None = None) -> str:
    """Get the current weather
    in a city.

    Args:
        city: The name of the city,
            for example Seoul.
        unit (str): The unit. (choices: ["c", "f"])
        days: How many days.
        tags: Some tags.
        extra: Extra numbers.
        ratio: Ratio.
        flag: A flag.
        mix: Mixed.
        color: A color.
        pair: A pair.
        maybe: Perhaps a number.

    Returns:
        The weather, as text.
    """
    return "sunny"


def nothing(x: float) -> None:
    """Does nothing.

    Args:
        x: Ignored.

    Raises:
        ValueError: never.
    """


@pytest.mark.parametrize("function", [add, weather, nothing])
def test_schema_matches_transformers(function):
    from transformers.utils import get_json_schema

    ours = function_schema(function.__name__, function)
    assert ours == get_json_schema(function)
    # key order matters too: the chat template renders the schema with tojson
    assert json.dumps(ours) == json.dumps(get_json_schema(function))


def test_lenient_where_transformers_raises():
    def bare(x, y: "NoSuchType" = 2, *args, **kwargs):  # noqa: F821
        pass

    schema = function_schema("bare", bare)
    assert schema == {"type": "function", "function": {"name": "bare", "parameters": {
        "type": "object", "properties": {"x": {}, "y": {}}, "required": ["x"]}}}

    def variable(xs: tuple[int, ...], anything: object) -> list:
        """Variable.

        :param xs: the numbers
        :param anything: whatever
            you like
        :returns: a list
        """

    schema = function_schema("variable", variable)["function"]
    assert schema["description"] == "Variable."
    assert schema["parameters"]["properties"] == {
        "xs": {"type": "array", "items": {"type": "integer"}, "description": "the numbers"},
        "anything": {"description": "whatever you like"},
    }
    assert schema["return"] == {"type": "array", "description": "a list"}


def test_docstring_sections():
    description, arguments, returns = parse_docstring("""Summary line.

        More text.

        Args:
            a (int): First,
                continued.
            b: Second.
        Returns:
            Something.
        """)
    assert description == "Summary line.\n\nMore text."
    assert arguments == {"a": "First, continued.", "b": "Second."}
    assert returns == "Something."


def write(tmp_path, source, name="tools.py"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(source))
    return path


def test_public_top_level_functions_only(tmp_path):
    write(tmp_path, """
        def helper_value():
            return 41
    """, name="helper.py")
    path = write(tmp_path, """
        import os
        from os.path import join
        from helper import helper_value

        LIMIT = 3

        def answer() -> int:
            '''The answer.'''
            return helper_value() + 1

        def _private():
            pass

        class Thing:
            def method(self):
                pass

        square = lambda x: x * x
    """)
    box = load_tools(path)
    # imported functions, private names, classes and methods are not tools; a lambda defined in the file is
    assert sorted(box.functions) == ["answer", "square"]
    assert [s["function"]["name"] for s in box.schemas] == list(box.functions)
    call = {"id": "c1", "type": "function", "function": {"name": "answer", "arguments": "{}"}}
    assert box.call(call) == ("42", True)


def call(name, arguments):
    return {"id": "c", "type": "function",
            "function": {"name": name, "arguments": arguments if isinstance(arguments, str) else json.dumps(arguments)}}


def test_calls_and_their_errors(tmp_path):
    box = load_tools(write(tmp_path, """
        def add(a: int, b: int) -> int:
            return a + b

        def boom(message: str):
            raise RuntimeError(message + "\\nsecond line")

        def table(n: int):
            return {"n": n, "squares": [i * i for i in range(n)], "name": "서울"}

        def opaque():
            return object()

        def quits():
            raise SystemExit(3)
    """))
    assert box.call(call("add", {"a": 2, "b": 3})) == ("5", True)
    assert box.call(call("table", {"n": 3})) == ('{"n": 3, "squares": [0, 1, 4], "name": "서울"}', True)
    text, ok = box.call(call("boom", {"message": "bad"}))
    assert not ok and text == "error: boom() raised RuntimeError: bad second line"
    text, ok = box.call(call("quits", {}))  # even SystemExit from a tool must not end the chat
    assert not ok and text.startswith("error: quits() raised SystemExit")
    text, ok = box.call(call("add", {"a": 1}))
    assert not ok and "missing a required argument: 'b'" in text
    text, ok = box.call(call("add", {"a": 1, "b": 2, "c": 3}))
    assert not ok and "unexpected keyword argument 'c'" in text
    text, ok = box.call(call("add", "{not json"))
    assert not ok and text.startswith("error: the arguments are not valid JSON")
    assert box.call(call("add", "[1, 2]")) == ("error: the arguments must be a JSON object", False)
    text, ok = box.call(call("nope", {}))
    assert not ok and "unknown tool 'nope'" in text
    text, ok = box.call(call("opaque", {}))
    assert ok and text.startswith('"<object object at')  # not JSON-able: shown through str()


@pytest.mark.parametrize("source,message", [
    ("def broken(:\n    pass\n", "SyntaxError"),
    ("import no_such_module_xyz\n", "ModuleNotFoundError: No module named 'no_such_module_xyz'"),
    ("raise ValueError('at import')\n", "ValueError: at import"),
    ("import sys\nsys.exit(4)\n", "SystemExit: 4"),
    ("X = 1\n", "defines no public top-level function"),
])
def test_files_that_cannot_be_tools(tmp_path, source, message):
    path = write(tmp_path, source)
    with pytest.raises(TinyExaoneError, match=message.replace("(", r"\(").replace(")", r"\)")) as info:
        load_tools(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_missing_tools_file(tmp_path):
    with pytest.raises(TinyExaoneError, match="no such tools file"):
        load_tools(tmp_path / "absent.py")


def test_sigterm_during_a_tool_call_stops_it(tmp_path):
    """SIGTERM (and SIGHUP) end a running tool and reach the chat as Terminated, unlike the tool's
    own failures, which go back to the model."""
    box = load_tools(write(tmp_path, """
        import os, signal, time

        def hang(signal_name: str):
            os.kill(os.getpid(), getattr(signal, signal_name))
            time.sleep(30)
            return "never"
    """))
    for name, code in (("SIGTERM", 143), ("SIGHUP", 129)):
        started = time.monotonic()
        with sigterm_raises(), pytest.raises(Terminated) as info:
            box.call(call("hang", {"signal_name": name}))
        assert info.value.code == code and time.monotonic() - started < 10


@pytest.mark.parametrize("source", [
    "def f(x: [int]):\n    return 1\n",  # a list as an annotation
    "def f(x: 3):\n    return 1\n",
    "def f(x: int):\n    return 1\nf.__doc__ = 5\n",  # a docstring that is not text
    "import sys\nsys.path.clear()\ndef f(x: int):\n    return 1\n",  # a file that edits sys.path
    "import sys\nsys.path.insert(0, '/nonexistent')\ndef f(x: int):\n    return 1\n",
])
def test_odd_but_valid_tools_files_load(tmp_path, source):
    path_before = list(sys.path)
    try:
        box = load_tools(write(tmp_path, source))
        assert [schema["function"]["name"] for schema in box.schemas] == ["f"]
        assert box.call(call("f", {"x": 1})) == ("1", True)
    finally:
        sys.path[:] = path_before


def test_deep_json_in_tool_calls_and_results(tmp_path):
    box = load_tools(write(tmp_path, """
        def nest(n: int):
            value = []
            for _ in range(n):
                value = [value]
            return value
    """))
    text, ok = box.call(call("nest", "[" * 100000 + "]" * 100000))
    assert not ok and "not valid JSON" in text
    text, ok = box.call(call("nest", {"n": 100000}))
    assert not ok and "not JSON" in text
