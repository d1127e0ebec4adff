"""Structured output: JSON schemas, grammars and tool calls that always parse (grammar.py, chat.py).

On the shipped demo model (its int8 compact file, for speed): 100 greedy `json_schema` generations over seeded random schemas
(nested objects, enums, arrays, bounded integers and numbers, strings, booleans, null), with
thinking off and on, all parse and validate with the `jsonschema` package; `tool_choice`
"required" and a named tool always give parseable calls of a declared tool whose arguments
validate against its `parameters`; raw generation follows a regex, a Lark and a GBNF grammar.
With the real EXAONE tokenizer (tests/fixtures): the mask covers all 102,400 tokens and
`<tool_call>`, `</tool_call>`, `</think>` and `[|endofturn|]` are single tokens, never spelled in
pieces. On a scripted stand-in model (test_generation.py's) the lazy "auto" grammar turns a call
of an unknown tool into a call of a declared one, and "none" keeps `<tool_call>` out. Bad input:
an invalid schema or grammar is one error before any forward pass; a schema the model cannot
finish within max_new_tokens ends with "length"; a grammar that rejects every token is an
error, not a hang. Logprobs under a grammar are the log-softmax of the masked logits.
"""

import json
import random
import re
from pathlib import Path

import jsonschema
import numba
import numpy as np
import pytest

import tinyexaone
from tinyexaone import TinyExaoneError, chat, load_tokenizer
from tinyexaone.grammar import (Constraint, grammar_option, json_schema_grammar, response_format_option,
                                tool_call_grammar, tool_parameters)

from test_generation import scripted, scripted_model

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "models" / "exaone4-demo"
FIXTURE = ROOT / "tests" / "fixtures" / "exaone-4.0-1.2b"
WORDS = ["name", "city", "color", "size", "count", "price", "tags", "owner", "items", "level", "ok", "note"]
PROMPTS = ["Describe it as JSON.", "What is 3 + 4?", "Hello!", "What is the weather in Seoul?", "Who are you?",
           "¿Cuánto es 7 + 8?", "안녕하세요!"]
TOOLS = [
    {"type": "function", "function": {"name": "add", "parameters": {
        "type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"]}}},
    {"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string", "maxLength": 20},
                                         "unit": {"enum": ["celsius", "fahrenheit"]}},
        "required": ["city", "unit"], "additionalProperties": False}}},
    {"type": "function", "function": {"name": "multiply", "parameters": {
        "type": "object", "properties": {"a": {"$ref": "#/$defs/small"}, "b": {"$ref": "#/$defs/small"}},
        "required": ["a", "b"], "$defs": {"small": {"type": "integer", "minimum": 0, "maximum": 999}}}}},
]


@pytest.fixture(scope="module", autouse=True)
def one_numba_thread():
    """One Numba thread: on a busy machine parallel launches cost more than the demo model's small matrices."""
    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    yield
    numba.set_num_threads(threads)


@pytest.fixture(scope="module")
def demo():
    return tinyexaone.load(DEMO / "exaone4-demo-int8.tx")  # the demo model's int8 file: its BF16 prefill is slower


@pytest.fixture(scope="module")
def exaone():
    return load_tokenizer(FIXTURE)


def leaf(rng: random.Random) -> dict:
    kind = rng.choice(["enum", "integer", "number", "string", "boolean", "array", "null"])
    if kind == "enum":
        return {"enum": rng.sample(["red", "green", "blue", "small", "large", "yes", 1, 2, None], rng.randint(2, 4))}
    if kind == "integer":
        low = rng.randint(-50, 50)
        return {"type": "integer", "minimum": low, "maximum": low + rng.randint(0, 200)}
    if kind == "number":  # (multipleOf keeps the fraction short: an unbounded one lets the toy model run on)
        low = rng.choice([0, -1, 10, 0.5])
        return {"type": "number", "minimum": low, "maximum": low + rng.choice([1, 5, 100]),
                "multipleOf": rng.choice([0.5, 0.25])}
    if kind == "string":
        return {"type": "string", "minLength": rng.randint(0, 2), "maxLength": rng.randint(3, 8)}
    if kind == "boolean":
        return {"type": "boolean"}
    if kind == "null":
        return {"type": "null"}
    items = rng.choice([{"type": "integer", "minimum": 0, "maximum": 9}, {"enum": ["a", "b", "c"]},
                        {"type": "string", "maxLength": 4}, {"type": "boolean"}])
    return {"type": "array", "items": items, "minItems": rng.randint(0, 1), "maxItems": rng.randint(1, 3)}


def random_schema(rng: random.Random, depth: int = 0) -> dict:
    keys = rng.sample(WORDS, rng.randint(1, 3))
    properties = {key: random_schema(rng, depth + 1) if depth < 1 and rng.random() < 0.3 else leaf(rng) for key in keys}
    return {"type": "object", "properties": properties, "required": [k for k in keys if rng.random() < 0.8],
            "additionalProperties": False}


def test_100_json_schema_generations_all_validate(demo):
    rng = random.Random(2024)
    failures = []
    for i in range(100):
        schema = random_schema(rng)
        thinking = i % 10 == 9
        reply = demo.chat([{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}], enable_thinking=thinking,
                          temperature=0, max_new_tokens=150,
                          response_format={"type": "json_schema", "json_schema": {"name": f"s{i}", "schema": schema}})
        try:
            jsonschema.validate(json.loads(reply.message["content"]), schema)
        except (TypeError, ValueError, jsonschema.ValidationError) as exc:
            failures.append((i, reply.finish_reason, reply.message["content"], str(exc)[:80]))
        if thinking:
            assert reply.message["reasoning_content"]  # the reasoning itself is free text
    assert not failures, failures[:3]


def test_json_object_gives_an_object_and_text_changes_nothing(demo, exaone):
    for reply, expected in [('{"k": [1, 2]}', '{"k": [1, 2]}'), ("[1, 2]", "{")]:
        model = scripted_model(exaone, scripted(exaone, reply, after="\n</think>\n\n"))
        content = model.chat([{"role": "user", "content": "hi"}], temperature=0, max_new_tokens=12,
                             response_format={"type": "json_object"}).message["content"]
        assert content == expected if expected != "{" else content.startswith("{")  # never an array
    plain = demo.chat([{"role": "user", "content": "Hello!"}], temperature=0, max_new_tokens=20)
    text = demo.chat([{"role": "user", "content": "Hello!"}], temperature=0, max_new_tokens=20,
                     response_format={"type": "text"})
    assert text.message["content"] == plain.message["content"] and text.tokens == plain.tokens


def check_call(call, allowed):
    function = call["function"]
    assert function["name"] in allowed
    schema = tool_parameters(TOOLS)[function["name"]]
    jsonschema.validate(json.loads(function["arguments"]), schema)


@pytest.mark.parametrize("thinking", [False, True])
def test_tool_choice_required_always_calls_a_declared_tool(demo, thinking):
    prompts = PROMPTS + ["Add 12 and 30.", "Multiply 6 by 7.", "Weather in Madrid?", "서울 날씨 알려줘"]
    for i, prompt in enumerate(prompts):
        tools = TOOLS if i % 2 == 0 else TOOLS[1:]
        reply = demo.chat([{"role": "user", "content": prompt}], tools=tools, tool_choice="required",
                          enable_thinking=thinking, temperature=0.7, seed=i, max_new_tokens=90,
                          reasoning_budget=16 if thinking else None)  # (the toy never learnt to reason about tools)
        assert reply.finish_reason == "tool_calls", reply
        assert reply.message["tool_call_errors"] == [] and reply.message["tool_calls"]
        for call in reply.message["tool_calls"]:
            check_call(call, {t["function"]["name"] for t in tools})


def test_a_named_tool_choice_calls_that_tool_once(demo):
    for prompt in ("What is 3 + 4?", "Hello!"):
        reply = demo.chat([{"role": "user", "content": prompt}], tools=TOOLS, temperature=0, max_new_tokens=60,
                          tool_choice={"type": "function", "function": {"name": "get_weather"}})
        assert reply.finish_reason == "tool_calls"
        assert len(reply.message["tool_calls"]) == 1
        check_call(reply.message["tool_calls"][0], {"get_weather"})


def test_auto_with_a_response_format_gives_a_call_or_the_format(demo):
    schema = {"type": "object", "properties": {"answer": {"type": "integer", "minimum": 0, "maximum": 999}},
              "required": ["answer"], "additionalProperties": False}
    for prompt in ("What is 12 + 30?", "Hello!"):
        reply = demo.chat([{"role": "user", "content": prompt}], tools=TOOLS, temperature=0, max_new_tokens=60,
                          response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": schema}})
        if reply.message["tool_calls"]:
            for call in reply.message["tool_calls"]:
                check_call(call, {"add", "get_weather", "multiply"})
        else:
            jsonschema.validate(json.loads(reply.message["content"]), schema)


def test_raw_generation_follows_regex_lark_and_gbnf(demo):
    for grammar, pattern in [({"regex": r"[0-9]{1,3} (apples|pears)"}, r"[0-9]{1,3} (apples|pears)"),
                             ('start: "yes" | "no"', r"yes|no"),
                             ({"gbnf": 'root ::= "(" [a-c]{1,5} ")"'}, r"\([a-c]{1,5}\)")]:
        result = demo.generate("I have", grammar=grammar, temperature=0.9, seed=1, max_new_tokens=30)
        assert result.finish_reason == "stop" and re.fullmatch(pattern, result.text), result


def test_logprobs_under_a_grammar_are_of_the_masked_logits(demo):
    result = demo.generate("The answer is", grammar={"regex": "(yes|no|maybe)"}, temperature=0, logprobs=20)
    assert result.text in ("yes", "no", "maybe")
    for entry in result.logprobs[:-1]:  # every allowed token is listed: their probabilities add up to 1
        assert len(entry["top"]) < 20
        assert sum(np.exp(value) for _, value in entry["top"]) == pytest.approx(1.0, abs=1e-6)


# --- the real EXAONE tokenizer ----------------------------------------------------------------------------


def allowed_ids(constraint, vocab):
    return set(np.flatnonzero(np.isfinite(constraint.mask(np.zeros(vocab, np.float32)))).tolist())


def test_the_mask_covers_the_whole_exaone_vocabulary(exaone):
    assert exaone.vocab_size == 102_400
    ids = {text: exaone.added_tokens[text] for text in ("<tool_call>", "</tool_call>", "</think>", "[|endofturn|]")}
    calls = Constraint(exaone, tool_call_grammar(exaone, tool_parameters(TOOLS)))
    assert calls.mask(np.zeros(exaone.vocab_size, np.float32)).shape == (102_400,)
    assert allowed_ids(calls, exaone.vocab_size) == {ids["<tool_call>"]}  # one token, never "<" "tool" ...
    calls.consume(ids["<tool_call>"])
    assert calls.consume_text('{"name": "add", "arguments": {"a": 1, "b": 2}}')
    assert allowed_ids(calls, exaone.vocab_size) == {ids["</tool_call>"]}
    calls.consume(ids["</tool_call>"])
    after = allowed_ids(calls, exaone.vocab_size)
    assert ids["[|endofturn|]"] in after and exaone.encode("\n", add_special_tokens=False)[0] in after
    assert ids["</think>"] not in after and ids["<tool_call>"] not in after


def test_added_tokens_are_never_text_inside_json(exaone):
    constraint = Constraint(exaone, json_schema_grammar({"type": "object", "properties": {"s": {"type": "string"}}},
                                                        "test schema"))
    assert constraint.consume_text('{"s": "free text ')
    inside_string = allowed_ids(constraint, exaone.vocab_size)
    assert len(inside_string) > 90_000  # (almost) every text token may continue a string
    for text in ("<tool_call>", "</tool_call>", "</think>", "[|endofturn|]", "[|user|]"):
        assert exaone.added_tokens[text] not in inside_string
    assert not constraint.consume_text('"}x')  # a rejected text consumes nothing
    assert constraint.consume_text('"}')
    assert allowed_ids(constraint, exaone.vocab_size) == {exaone.added_tokens["[|endofturn|]"]}
    assert constraint.finished


def test_lazy_auto_grammar_turns_an_unknown_tool_into_a_declared_one(exaone, monkeypatch):
    reply = '<tool_call>{"name": "search_web", "arguments": {"city": "Seoul"}}</tool_call>'
    model = scripted_model(exaone, scripted(exaone, reply, after="\n</think>\n\n"))
    constrained = model.chat([{"role": "user", "content": "weather?"}], tools=TOOLS[1:], temperature=0,
                             max_new_tokens=60)
    assert constrained.message["tool_call_errors"] == []
    assert [call["function"]["name"] for call in constrained.message["tool_calls"]] == ["get_weather"]
    check_call(constrained.message["tool_calls"][0], {"get_weather"})
    monkeypatch.setattr(chat, "_has_llguidance", lambda: False)  # without llguidance: the old unconstrained call
    free = model.chat([{"role": "user", "content": "weather?"}], tools=TOOLS[1:], temperature=0, max_new_tokens=60)
    assert free.message["tool_calls"] == [] and "unknown tool" in free.message["tool_call_errors"][0]["error"]


def test_free_text_stays_free_in_auto_mode(exaone):
    text = "Plain words, {not json} and <b>tags</b>."
    model = scripted_model(exaone, scripted(exaone, text, after="\n</think>\n\n"))
    reply = model.chat([{"role": "user", "content": "hi"}], tools=TOOLS, temperature=0, max_new_tokens=60)
    assert reply.message["content"] == text and reply.finish_reason == "stop"


def test_tool_choice_none_keeps_tool_call_out(exaone):
    reply = '<tool_call>{"name": "add", "arguments": {"a": 1, "b": 2}}</tool_call>'
    model = scripted_model(exaone, scripted(exaone, reply, after="\n</think>\n\n"))
    free = model.chat([{"role": "user", "content": "1+2?"}], tools=TOOLS, temperature=0, max_new_tokens=30)
    assert free.finish_reason == "tool_calls"
    none = model.chat([{"role": "user", "content": "1+2?"}], tools=TOOLS, tool_choice="none", temperature=0,
                      max_new_tokens=30)
    assert none.message["tool_calls"] == [] and exaone.added_tokens["<tool_call>"] not in none.tokens


def test_thinking_answer_is_constrained_after_the_reasoning_only(exaone):
    reasoning = "I think {{{ not JSON"
    model = scripted_model(exaone, scripted(exaone, reasoning + "\n</think>\n\n" + '{"a": 7}', after="<think>\n"))
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    reply = model.chat([{"role": "user", "content": "a?"}], enable_thinking=True, temperature=0, max_new_tokens=40,
                       response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": schema}})
    assert reply.message["reasoning_content"] == reasoning and json.loads(reply.message["content"]) == {"a": 7}


# --- bad input ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("options, message", [
    (dict(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "strin"}}}),
     "invalid response_format schema 'x': Invalid type: strin"),
    (dict(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {
        "type": "integer", "minimum": 5, "maximum": 3}}}), "minimum (5) is greater than maximum (3)"),
    (dict(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"$ref": "#/nope"}}}),
     "does not exist"),
    (dict(response_format={"type": "json_schema", "json_schema": {"schema": [1]}}), "must be a JSON object"),
    (dict(response_format={"type": "json_schema"}), "needs"),
    (dict(response_format={"type": "xml"}), "response_format must be"),
    (dict(grammar="start: foo"), 'unknown name: "foo"'),
    (dict(grammar={"regex": "(("}), "unclosed group"),
    (dict(grammar={"python": "x"}), "grammar must be"),
    (dict(grammar=""), "non-empty"),
    (dict(grammar="start: /a/", response_format={"type": "json_object"}), "not both"),
    (dict(tool_choice="always"), "tool_choice must be"),
    (dict(tool_choice="required"), "needs declared tools"),
    (dict(tool_choice={"type": "function", "function": {"name": "nope"}}, tools=TOOLS), "not a declared tool"),
    (dict(tool_choice="required", tools=[{"type": "function", "function": {
        "name": "f", "parameters": {"type": "object", "properties": {"a": {"type": "strin"}}}}}]), "Invalid type"),
])
def test_invalid_schemas_and_grammars_fail_before_any_forward(exaone, options, message):
    model = scripted_model(exaone, scripted(exaone, "hi", after="\n\n"))
    with pytest.raises(TinyExaoneError, match=re.escape(message)) as info:
        model.chat([{"role": "user", "content": "hi"}], temperature=0, **options)
    assert "\n" not in str(info.value)
    assert model.model.forward_calls == []


def test_raw_generation_refuses_chat_only_options(exaone):
    model = scripted_model(exaone, scripted(exaone, "hi", after="x"))
    for options in (dict(response_format={"type": "json_object"}), dict(tool_choice="none")):
        with pytest.raises(TinyExaoneError, match="applies to chat"):
            model.generate("x", **options)


def test_an_unfinishable_schema_ends_with_length_and_the_text_so_far(demo):
    schema = {"type": "object", "properties": {"s": {"type": "string", "minLength": 200}}, "required": ["s"]}
    reply = demo.chat([{"role": "user", "content": "Hi"}], temperature=0, max_new_tokens=8,
                      response_format={"type": "json_schema", "json_schema": {"name": "long", "schema": schema}})
    assert reply.finish_reason == "length" and reply.usage["completion_tokens"] == 8
    assert reply.message["content"].startswith('{"s":')


def test_a_grammar_that_rejects_every_token_is_an_error_not_a_hang(demo):
    with pytest.raises(TinyExaoneError, match="allows no next token after 1 constrained tokens"):
        demo.generate("x", grammar='start: "a" /[^\\s\\S]/', max_new_tokens=50)


def test_option_parsers_return_none_for_plain_text():
    assert grammar_option(None) is None and response_format_option({"type": "text"}) is None


def test_without_llguidance_the_error_names_the_extra_and_tools_still_work(exaone, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "llguidance", None)  # import llguidance now fails
    model = scripted_model(exaone, scripted(exaone, "Hi there.", after="\n</think>\n\n"))
    for options in (dict(response_format={"type": "json_object"}), dict(grammar="start: /a/"),
                    dict(tools=TOOLS, tool_choice="required")):
        with pytest.raises(TinyExaoneError, match=re.escape("pip install 'tinyexaone[grammar]'")):
            model.chat([{"role": "user", "content": "hi"}], **options)
    for choice in ("auto", "none"):  # unconstrained calls, and the <tool_call> ban, need no llguidance
        reply = model.chat([{"role": "user", "content": "hi"}], tools=TOOLS, tool_choice=choice, temperature=0)
        assert reply.message["content"] == "Hi there."


def test_the_forced_call_format_is_what_the_template_writes(exaone):
    calls = [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "서울", "unit": "celsius"}}},
             {"type": "function", "function": {"name": "multiply", "arguments": {"a": 6, "b": 7}}}]
    rendered = exaone.apply_chat_template([{"role": "user", "content": "q"}, {"role": "assistant", "content": "",
                                           "tool_calls": calls}], tools=TOOLS, add_generation_prompt=False)
    reply = rendered[rendered.rindex("[|assistant|]"):]  # (the system turn shows the format with placeholders)
    written = reply[reply.index("<tool_call>"): reply.rindex("</tool_call>") + len("</tool_call>")]
    constraint = Constraint(exaone, tool_call_grammar(exaone, tool_parameters(TOOLS)))
    assert constraint.consume_text(written)  # byte for byte the template's calls, and nothing else
    assert exaone.added_tokens["[|endofturn|]"] in allowed_ids(constraint, exaone.vocab_size)
    assert not Constraint(exaone, tool_call_grammar(exaone, tool_parameters(TOOLS))).consume_text(
        written.replace('", "arguments"', '","arguments"'))
