"""Seeded synthetic chat corpus of the demo model, rendered with the real EXAONE 4 chat template.

`conversations(count, seed)` returns `count` conversations (English, Korean and Spanish) as dicts:
`messages` (OpenAI-style, what a caller of the chat API would hold), `tools` (JSON schemas or
None), `thinking` (True when the last assistant turn carries its reasoning, as rendered with
enable_thinking), `kind` (arith | arith_think | tool | greet | greet_think | multi) and, for
evaluation, `answer` (the integer a correct reply states) or `tool_name` / `tool_args`.
`render(messages, tools=None, thinking=False, add_generation_prompt=False)` renders with
chat_template.jinja (a byte copy of the upstream EXAONE-4.0 template) exactly as transformers
does: Jinja2 with trim_blocks, lstrip_blocks, loop controls, `raise_exception` and a `tojson`
that is `json.dumps(ensure_ascii=False)`. The same generator with another seed gives the
held-out evaluation set. Only the standard library and jinja2 are used.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import jinja2

TEMPLATE_PATH = Path(__file__).with_name("chat_template.jinja")

LANGUAGES = ("en", "ko", "es")
# the generation prompt that precedes every assistant reply (not something the model must produce)
REPLY_START = re.compile(r"\[\|assistant\|\]\n(<think>\n\n</think>\n\n|<think>\n)")
END_OF_TURN = "[|endofturn|]"

# kind -> share of the corpus
KIND_WEIGHTS = {  # tool conversations are ~10x longer than the others, so few of them suffice
    "arith": 0.58,
    "arith_think": 0.18,
    "tool": 0.07,
    "greet": 0.06,
    "greet_think": 0.03,
    "multi": 0.08,
}

OP_SYMBOL = {"add": "+", "sub": "-", "mul": "×"}
OP_WORD = {
    "en": {"add": "plus", "sub": "minus", "mul": "times"},
    "ko": {"add": "더하기", "sub": "빼기", "mul": "곱하기"},
    "es": {"add": "más", "sub": "menos", "mul": "por"},
}
QUESTION_TEMPLATES = {
    "en": ["What is {x}?", "Calculate {x}.", "How much is {x}?", "{x} = ?", "What's {x}?", "Can you compute {x}?"],
    "ko": ["{x}의 값은 얼마인가요?", "{x} 계산해 주세요.", "{x} = ?", "{x}의 답은 무엇인가요?", "{x}를 계산하면?"],
    "es": ["¿Cuánto es {x}?", "Calcula {x}.", "{x} = ?", "¿Cuál es el resultado de {x}?", "¿Cuánto da {x}?"],
}
ANSWER_TEMPLATES = {"en": "{x} = {r}.", "ko": "{x} = {r}입니다.", "es": "{x} = {r}."}
REASONING_WORDS = {
    "en": dict(ones="Ones", tens="Tens", write="Write {d}, carry 1.", borrow="{a} - {b} needs a borrow:",
               table="From the times table,", so="So {x} = {r}."),
    "ko": dict(ones="일의 자리", tens="십의 자리", write="{d}를 쓰고 1을 올립니다.", borrow="{a} - {b}는 빌려야 합니다:",
               table="구구단에서", so="따라서 {x} = {r}입니다."),
    "es": dict(ones="Unidades", tens="Decenas", write="Escribo {d} y llevo 1.", borrow="{a} - {b} necesita préstamo:",
               table="Por la tabla de multiplicar,", so="Entonces {x} = {r}."),
}

TOOLS = {
    "add": {"description": "Add two integers.", "params": {"a": "The first number.", "b": "The second number."}},
    "subtract": {"description": "Subtract b from a.", "params": {"a": "The number to subtract from.", "b": "The number to subtract."}},
    "multiply": {"description": "Multiply two integers.", "params": {"a": "The first factor.", "b": "The second factor."}},
    "get_weather": {"description": "Get the current weather in a city.", "params": {"city": "The name of the city."}},
}
TOOL_FOR_OP = {"add": "add", "sub": "subtract", "mul": "multiply"}
CITIES = {
    "en": ["Seoul", "Busan", "Madrid", "London", "Paris", "Tokyo", "Lima", "Berlin", "Rome", "Sydney", "Toronto", "Mexico City"],
    "ko": ["서울", "부산", "인천", "대구", "제주", "도쿄", "파리", "런던", "마드리드", "베를린"],
    "es": ["Madrid", "Barcelona", "Sevilla", "Lima", "Bogotá", "Buenos Aires", "Santiago", "Quito", "Seúl", "Valencia"],
}
CONDITIONS = {
    "sunny": {"en": "sunny", "ko": "맑음", "es": "soleado"},
    "cloudy": {"en": "cloudy", "ko": "흐림", "es": "nublado"},
    "rainy": {"en": "rainy", "ko": "비", "es": "lluvioso"},
    "snowy": {"en": "snowy", "ko": "눈", "es": "nevado"},
    "windy": {"en": "windy", "ko": "바람", "es": "ventoso"},
}
WEATHER_QUESTIONS = {
    "en": ["What's the weather in {c}?", "How is the weather in {c} today?", "Is it raining in {c}?", "Tell me the weather in {c}."],
    "ko": ["{c} 날씨 어때요?", "오늘 {c}의 날씨를 알려 주세요.", "{c}에 비가 오나요?", "{c}의 날씨는?"],
    "es": ["¿Qué tiempo hace en {c}?", "¿Cómo está el clima en {c} hoy?", "¿Llueve en {c}?", "Dime el tiempo en {c}."],
}
WEATHER_ANSWERS = {
    "en": "The weather in {c} is {w}, {t}°C.",
    "ko": "{c}의 날씨는 {w}, {t}°C입니다.",
    "es": "El tiempo en {c} es {w}, {t}°C.",
}
TOOL_ARITH_ANSWERS = {"en": "The result is {r}.", "ko": "결과는 {r}입니다.", "es": "El resultado es {r}."}
SYSTEM_PROMPTS = {
    "en": ["You are a helpful assistant.", "You are EXAONE, a friendly assistant."],
    "ko": ["당신은 친절한 도우미입니다.", "당신은 EXAONE입니다."],
    "es": ["Eres un asistente útil.", "Eres EXAONE, un asistente amable."],
}
GREETINGS = {
    "en": [
        (["Hello!", "Hi", "Hi there!", "Hey!", "Good morning!"], "Hello! How can I help you today?"),
        (["How are you?", "How are you doing?"], "I'm doing well, thank you! How can I help you?"),
        (["Who are you?", "What are you?"], "I am a tiny EXAONE 4 demo model. I can do small arithmetic and call tools."),
        (["Thank you!", "Thanks!"], "You're welcome!"),
        (["Bye!", "Goodbye!"], "Goodbye! Have a nice day."),
    ],
    "ko": [
        (["안녕하세요!", "안녕!", "반가워요."], "안녕하세요! 무엇을 도와드릴까요?"),
        (["잘 지내요?", "기분이 어때요?"], "잘 지내요, 감사합니다! 무엇을 도와드릴까요?"),
        (["너는 누구야?", "당신은 누구인가요?"], "저는 작은 EXAONE 4 데모 모델입니다. 간단한 계산과 도구 호출을 할 수 있어요."),
        (["고마워요!", "감사합니다!"], "천만에요!"),
        (["잘 가요!", "안녕히 계세요."], "안녕히 가세요! 좋은 하루 보내세요."),
    ],
    "es": [
        (["¡Hola!", "Hola", "¡Buenos días!", "¡Buenas tardes!"], "¡Hola! ¿En qué puedo ayudarte hoy?"),
        (["¿Cómo estás?", "¿Qué tal?"], "¡Estoy bien, gracias! ¿En qué puedo ayudarte?"),
        (["¿Quién eres?", "¿Qué eres?"], "Soy un pequeño modelo de demostración EXAONE 4. Puedo hacer cuentas sencillas y usar herramientas."),
        (["¡Gracias!", "Muchas gracias."], "¡De nada!"),
        (["¡Adiós!", "Hasta luego."], "¡Adiós! Que tengas un buen día."),
    ],
}
GREETING_REASONING = {
    "en": "The user is chatting with me. I will reply politely.",
    "ko": "사용자가 인사를 하고 있습니다. 친절하게 답하겠습니다.",
    "es": "El usuario está conversando conmigo. Responderé con amabilidad.",
}


def tool_schema(name: str) -> dict:
    """The JSON schema of a tool, in the format transformers derives from a Python function."""
    spec = TOOLS[name]
    kind = "string" if name == "get_weather" else "integer"
    properties = {p: {"type": kind, "description": d} for p, d in spec["params"].items()}
    parameters = {"type": "object", "properties": properties, "required": list(spec["params"])}
    return {"type": "function", "function": {"name": name, "description": spec["description"], "parameters": parameters}}


def _operands(rng: random.Random, op: str) -> tuple[int, int]:
    """Operands of an arithmetic question: digit sizes mixed so the tasks stay learnable."""
    if op == "mul":
        return rng.randint(1, 9), rng.randint(1, 9)
    shape = rng.random()
    if shape < 0.35:
        a, b = rng.randint(0, 9), rng.randint(0, 9)
    elif shape < 0.85:
        a, b = rng.randint(10, 99), rng.randint(0, 9)
        if op == "add" and rng.random() < 0.5:
            a, b = b, a
    else:
        a, b = rng.randint(10, 99), rng.randint(10, 99)
    if op == "sub" and a < b:
        a, b = b, a
    return a, b


def _result(op: str, a: int, b: int) -> int:
    return a + b if op == "add" else a - b if op == "sub" else a * b


def _expression(lang: str, op: str, a: int, b: int, rng: random.Random | None) -> str:
    """'47 + 38' (or '47 plus 38' in a question, when rng picks the word form)."""
    if rng is not None and rng.random() < 0.25:
        return f"{a} {OP_WORD[lang][op]} {b}"
    if rng is not None and op == "mul" and rng.random() < 0.3:
        return f"{a} * {b}"
    return f"{a} {OP_SYMBOL[op]} {b}"


def reasoning(lang: str, op: str, a: int, b: int) -> str:
    """Column-method reasoning for + and -, a times-table fact for ×; ends by stating the result."""
    w = REASONING_WORDS[lang]
    x, r = f"{a} {OP_SYMBOL[op]} {b}", _result(op, a, b)
    if op == "mul":
        return f"{w['table']} {a} × {b} = {r}.\n{w['so'].format(x=x, r=r)}"
    a1, a10, b1, b10 = a % 10, a // 10, b % 10, b // 10
    lines = []
    if op == "add":
        ones = a1 + b1
        carry = ones // 10
        lines.append(f"{w['ones']}: {a1} + {b1} = {ones}." + (" " + w["write"].format(d=ones % 10) if carry else ""))
        if a10 or b10 or carry:
            lines.append(f"{w['tens']}: {a10} + {b10}" + (" + 1" if carry else "") + f" = {a10 + b10 + carry}.")
    else:
        borrow = a1 < b1
        if borrow:
            lines.append(f"{w['ones']}: {w['borrow'].format(a=a1, b=b1)} {a1 + 10} - {b1} = {a1 + 10 - b1}.")
        else:
            lines.append(f"{w['ones']}: {a1} - {b1} = {a1 - b1}.")
        if a10:
            lines.append(f"{w['tens']}: {a10}" + (" - 1" if borrow else "") + f" - {b10} = {a10 - borrow - b10}.")
    lines.append(w["so"].format(x=x, r=r))
    return "\n".join(lines)


def _arith_turn(rng: random.Random, lang: str) -> tuple[str, str, int, tuple]:
    op = rng.choice(("add", "add", "sub", "sub", "mul"))
    a, b = _operands(rng, op)
    question = rng.choice(QUESTION_TEMPLATES[lang]).format(x=_expression(lang, op, a, b, rng))
    r = _result(op, a, b)
    answer = ANSWER_TEMPLATES[lang].format(x=f"{a} {OP_SYMBOL[op]} {b}", r=r)
    return question, answer, r, (op, a, b)


def _system(rng: random.Random, lang: str, messages: list) -> None:
    if rng.random() < 0.2:
        messages.append({"role": "system", "content": rng.choice(SYSTEM_PROMPTS[lang])})


def _tool_conversation(rng: random.Random, lang: str) -> dict:
    messages: list = []
    _system(rng, lang, messages)
    if rng.random() < 0.6:
        op = rng.choice(("add", "sub", "mul"))
        a, b = rng.randint(0, 999), rng.randint(0, 999)
        if op == "sub" and a < b:
            a, b = b, a
        if op == "mul":
            a, b = rng.randint(0, 99), rng.randint(0, 99)
        name, args = TOOL_FOR_OP[op], {"a": a, "b": b}
        question = rng.choice(QUESTION_TEMPLATES[lang]).format(x=_expression(lang, op, a, b, rng))
        result = str(_result(op, a, b))
        final = TOOL_ARITH_ANSWERS[lang].format(r=result)
        answer = int(result)
    else:
        city = rng.choice(CITIES[lang])
        condition, temperature = rng.choice(list(CONDITIONS)), rng.randint(-5, 35)
        name, args = "get_weather", {"city": city}
        question = rng.choice(WEATHER_QUESTIONS[lang]).format(c=city)
        result = f"{condition}, {temperature}°C"
        final = WEATHER_ANSWERS[lang].format(c=city, w=CONDITIONS[condition][lang], t=temperature)
        answer = temperature
    others = [t for t in TOOLS if t != name]
    listed = rng.sample(others, rng.randint(0, 1)) + [name]
    rng.shuffle(listed)
    messages += [
        {"role": "user", "content": question},
        {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {"name": name, "arguments": args}}]},
        {"role": "tool", "content": result},
        {"role": "assistant", "content": final},
    ]
    return {"kind": "tool", "lang": lang, "messages": messages, "tools": [tool_schema(t) for t in listed],
            "thinking": False, "tool_name": name, "tool_args": args, "tool_result": result, "answer": answer}


def conversation(rng: random.Random, kind_weights: dict = KIND_WEIGHTS) -> dict:
    """One random conversation of a random kind (drawn with kind_weights) and language."""
    lang = rng.choice(LANGUAGES)
    kind = rng.choices(list(kind_weights), weights=list(kind_weights.values()))[0]
    if kind == "tool":
        return _tool_conversation(rng, lang)
    messages: list = []
    _system(rng, lang, messages)
    item = {"kind": kind, "lang": lang, "messages": messages, "tools": None, "thinking": kind.endswith("_think")}
    if kind in ("arith", "arith_think"):
        question, answer, r, (op, a, b) = _arith_turn(rng, lang)
        reply = {"role": "assistant", "content": answer}
        if kind == "arith_think":
            reply["reasoning_content"] = reasoning(lang, op, a, b)
        messages += [{"role": "user", "content": question}, reply]
        item["answer"] = r
    elif kind in ("greet", "greet_think"):
        prompts, reply_text = rng.choice(GREETINGS[lang])
        reply = {"role": "assistant", "content": reply_text}
        if kind == "greet_think":
            reply["reasoning_content"] = GREETING_REASONING[lang]
        messages += [{"role": "user", "content": rng.choice(prompts)}, reply]
    else:  # multi: a greeting or a sum, then another sum
        prompts, reply_text = rng.choice(GREETINGS[lang])
        messages += [{"role": "user", "content": rng.choice(prompts)}, {"role": "assistant", "content": reply_text}]
        question, answer, r, _ = _arith_turn(rng, lang)
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        item["answer"] = r
    return item


def conversations(count: int, seed: int, kind_weights: dict = KIND_WEIGHTS) -> list[dict]:
    """`count` seeded conversations; the same arguments always give the same list."""
    rng = random.Random(seed)
    return [conversation(rng, kind_weights) for _ in range(count)]


def _raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    return env


_TEMPLATE = None


def render(messages: list, tools=None, thinking: bool = False, add_generation_prompt: bool = False) -> str:
    """The chat text of `messages`; `thinking` keeps the last assistant turn's reasoning.

    thinking=True with add_generation_prompt opens a reasoning block (enable_thinking); without
    a generation prompt it renders the last assistant reply with its reasoning (skip_think=False).
    """
    global _TEMPLATE
    if _TEMPLATE is None:
        _TEMPLATE = _environment().from_string(TEMPLATE_PATH.read_text(encoding="utf-8"))
    kwargs = {"messages": messages, "add_generation_prompt": add_generation_prompt, "enable_thinking": thinking,
              "skip_think": not thinking}
    if tools:
        kwargs["tools"] = tools
    return _TEMPLATE.render(**kwargs)


def render_item(item: dict) -> str:
    """The training text of one corpus conversation."""
    return render(item["messages"], item["tools"], thinking=item["thinking"])


def loss_mask(text: str, offsets: list) -> list[bool]:
    """True for the tokens a model must produce: each assistant reply after its generation prompt,
    through its [|endofturn|]."""
    spans = []  # [start, end) character ranges of the replies
    for match in REPLY_START.finditer(text):
        end = text.index(END_OF_TURN, match.end()) + len(END_OF_TURN)
        spans.append((match.end(), end))
    return [any(a <= start < b for a, b in spans) for start, _ in offsets]
