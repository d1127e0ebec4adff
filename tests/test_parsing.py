"""Streaming reasoning / content / tool-call splitting at every possible split point, and tool-call JSON parsing."""

import json
import random
from pathlib import Path

import pytest

from tinyexaone import load_tokenizer
from tinyexaone.parsing import OutputSplitter, parse_tool_call, starts_in_reasoning, tool_names

FIXTURE = Path(__file__).parent / "fixtures" / "exaone-4.0-1.2b"

CALL_A = '{"name": "get_weather", "arguments": {"city": "서울", "unit": "celsius"}}'
CALL_B = ' \n {"name": "get_time", "arguments": {}}  \n'

# (name, starts in reasoning, generated text, expected reasoning, content, tool-call bodies)
CASES = [
    ("thinking", True, "Let me think <about> it.\n</think>\n\nThe answer is 42.", "Let me think <about> it.",
     "The answer is 42.", []),
    ("thinking_then_tools", True, f"Need weather.\n</think>\n\n<tool_call>{CALL_A}</tool_call>\n<tool_call>{CALL_B}"
     "</tool_call>", "Need weather.", "", [CALL_A, CALL_B]),
    ("no_thinking_text_and_tool", False, f"Checking now.\n<tool_call>{CALL_A}</tool_call>", "", "Checking now.", [CALL_A]),
    ("model_opens_think_itself", False, "<think>\nhmm </thin k\n</think>\n\n한국어 답변 </", "hmm </thin k",
     "한국어 답변 </", []),
    ("stray_close_marker_dropped", False, "Answer</think> goes on", "", "Answer goes on", []),
    ("content_around_tool_call", False, f"Before\n<tool_call>{CALL_A}</tool_call>\nAfter <tool", "",
     "Before\n\nAfter <tool", [CALL_A]),
    ("whitespace_only", True, "  \n</think>\n\n  \n", "", "", []),
    ("angle_brackets_everywhere", True, "a<b <<think> </th</think>< <tool <tool_call>x</tool_call><",
     "a<b <<think> </th", "< <tool <", ["x"]),
]


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(FIXTURE)


def run_splitter(in_reasoning, pieces):
    splitter = OutputSplitter(in_reasoning)
    events = []
    for piece in pieces:
        events += splitter.feed(piece)
    events += splitter.finish()
    reasoning = "".join(v for k, v in events if k == "reasoning")
    content = "".join(v for k, v in events if k == "content")
    calls = [v for k, v in events if k == "tool_call"]
    return reasoning, content, calls, events


@pytest.mark.parametrize("name,in_reasoning,text,reasoning,content,calls", CASES, ids=[c[0] for c in CASES])
def test_every_two_piece_split(name, in_reasoning, text, reasoning, content, calls):
    for cut in range(len(text) + 1):
        got = run_splitter(in_reasoning, [text[:cut], text[cut:]])[:3]
        assert got == (reasoning, content, calls), f"split at {cut}: {text[:cut]!r} | {text[cut:]!r}"


@pytest.mark.parametrize("name,in_reasoning,text,reasoning,content,calls", CASES, ids=[c[0] for c in CASES])
def test_character_by_character_and_random_splits(name, in_reasoning, text, reasoning, content, calls):
    assert run_splitter(in_reasoning, list(text))[:3] == (reasoning, content, calls)
    rng = random.Random(name)
    for _ in range(50):
        cuts = sorted(rng.sample(range(len(text) + 1), k=min(5, len(text) + 1)))
        pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]
        assert run_splitter(in_reasoning, pieces)[:3] == (reasoning, content, calls), pieces


@pytest.mark.parametrize("name,in_reasoning,text,reasoning,content,calls", CASES, ids=[c[0] for c in CASES])
def test_token_by_token_with_the_real_tokenizer(tok, name, in_reasoning, text, reasoning, content, calls):
    ids = tok.encode(text, add_special_tokens=False)
    stream = tok.detokenizer()
    pieces = [stream.add(i) for i in ids] + [stream.flush()]
    got_reasoning, got_content, got_calls, events = run_splitter(in_reasoning, pieces)
    assert (got_reasoning, got_content, got_calls) == (reasoning, content, calls)
    never_inside = {"reasoning": ("</think>",), "content": ("<think>", "</think>", "<tool_call>", "</tool_call>")}
    for kind, value in events:
        assert not any(marker in value for marker in never_inside.get(kind, ()))


def test_deltas_are_emitted_early_not_only_at_finish():
    splitter = OutputSplitter(in_reasoning=True)
    assert splitter.feed("step one") == [("reasoning", "step one")]
    assert splitter.feed(" and\n</th") == [("reasoning", " and")]  # "\n" held (may be trailing), "</th" held
    assert splitter.feed("ink>\n\nFinal") == [("content", "Final")]
    assert splitter.state == "content"


def test_unterminated_tool_call_is_reported():
    splitter = OutputSplitter(in_reasoning=False)
    events = splitter.feed('ok <tool_call>{"name": "f", "argu')
    events += splitter.finish()
    assert events == [("content", "ok"), ("tool_call_unterminated", '{"name": "f", "argu')]
    assert "not closed" in parse_tool_call('{"name": "f"}', None, terminated=False)["error"]


@pytest.mark.parametrize("prompt,expected", [
    ("[|user|]\nhi[|endofturn|]\n[|assistant|]\n<think>\n", True),
    ("[|user|]\nhi[|endofturn|]\n[|assistant|]\n<think>\n\n</think>\n\n", False),
    ("[|assistant|]\n<think>\n\n</think>\n\nold[|endofturn|]\n[|user|]\nq[|endofturn|]\n[|assistant|]\n<think>\n", True),
    ("plain prompt", False),
])
def test_starting_state_comes_from_the_prompt(prompt, expected):
    assert starts_in_reasoning(prompt) is expected


TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}, {"name": "get_time"}]


def test_tool_names_from_openai_and_bare_tools():
    assert tool_names(TOOLS) == {"get_weather", "get_time"}
    assert tool_names(None) is None and tool_names([]) is None


@pytest.mark.parametrize("body,name,arguments", [
    (CALL_A, "get_weather", {"city": "서울", "unit": "celsius"}),
    (CALL_B, "get_time", {}),
    ('{"name": "get_time", "parameters": {"tz": "KST"}}', "get_time", {"tz": "KST"}),
    ('{"name": "get_weather", "arguments": "{\\"city\\": \\"Paris\\"}"}', "get_weather", {"city": "Paris"}),
    ('{"name": "get_weather", "arguments": "Paris"}', "get_weather", "Paris"),
    ('{"name": "get_time"}', "get_time", {}),
    ('  {"name": "get_time", "arguments": {"a": [1, 2]}} trailing junk}', "get_time", {"a": [1, 2]}),
])
def test_valid_tool_calls_become_openai_calls(body, name, arguments):
    call = parse_tool_call(body, tool_names(TOOLS))
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"]["name"] == name
    assert isinstance(call["function"]["arguments"], str)
    assert json.loads(call["function"]["arguments"]) == arguments


@pytest.mark.parametrize("body,message", [
    ('{"name": "get_weather", "arguments": {"city": }', "malformed tool call JSON"),
    ("not json at all", "malformed tool call JSON"),
    ("[1, 2]", 'string "name"'),
    ('{"arguments": {}}', 'string "name"'),
    ('{"name": "launch_rockets", "arguments": {}}', "unknown tool 'launch_rockets'"),
])
def test_bad_tool_calls_become_error_entries(body, message):
    entry = parse_tool_call(body, tool_names(TOOLS))
    assert message in entry["error"]
    assert entry["raw"] == body


def test_any_name_is_accepted_when_no_tools_were_declared():
    assert parse_tool_call('{"name": "anything", "arguments": {}}', None)["function"]["name"] == "anything"


def test_deeply_nested_tool_calls_are_error_entries_not_exceptions():
    deep = '{"name": "f", "arguments": ' + "[" * 100000 + "]" * 100000 + "}"
    assert "error" in parse_tool_call(deep, {"f"})
    deep_string = json.dumps({"name": "f", "arguments": "[" * 100000 + "]" * 100000})
    entry = parse_tool_call(deep_string, {"f"})  # a JSON string that would decode too deep stays a string
    assert "error" not in entry and json.loads(entry["function"]["arguments"]).startswith("[[[")
