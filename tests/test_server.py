"""`tinyexaone serve` driven by the official `openai` client, on the shipped demo model.

A server runs in this process on a free 127.0.0.1 port (so the tests can look at its engine);
one test starts the real command in a subprocess. Covered: chat with and without streaming
(the same greedy reply both ways, and the same as the Python API's), a tool round trip, thinking
on and off, stop strings, seed determinism, logprobs against the model's own log-softmax,
/v1/models, /health and the page, the error shapes (bad JSON, unknown model, n=2, an over-long
prompt, unknown fields, too large a body, a missing or wrong key), prefix reuse across turns
(cached_tokens), two clients at once (their decode steps batched), response_format and
tool_choice enforced through the grammar extra, a disconnect that ends
the generation, and a shutdown that ends an open stream with an error event.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import tinyexaone
from tinyexaone.chat_model import ChatModel
from tinyexaone.engine import Engine
from tinyexaone.model import Model
from tinyexaone.server import MAX_BODY_BYTES, Server

openai = pytest.importorskip("openai")

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "models" / "exaone4-demo"
sys.path.insert(0, str(DEMO))
import corpus  # noqa: E402  (the demo model's tool schemas)

MODEL_ID = "exaone4-demo"
TOOLS = [corpus.tool_schema("add"), corpus.tool_schema("get_weather")]


@pytest.fixture(scope="module")
def chat_model():
    return tinyexaone.load(DEMO)


def start_server(chat_model, **kwargs):
    engine_kwargs = {k: kwargs.pop(k) for k in ("context_size", "parallel", "max_waiting") if k in kwargs}
    engine = Engine(chat_model, MODEL_ID, **engine_kwargs)
    lines: list[str] = []
    server = Server(engine, "127.0.0.1", 0, log=lines.append, **kwargs)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    server.lines = lines
    return server


@pytest.fixture(scope="module")
def server(chat_model):
    server = start_server(chat_model)
    yield server
    server.shutdown_cleanly()


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120)


def raw_request(server, method, path, body=None, headers=None):
    """(status, parsed JSON or text) of one plain HTTP request."""
    host, port = server.server_address[:2]
    connection = http.client.HTTPConnection(host, port, timeout=60)
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    connection.request(method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
    response = connection.getresponse()
    payload = response.read().decode()
    connection.close()
    try:
        return response.status, json.loads(payload)
    except json.JSONDecodeError:
        return response.status, payload


def ask(question):
    return [{"role": "user", "content": question}]


# --- chat -------------------------------------------------------------------------------------------------


def test_chat_non_streaming_matches_the_python_api(client, chat_model):
    reply = client.chat.completions.create(model=MODEL_ID, messages=ask("What is 27 + 45?"), temperature=0)
    expected = chat_model.chat(ask("What is 27 + 45?"), temperature=0)
    choice = reply.choices[0]
    assert choice.message.content == expected.message["content"] and "72" in choice.message.content
    assert choice.finish_reason == "stop" and choice.message.role == "assistant"
    assert reply.object == "chat.completion" and reply.model == MODEL_ID and reply.id.startswith("chatcmpl-")
    assert abs(reply.created - time.time()) < 120
    assert reply.usage.prompt_tokens == expected.usage["prompt_tokens"]
    assert reply.usage.completion_tokens == expected.usage["completion_tokens"]
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_chat_streaming_gives_the_same_reply(client):
    whole = client.chat.completions.create(model=MODEL_ID, messages=ask("What is 13 + 6?"), temperature=0)
    chunks = list(client.chat.completions.create(model=MODEL_ID, messages=ask("What is 13 + 6?"), temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert len({c.id for c in chunks}) == 1 and all(c.object == "chat.completion.chunk" for c in chunks)


def test_content_as_text_parts_and_developer_role(client):
    parts = [{"role": "developer", "content": "You are concise."},
             {"role": "user", "content": [{"type": "text", "text": "What is 4 + 5?"}]}]
    reply = client.chat.completions.create(model=MODEL_ID, messages=parts, temperature=0)
    assert "9" in reply.choices[0].message.content


def test_tool_round_trip(client):
    messages = ask("What is 318 + 527?")
    first = client.chat.completions.create(model=MODEL_ID, messages=messages, tools=TOOLS, temperature=0)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "add" and call.id
    arguments = json.loads(call.function.arguments)  # a JSON string, as OpenAI sends it
    result = arguments["a"] + arguments["b"]
    messages += [choice.message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": str(result)}]
    final = client.chat.completions.create(model=MODEL_ID, messages=messages, tools=TOOLS, temperature=0)
    assert str(result) in final.choices[0].message.content and not final.choices[0].message.tool_calls


def test_tool_call_streams_as_a_delta_with_an_index(client):
    chunks = list(client.chat.completions.create(model=MODEL_ID, messages=ask("What is 318 + 527?"), tools=TOOLS,
                                                 temperature=0, stream=True))
    calls = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or ()]
    assert [tc.index for tc in calls] == [0] and calls[0].function.name == "add"
    assert json.loads(calls[0].function.arguments)
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_thinking_on_and_off(client):
    on = client.chat.completions.create(model=MODEL_ID, messages=ask("What is 27 + 45?"), temperature=0,
                                        extra_body={"chat_template_kwargs": {"enable_thinking": True}})
    message = on.choices[0].message.model_dump()
    assert message["reasoning_content"] and "72" in message["content"]
    off = client.chat.completions.create(model=MODEL_ID, messages=ask("What is 27 + 45?"), temperature=0,
                                         reasoning_effort="none")
    assert off.choices[0].message.model_dump().get("reasoning_content") is None
    streamed = list(client.chat.completions.create(model=MODEL_ID, messages=ask("What is 27 + 45?"), temperature=0,
                                                   stream=True, reasoning_effort="high"))
    reasoning = "".join(c.choices[0].delta.model_dump().get("reasoning_content") or "" for c in streamed if c.choices)
    assert reasoning == message["reasoning_content"]


def test_reasoning_format_reasoning_and_none(chat_model):
    for reasoning_format in ("reasoning", "none"):
        server = start_server(chat_model, reasoning_format=reasoning_format)
        try:
            status, body = raw_request(server, "POST", "/v1/chat/completions", {
                "messages": ask("What is 27 + 45?"), "temperature": 0, "chat_template_kwargs": {"enable_thinking": True}})
            message = body["choices"][0]["message"]
            assert status == 200 and "reasoning_content" not in message
            if reasoning_format == "reasoning":
                assert message["reasoning"] and "72" in message["content"]
            else:
                assert message["content"].startswith("<think>\n") and "</think>" in message["content"]
        finally:
            server.shutdown_cleanly()


def test_stop_strings_seed_and_max_tokens(client):
    full = client.chat.completions.create(model=MODEL_ID, messages=ask("What is 27 + 45?"), temperature=0)
    text = full.choices[0].message.content
    cut = text.index("=")
    stopped = client.chat.completions.create(model=MODEL_ID, messages=ask("What is 27 + 45?"), temperature=0, stop=["="])
    assert stopped.choices[0].message.content == text[:cut].rstrip() and stopped.choices[0].finish_reason == "stop"
    short = client.chat.completions.create(model=MODEL_ID, messages=ask("What is 27 + 45?"), temperature=0,
                                           max_completion_tokens=2)
    assert short.choices[0].finish_reason == "length" and short.usage.completion_tokens == 2
    sampled = [client.chat.completions.create(model=MODEL_ID, messages=ask("Hi"), temperature=2.0, top_p=1.0,
                                              seed=seed, max_tokens=24).choices[0].message.content
               for seed in (5, 5, 6, 7, 8)]
    assert sampled[0] == sampled[1]
    assert len(set(sampled[1:])) > 1  # different seeds draw different replies at this temperature


def test_logprobs_are_the_models_log_softmax(client, chat_model):
    reply = client.chat.completions.create(model=MODEL_ID, messages=ask("What is 2 + 3?"), temperature=0,
                                           logprobs=True, top_logprobs=3)
    entries = reply.choices[0].logprobs.content
    assert len(entries) == reply.usage.completion_tokens - 1  # every token but the end-of-turn
    tokenizer = chat_model.tokenizer
    prompt = tokenizer.apply_chat_template(ask("What is 2 + 3?"), add_generation_prompt=True)
    ids = tokenizer.encode(prompt, add_special_tokens=False)
    generated = tokenizer.encode(reply.choices[0].message.content, add_special_tokens=False)
    logits = chat_model.forward(ids + generated).astype(np.float64)[len(ids) - 1:]  # [new + 1, vocab]
    logits -= logits.max(-1, keepdims=True)
    log_softmax = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    assert "".join(e.token for e in entries) == reply.choices[0].message.content
    for t, entry in enumerate(entries):
        assert entry.logprob == pytest.approx(log_softmax[t, generated[t]], abs=1e-3)
        assert len(entry.top_logprobs) == 3 and entry.top_logprobs[0].logprob >= entry.top_logprobs[-1].logprob
        assert entry.top_logprobs[0].logprob == pytest.approx(log_softmax[t].max(), abs=1e-3)
        assert bytes(entry.bytes).decode() == entry.token


def test_completions_raw_text(client, chat_model):
    prompt = chat_model.tokenizer.apply_chat_template(ask("What is 4 + 5?"), add_generation_prompt=True)
    reply = client.completions.create(model=MODEL_ID, prompt=prompt, max_tokens=12, temperature=0, logprobs=2)
    assert reply.object == "text_completion" and "9" in reply.choices[0].text
    assert reply.choices[0].text == chat_model.generate(prompt, max_new_tokens=12, temperature=0).text
    logprobs = reply.choices[0].logprobs
    assert "".join(logprobs.tokens) == reply.choices[0].text and all(len(t) == 2 for t in logprobs.top_logprobs)
    streamed = client.completions.create(model=MODEL_ID, prompt=prompt, max_tokens=12, temperature=0, stream=True)
    assert "".join(c.choices[0].text for c in streamed if c.choices) == reply.choices[0].text
    ids = chat_model.tokenizer.encode(prompt, add_special_tokens=False)
    by_ids = client.completions.create(model=MODEL_ID, prompt=ids, max_tokens=12, temperature=0)
    assert by_ids.choices[0].text == reply.choices[0].text
    assert by_ids.usage.prompt_tokens_details.cached_tokens == len(ids) - 1


# --- the other endpoints ------------------------------------------------------------------------------------


def test_models_health_and_page(client, server):
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL_ID]
    assert client.models.retrieve(MODEL_ID).id == MODEL_ID
    assert raw_request(server, "GET", "/health") == (200, {"status": "ok"})
    status, page = raw_request(server, "GET", "/")
    assert status == 200 and "<title>tinyexaone</title>" in page and "/v1/chat/completions" in page
    assert "http://" not in page.replace("http://127.0.0.1", "") and "https://" not in page  # nothing fetched elsewhere


# --- errors --------------------------------------------------------------------------------------------------


def assert_error(status_body, status, code=None):
    got, body = status_body
    assert got == status, body
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"] and "Traceback" not in body["error"]["message"]
    if code is not None:
        assert body["error"]["code"] == code


def test_errors_have_openais_shape(server, client):
    assert_error(raw_request(server, "POST", "/v1/chat/completions", b"{not json"), 400, "invalid_json")
    assert_error(raw_request(server, "POST", "/v1/chat/completions", [1, 2]), 400)
    assert_error(raw_request(server, "POST", "/v1/chat/completions", {"messages": []}), 400)
    assert_error(raw_request(server, "POST", "/v1/chat/completions",
                             {"messages": ask("hi"), "logit_bias": {"5": 10}}), 400, "unsupported_parameter")
    assert_error(raw_request(server, "POST", "/v1/chat/completions",
                             {"messages": ask("hi"), "temperature": -1}), 400)
    assert_error(raw_request(server, "POST", "/v1/nothing", {}), 404)
    assert_error(raw_request(server, "GET", "/v1/models/other"), 404, "model_not_found")
    with pytest.raises(openai.NotFoundError) as exc:
        client.chat.completions.create(model="gpt-4o", messages=ask("hi"))
    assert exc.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model=MODEL_ID, messages=ask("hi"), n=2)
    assert exc.value.body["param"] == "n"
    status, body = raw_request(server, "POST", "/v1/chat/completions", {"messages": ask("hi"), "user": "u1",
                                                                       "metadata": {"a": "b"}, "max_tokens": 3})
    assert status == 200 and body["choices"][0]["message"]["role"] == "assistant"


def test_too_large_a_body_is_413(server):
    host, port = server.server_address[:2]
    connection = http.client.HTTPConnection(host, port, timeout=30)
    connection.putrequest("POST", "/v1/chat/completions")
    connection.putheader("Content-Type", "application/json")
    connection.putheader("Content-Length", str(MAX_BODY_BYTES + 1))
    connection.endheaders()  # the body is never sent: the answer comes from the header alone
    response = connection.getresponse()
    assert response.status == 413 and json.loads(response.read())["error"]["code"] == "request_too_large"


def test_over_long_prompt_is_400_with_the_counts(chat_model):
    server = start_server(chat_model, context_size=32)
    try:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0)
        with pytest.raises(openai.BadRequestError) as exc:
            client.chat.completions.create(model=MODEL_ID, messages=ask("What is 27 + 45? " * 20))
        error = exc.value.body
        assert error["code"] == "context_length_exceeded" and "32" in error["message"]
        needed = int(error["message"].split("needs ")[1].split()[0])
        assert needed > 32
    finally:
        server.shutdown_cleanly()


def test_api_key(chat_model):
    server = start_server(chat_model, api_key="sesame")
    try:
        for key in ("wrong", "sesame2"):
            with pytest.raises(openai.AuthenticationError):
                openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0).models.list()
        assert_error(raw_request(server, "POST", "/v1/chat/completions", {"messages": ask("hi")}), 401,
                     "invalid_api_key")
        good = openai.OpenAI(base_url=f"{server.url}/v1", api_key="sesame", max_retries=0)
        assert good.chat.completions.create(model=MODEL_ID, messages=ask("hi"), max_tokens=2).choices
        assert raw_request(server, "GET", "/health")[0] == 200  # health and the page need no key
    finally:
        server.shutdown_cleanly()


def test_no_cors_header_unless_asked(chat_model, server):
    host, port = server.server_address[:2]
    connection = http.client.HTTPConnection(host, port, timeout=30)
    connection.request("GET", "/v1/models", headers={"Origin": "http://evil.example"})
    response = connection.getresponse()
    response.read()
    assert response.getheader("Access-Control-Allow-Origin") is None
    cors = start_server(chat_model, cors="http://app.example")
    try:
        connection = http.client.HTTPConnection(*cors.server_address[:2], timeout=30)
        connection.request("OPTIONS", "/v1/chat/completions", headers={"Origin": "http://app.example"})
        response = connection.getresponse()
        response.read()
        assert response.status == 204 and response.getheader("Access-Control-Allow-Origin") == "http://app.example"
    finally:
        cors.shutdown_cleanly()


# --- what makes it good on a CPU ----------------------------------------------------------------------------


def test_second_turn_reuses_the_first_turns_tokens(client):
    messages = [{"role": "system", "content": "You are a calculator."}] + ask("What is 27 + 45?")
    first = client.chat.completions.create(model=MODEL_ID, messages=messages, temperature=0)
    messages += [first.choices[0].message.model_dump(exclude_none=True)] + ask("And what is 13 + 6?")
    second = client.chat.completions.create(model=MODEL_ID, messages=messages, temperature=0)
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert cached >= first.usage.prompt_tokens  # the whole first prompt, at least, came from the cache
    assert cached < second.usage.prompt_tokens


def test_two_clients_at_once_decode_together(client, server):
    scheduler = server.engine.scheduler
    rounds, steps = scheduler.rounds, scheduler.batched_steps
    replies, errors = {}, []

    def talk(question):
        try:
            chunks = client.chat.completions.create(model=MODEL_ID, messages=ask(question), temperature=0, stream=True,
                                                    max_tokens=40)
            replies[question] = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        except Exception as exc:  # noqa: BLE001 -- reported below
            errors.append(exc)

    questions = ["Hello! Who are you?", "What is 27 + 45?"]
    threads = [threading.Thread(target=talk, args=(q,)) for q in questions]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    for question in questions:  # each as it would be alone
        alone = client.chat.completions.create(model=MODEL_ID, messages=ask(question), temperature=0, max_tokens=40)
        assert replies[question] == alone.choices[0].message.content
    assert scheduler.batched_steps - steps > scheduler.rounds - rounds  # some rounds held both sequences


class SlowModel(Model):
    """The demo model with 0.1 s added to every decode step, so a generation is still running
    when the test acts on it, whatever the sampled text (the demo model ends replies early)."""

    def forward_batch(self, token_ids, caches):
        time.sleep(0.1)
        return super().forward_batch(token_ids, caches)


@pytest.fixture
def slow_server(chat_model):
    model = chat_model.model
    server = start_server(ChatModel(SlowModel(model.config, model.weights), chat_model.tokenizer))
    yield server
    server.shutdown_cleanly()


def test_disconnect_mid_stream_ends_the_generation(slow_server):
    server = slow_server
    host, port = server.server_address[:2]
    sock = socket.create_connection((host, port), timeout=60)
    body = json.dumps({"prompt": "Once upon a time", "max_tokens": 4000, "temperature": 1.0, "seed": 1,
                       "stream": True}).encode()
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    received = b""
    while received.count(b"data: ") < 3:
        data = sock.recv(65536)
        assert data, received
        received += data
    steps_before_close = server.engine.scheduler.batched_steps
    sock.close()
    deadline = time.time() + 30
    while not any("client disconnected" in line for line in server.lines) and time.time() < deadline:
        time.sleep(0.05)
    assert any("client disconnected" in line for line in server.lines)
    assert server.engine.scheduler.batched_steps - steps_before_close <= 2  # ended within a token
    assert server.engine.queue.free == 4  # its slot is free again


def test_shutdown_ends_open_streams_with_an_error_event(slow_server):
    server = slow_server
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0)
    stream = client.completions.create(model=MODEL_ID, prompt="Once upon a time", max_tokens=4000, temperature=1.0,
                                       seed=2, stream=True)
    next(iter(stream))
    threading.Thread(target=server.shutdown_cleanly).start()
    with pytest.raises(openai.APIError, match="shutting down"):
        for _ in stream:
            pass
    assert raw_request_fails(server)


def raw_request_fails(server) -> bool:
    try:
        raw_request(server, "GET", "/health")
    except OSError:
        return True
    return False


def test_the_serve_command(tmp_path):
    env = {**os.environ, "TINYEXAONE_API_KEY": "k1"}
    process = subprocess.Popen([sys.executable, "-m", "tinyexaone", "serve", "--port", "0"], cwd=tmp_path, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()
        assert "http://127.0.0.1:" in line and "key required" in line
        url = line.split(" at ")[1].split("/ ")[0]
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="k1", max_retries=0)
        assert client.chat.completions.create(model=MODEL_ID, messages=ask("What is 4 + 5?"), temperature=0,
                                              max_tokens=8).choices[0].message.content
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
        assert "Traceback" not in process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()


# --- structured output through the server -------------------------------------------------------------------

SCHEMA = {"type": "object", "properties": {"city": {"type": "string", "enum": ["Seoul", "Busan"]},
                                           "days": {"type": "integer", "minimum": 1, "maximum": 9}},
          "required": ["city", "days"], "additionalProperties": False}


def test_response_format_json_schema(client):
    pytest.importorskip("llguidance")
    jsonschema = pytest.importorskip("jsonschema")
    for stream in (False, True):
        kwargs = dict(model=MODEL_ID, messages=ask("Plan a trip."), temperature=0, max_tokens=60,
                      response_format={"type": "json_schema", "json_schema": {"name": "trip", "schema": SCHEMA}})
        if stream:
            text = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(stream=True, **kwargs)
                           if c.choices)
        else:
            text = client.chat.completions.create(**kwargs).choices[0].message.content
        jsonschema.validate(json.loads(text), SCHEMA)
    with pytest.raises(openai.BadRequestError):  # an invalid schema is refused before anything runs
        client.chat.completions.create(model=MODEL_ID, messages=ask("hi"), response_format={
            "type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object", "minProperties": "two"}}})


def test_tool_choice_required_and_named(client):
    pytest.importorskip("llguidance")
    for choice, name in (("required", None), ({"type": "function", "function": {"name": "get_weather"}}, "get_weather")):
        reply = client.chat.completions.create(model=MODEL_ID, messages=ask("Hello!"), tools=TOOLS, temperature=0,
                                               tool_choice=choice, max_tokens=80)
        calls = reply.choices[0].message.tool_calls
        assert calls and reply.choices[0].finish_reason == "tool_calls"
        assert calls[0].function.name in {"add", "get_weather"} and (name is None or calls[0].function.name == name)
        json.loads(calls[0].function.arguments)
    none = client.chat.completions.create(model=MODEL_ID, messages=ask("What is 318 + 527?"), tools=TOOLS,
                                          temperature=0, tool_choice="none")
    assert not none.choices[0].message.tool_calls and none.choices[0].finish_reason != "tool_calls"


def test_completions_with_response_format_and_a_gbnf_grammar(client, server):
    pytest.importorskip("llguidance")
    jsonschema = pytest.importorskip("jsonschema")
    reply = client.completions.create(model=MODEL_ID, prompt="Trip plan as JSON: ", max_tokens=60, temperature=0,
                                      extra_body={"response_format": {"type": "json_schema",
                                                                      "json_schema": {"name": "t", "schema": SCHEMA}}})
    jsonschema.validate(json.loads(reply.choices[0].text), SCHEMA)
    status, body = raw_request(server, "POST", "/v1/chat/completions", {
        "messages": ask("Answer yes or no."), "grammar": 'root ::= "yes" | "no"', "temperature": 0})
    assert status == 200 and body["choices"][0]["message"]["content"] in ("yes", "no")
