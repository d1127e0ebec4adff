"""The real EXAONE chat template rendered by us vs transformers' apply_chat_template, plus the sandbox.

The `ours` and `reference` tokenizers come from conftest.py."""

import time

import pytest

from tinyexaone import ContextOverflowError, TinyExaoneError, chat_template
from tinyexaone.chat_template import compile_chat_template, render_chat_template

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city. 도시의 현재 날씨.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "City name, e.g. 서울"},
                           "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["city"],
        },
    },
}
TIME_TOOL = {"type": "function", "function": {"name": "get_time", "description": "Time <now> & \"then\"",
                                              "parameters": {"type": "object", "properties": {}}}}

SYSTEM = {"role": "system", "content": "You are a concise assistant."}
USER = {"role": "user", "content": "What is the capital of France?"}
ANSWER = {"role": "assistant", "content": "Paris."}
FOLLOWUP = {"role": "user", "content": "And of Spain?"}
CALL_DICT = {"role": "assistant", "content": None, "tool_calls": [
    {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "서울", "unit": "celsius"}}}]}
CALL_STRING = {"role": "assistant", "content": "Let me check both.", "tool_calls": [
    {"type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}},
    {"name": "get_time", "arguments": {}}]}
RESULT_1 = {"role": "tool", "tool_call_id": "call_1", "content": "{\"temperature\": 21, \"sky\": \"맑음\"}"}
RESULT_2 = {"role": "tool", "content": "12:00"}

# (name, messages, tools, template kwargs); every case is rendered with and without a generation prompt
MATRIX = [
    ("no_system", [USER], None, {}),
    ("system", [SYSTEM, USER], None, {}),
    ("multi_turn", [SYSTEM, USER, ANSWER, FOLLOWUP], None, {}),
    ("reasoning_content_in_history", [USER, {"role": "assistant", "content": "Paris.",
                                             "reasoning_content": "The user asks about France."}, FOLLOWUP], None, {}),
    ("think_in_content_history", [USER, {"role": "assistant", "content": "<think>\nFrance... Paris\n</think>\n\nParis."},
                                  FOLLOWUP], None, {}),
    ("skip_think_false_last_reasoning_content", [USER, {"role": "assistant", "content": "Paris.",
                                                        "reasoning_content": "Capital of France."}],
     None, {"skip_think": False}),
    ("skip_think_false_think_in_content", [USER, {"role": "assistant", "content": "<think>\nabcdef\n</think>\n\nParis."}],
     None, {"skip_think": False}),
    ("skip_think_false_not_last", [USER, {"role": "assistant", "content": "Paris.", "reasoning": "kept?"}, FOLLOWUP],
     None, {"skip_think": False}),
    ("tools_no_system", [{"role": "user", "content": "Weather in Seoul?"}], [WEATHER_TOOL, TIME_TOOL], {}),
    ("tools_with_system", [SYSTEM, {"role": "user", "content": "Weather in Seoul?"}], [WEATHER_TOOL], {}),
    ("tool_call_dict_args", [SYSTEM, {"role": "user", "content": "서울 날씨?"}, CALL_DICT, RESULT_1], [WEATHER_TOOL], {}),
    ("tool_call_string_args_consecutive_results", [{"role": "user", "content": "Paris weather and time?"}, CALL_STRING,
                                                   RESULT_1, RESULT_2], [WEATHER_TOOL, TIME_TOOL], {}),
    ("tool_round_trip_answer", [{"role": "user", "content": "서울 날씨?"}, CALL_DICT, RESULT_1,
                                {"role": "assistant", "content": "서울은 21도이고 맑습니다."}, FOLLOWUP],
     [WEATHER_TOOL], {"enable_thinking": True}),
    ("enable_thinking_on", [SYSTEM, USER], None, {"enable_thinking": True}),
    ("enable_thinking_off", [SYSTEM, USER], None, {"enable_thinking": False}),
    ("korean", [{"role": "system", "content": "당신은 친절한 한국어 비서입니다."},
                {"role": "user", "content": "안녕하세요! 오늘 서울 날씨 어때요? 😀"},
                {"role": "assistant", "content": "안녕하세요. 서울은 맑아요."},
                {"role": "user", "content": "고마워요.\n\t좋은 하루!"}], None, {}),
    ("late_system_turn", [USER, ANSWER, {"role": "system", "content": "Answer in French."}, FOLLOWUP], None, {}),
    ("whitespace_content", [{"role": "user", "content": "  padded  \r\n\n"}], None, {}),
]


def _hf_ids(reference, messages, tools, add_generation_prompt, kwargs):
    out = reference.apply_chat_template(messages, tools=tools, add_generation_prompt=add_generation_prompt,
                                        tokenize=True, return_dict=False, **kwargs)
    return list(out)


@pytest.mark.parametrize("add_generation_prompt", [True, False])
@pytest.mark.parametrize("name,messages,tools,kwargs", MATRIX, ids=[case[0] for case in MATRIX])
def test_template_matches_transformers(ours, reference, name, messages, tools, kwargs, add_generation_prompt):
    expected = reference.apply_chat_template(messages, tools=tools, add_generation_prompt=add_generation_prompt,
                                             tokenize=False, **kwargs)
    rendered = ours.apply_chat_template(messages, tools=tools, add_generation_prompt=add_generation_prompt, **kwargs)
    assert rendered.encode("utf-8") == expected.encode("utf-8")
    ids = ours.apply_chat_template(messages, tools=tools, add_generation_prompt=add_generation_prompt,
                                   tokenize=True, **kwargs)
    assert ids == _hf_ids(reference, messages, tools, add_generation_prompt, kwargs)


def test_matrix_renders_distinct_features(ours):
    """Guard against a matrix that silently stopped exercising the template's branches."""
    assert len(MATRIX) >= 12
    by_name = {name: ours.apply_chat_template(m, tools=t, **k) for name, m, t, k in MATRIX}
    assert by_name["enable_thinking_on"].endswith("[|assistant|]\n<think>\n")
    assert by_name["enable_thinking_off"].endswith("[|assistant|]\n<think>\n\n</think>\n\n")
    assert "# Available Tools" in by_name["tools_no_system"]
    assert by_name["tools_no_system"].startswith("[|system|]\n# Available Tools")
    assert "<think>\nbcdef\n</think>" in by_name["skip_think_false_think_in_content"]  # the template's 9-char cut
    assert "Capital of France." in by_name["skip_think_false_last_reasoning_content"]
    assert "The user asks" not in by_name["reasoning_content_in_history"]
    assert '"arguments": "{\\"city\\": \\"Paris\\"}"' in by_name["tool_call_string_args_consecutive_results"]
    assert by_name["tool_call_string_args_consecutive_results"].count("[|tool|]") == 1
    assert '"city": "서울"' in by_name["tool_call_dict_args"]


def test_messages_are_not_modified(ours):
    messages = [USER, {"role": "assistant", "content": "x", "reasoning": "r", "tool_calls": None}]
    snapshot = repr(messages)
    ours.apply_chat_template(messages)
    assert repr(messages) == snapshot


def test_unknown_role_is_a_clear_error(ours):
    with pytest.raises(TinyExaoneError, match="Unknown role: narrator"):
        ours.apply_chat_template([{"role": "narrator", "content": "Once upon a time"}])


def test_bad_messages_are_clear_errors(ours):
    with pytest.raises(TinyExaoneError, match="non-empty list"):
        ours.apply_chat_template([])
    with pytest.raises(TinyExaoneError, match=r"messages\[0\] is a str"):
        ours.apply_chat_template(["hello"])
    with pytest.raises(TinyExaoneError, match="not JSON data"):
        ours.apply_chat_template([{"role": "user", "content": object()}])
    with pytest.raises(TinyExaoneError, match="tools must be a list"):
        ours.apply_chat_template([USER], tools=[print])
    with pytest.raises(TinyExaoneError, match="arguments or parameters are mandatory"):
        ours.apply_chat_template([USER, {"role": "assistant", "content": "", "tool_calls": [{"name": "f"}]}])


@pytest.mark.parametrize("source", [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ ''.__class__ }}",
    "{{ messages.__class__.__init__.__globals__ }}",
    "{{ cycler.__init__.__globals__.os }}",
    "{% set ns = namespace() %}{% set ns._secret = 1 %}",
    "{{ namespace(_x=1) }}",
    "{{ raise_exception.__globals__ }}",
    "{{ messages.append(1) }}",
])
def test_template_cannot_reach_python_internals(source):
    template = compile_chat_template(source)
    with pytest.raises(TinyExaoneError, match="sandbox forbids|chat template"):
        render_chat_template(template, [USER])


def test_syntax_error_is_a_clear_error():
    with pytest.raises(TinyExaoneError, match="does not compile"):
        compile_chat_template("{% for m in messages %}")


ENVIRONMENT_TEMPLATE = (
    "{% for i in range(6) %}{% if i == 1 %}{% continue %}{% endif %}{% if i == 4 %}{% break %}{% endif %}"
    "{{ i }}{% endfor %}\n"
    "  {% if true %}\n  lstrip and trim\n  {% endif %}\n"
    "{{ {'k': '서울 <b> & \"q\"', 'n': [1, 2.5, none, true]} | tojson }}|"
    "{{ {'a': 1} | tojson(indent=2) }}|{{ dict(x=1) }}|{{ eos_token }}|{{ flag }}|"
    "{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}{% endfor %}{{ ns.n }}|"
    "{{ strftime_now('%Y') | length }}"
)


def test_environment_features_match_transformers(ours, reference):
    messages = [USER, ANSWER]
    expected = reference.apply_chat_template(messages, chat_template=ENVIRONMENT_TEMPLATE, tokenize=False, flag="on")
    rendered = render_chat_template(compile_chat_template(ENVIRONMENT_TEMPLATE), messages,
                                    special_tokens=ours.special_tokens_map, flag="on")
    assert rendered == expected
    assert rendered.startswith("023  lstrip and trim\n{")  # trim_blocks ate the newlines, lstrip_blocks the indent
    assert '"서울 <b> & \\"q\\""' in rendered


def test_raise_exception_message_is_passed_on():
    template = compile_chat_template("{{ raise_exception('custom failure: ' ~ messages[0].role) }}")
    with pytest.raises(TinyExaoneError, match="custom failure: user"):
        render_chat_template(template, [USER])


CPU_BOMBS = [
    "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "{% for i in range(100000) %}{% for j in range(100000) %}{{ '' }}{% endfor %}{% endfor %}",
    "{% macro m(n) %}{% for i in range(3) %}{{ m(n + 1) if n < 40 else '' }}{% endfor %}{% endmacro %}{{ m(0) }}",
]
MEMORY_BOMBS = [
    "{{ 7**(10**9) }}", "{{ 'a'*10**10 }}", "{{ [1]*10**10 }}", "{{ 'a'|center(10**10) }}", "{{ 'a'.center(10**10) }}",
    "{{ 'a'.ljust(10**10) }}", "{{ messages|tojson(indent=10**9) }}", "{{ '%999999999d' % 1 }}",
    "{{ '{:>999999999}'.format(1) }}", "{{ 'a'|indent(10**10) }}", "{{ lipsum(2*10**5) }}",
    "{% set ns = namespace(x=[1]) %}{% for i in range(60) %}{% set ns.x = ns.x + ns.x %}{% endfor %}{{ ns.x|length }}",
    "{% set ns = namespace(x='ab') %}{% for i in range(60) %}{% set ns.x = ns.x ~ ns.x %}{% endfor %}{{ ns.x }}",
]
RUNTIME_ERRORS = ["{% macro m(n) %}{{ m(n + 1) }}{% endmacro %}{{ m(0) }}", "{{ 1 / 0 }}", "{{ 1 // 0 }}",
                  "{{ (10**5000)|string }}", "{{ 1.5e308 * 10 > 0 and (10**400) * 1.0 }}"]


@pytest.mark.parametrize("source", CPU_BOMBS)
def test_template_cpu_bombs_stop_at_the_time_budget(source, monkeypatch):
    monkeypatch.setattr(chat_template, "RENDER_SECONDS", 0.5)
    started = time.monotonic()
    with pytest.raises(TinyExaoneError, match="over its budget: the chat template ran for more than"):
        render_chat_template(compile_chat_template(source), [{"role": "user", "content": "hi"}])
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("source", MEMORY_BOMBS)
def test_template_memory_bombs_are_refused_before_they_allocate(source):
    started = time.monotonic()
    with pytest.raises(TinyExaoneError, match="over its budget|does not fit the context"):
        render_chat_template(compile_chat_template(source), [{"role": "user", "content": "hi"}], max_chars=100_000)
    assert time.monotonic() - started < 2  # refused, not computed


@pytest.mark.parametrize("source", RUNTIME_ERRORS)
def test_template_runtime_errors_are_one_line(source):
    with pytest.raises(TinyExaoneError) as info:
        render_chat_template(compile_chat_template(source), [{"role": "user", "content": "hi"}])
    assert "\n" not in str(info.value) and len(str(info.value)) < 400


def test_budgets_leave_ordinary_templates_alone(ours):
    messages = [{"role": "user", "content": "x" * 5000}]
    text = ours.apply_chat_template(messages, max_tokens=1000)
    assert "x" * 5000 in text
    with pytest.raises(ContextOverflowError):
        ours.apply_chat_template([{"role": "user", "content": "x" * 10**6}], max_tokens=1000)
