"""`--tools FILE.py`: which functions become tools, their JSON schemas, and running them.

Schemas are compared with transformers' `get_json_schema` (the reference) on functions it
accepts; our reader only differs by being lenient where transformers raises (missing hints or
docstrings). Running a tool never raises: bad arguments and exceptions come back as "error: ..."
text for the model.
"""

import enum
import json
import textwrap
from typing import Literal, Optional, Union

import pytest

from tinyexaone import TinyExaoneError
from tinyexaone.cli.tools import load_tools, parse_docstring, function_schema


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
