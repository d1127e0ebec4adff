"""`tinyexaone serve`: an OpenAI-compatible HTTP server over the standard library's ThreadingHTTPServer.

`Server(engine, host, port, api_key, cors)` answers, one thread per connection:
`POST /v1/chat/completions` and `POST /v1/completions` (JSON, or server-sent events ending with
`data: [DONE]` when `stream` is true), `GET /v1/models`, `GET /health`, and `GET /` (the chat
page, chat_page.html). The standard library is enough here (as in mlx-lm's server): HTTP/1.1
parsing and threads come from http.server, JSON from json, and an SSE event is one
`data: <json>` line and a blank line. Bodies are decoded as JSON, checked by openai_api.py
and run by engine.py; every failure is OpenAI's error JSON with its status (400, 401, 404, 405,
413, 429, 500, 503), and the log gets one line per request, never a traceback (an unexpected
exception is a 500 whose message names only its type). Security: the default host is
127.0.0.1; with an API key every `/v1` request needs `Authorization: Bearer KEY` (compared in
constant time, else 401); bodies over `MAX_BODY_BYTES` are refused with 413 before they are
read; there is no CORS header unless `cors` names an origin; no request names a file. A client
that disconnects is noticed before the next forward pass (a readable socket with nothing to
read), which ends its generation; a client that stalls for `Handler.timeout` seconds in the
middle of a read or write is dropped. `shutdown_cleanly()` stops accepting, cancels every
generation (each open stream gets a final error event) and stops the engine.
"""

from __future__ import annotations

import hmac
import json
import select
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from time import perf_counter

from . import __version__
from .engine import ClientGone, Engine
from .errors import TinyExaoneError
from .openai_api import (
    ApiError, assistant_message, chat_chunk, chat_completion, error_body, legacy_logprobs, logprob_content, new_id,
    now, parse_chat_request, parse_completion_request, text_completion, usage, usage_chunk,
)

MAX_BODY_BYTES = 8 << 20


def shutting_down() -> ApiError:
    return ApiError(503, "the server is shutting down", code="shutting_down")


def usage_of(stats: dict) -> dict:
    """OpenAI's usage object from a run's stats (cached = prompt tokens the cache already held)."""
    return usage(stats["prompt_tokens"], stats["generated_tokens"], stats["prompt_tokens"] - stats["prefilled_tokens"])


def _peer_gone(connection: socket.socket) -> bool:
    """True when the client closed its side: the socket reads as ready but holds no data."""
    try:
        readable, _, _ = select.select([connection], [], [], 0)
        if not readable:
            return False
        return connection.recv(1, socket.MSG_PEEK) == b""
    except (OSError, ValueError):
        return True


class Handler(BaseHTTPRequestHandler):
    """One connection's requests; `self.server` is the Server."""

    protocol_version = "HTTP/1.1"
    server_version = f"tinyexaone/{__version__}"
    timeout = 120  # seconds a socket read or write may block: a stalled client frees its thread
    server: Server

    # --- plumbing --------------------------------------------------------------------------------------

    def log_message(self, format, *args) -> None:  # noqa: A002 -- the base class's name
        self.server.log(f"{self.address_string()} {format % args}")

    def _headers(self, status: int, content_type: str, length: int | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        if length is not None:
            self.send_header("Content-Length", str(length))
        else:  # an event stream: its end is the end of the connection
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Connection", "close")
            self.close_connection = True
            self._streaming = True
        if self.server.cors:
            self.send_header("Access-Control-Allow-Origin", self.server.cors)
        self.end_headers()

    def _send_json(self, status: int, payload: dict) -> None:
        data = json.dumps(payload, ensure_ascii=False).encode("utf-8")
        self._headers(status, "application/json", len(data))
        self.wfile.write(data)

    def _send_error(self, error: ApiError) -> None:
        self._send_json(error.status, error_body(error))

    def _event(self, payload) -> None:
        """One server-sent event; raises ClientGone when the client has left."""
        data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
        try:
            self.wfile.write(f"data: {data}\n\n".encode("utf-8"))
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, OSError):
            raise ClientGone() from None

    def _alive(self) -> bool:
        return not _peer_gone(self.connection)

    def _authorized(self) -> bool:
        key = self.server.api_key
        if key is None:
            return True
        given = self.headers.get("Authorization", "")
        return hmac.compare_digest(given.encode("utf-8", "replace"), f"Bearer {key}".encode("utf-8"))

    def _body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            self.close_connection = True
            raise ApiError(411, "chunked request bodies are not supported: send Content-Length")
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self.close_connection = True
            raise ApiError(411, "a Content-Length header is required") from None
        if length < 0 or length > MAX_BODY_BYTES:
            self.close_connection = True  # the unread body must not be taken for the next request
            raise ApiError(413, f"the request body is {length} bytes; the limit is {MAX_BODY_BYTES}",
                           code="request_too_large")
        raw = self.rfile.read(length)
        try:
            return json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            raise ApiError(400, f"the request body is not valid JSON: {exc}"[:200], code="invalid_json") from None

    def _fail(self, error: ApiError) -> None:
        """The error as a response, or as the last event of a stream already under way."""
        if not self._streaming:
            self._send_error(error)
            return
        try:
            self._event(error_body(error))
            self._event("[DONE]")
        except ClientGone:
            pass

    def _guarded(self, route) -> None:
        started = perf_counter()
        self._streaming = False
        try:
            route()
        except ApiError as error:
            self._fail(error)
        except ClientGone:
            self.close_connection = True
            self.server.log(f"{self.address_string()} client disconnected after {perf_counter() - started:.1f} s")
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as exc:  # noqa: BLE001 -- one line in the log, OpenAI's error JSON to the client
            self.server.log(f"{self.address_string()} internal error: {type(exc).__name__}: {exc}"[:300])
            self._fail(ApiError(500, f"internal server error ({type(exc).__name__})"))

    # --- routes ----------------------------------------------------------------------------------------

    def do_OPTIONS(self) -> None:  # noqa: N802 -- http.server's naming
        if not self.server.cors:
            self._send_error(ApiError(405, "OPTIONS is not allowed (start the server with --cors ORIGIN)"))
            return
        self.send_response(204)
        self.send_header("Access-Control-Allow-Origin", self.server.cors)
        self.send_header("Access-Control-Allow-Methods", "GET, POST, OPTIONS")
        self.send_header("Access-Control-Allow-Headers", "Authorization, Content-Type")
        self.send_header("Access-Control-Max-Age", "600")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self) -> None:  # noqa: N802
        self._guarded(self._get)

    def do_POST(self) -> None:  # noqa: N802
        self._guarded(self._post)

    def _get(self) -> None:
        path = self.path.split("?", 1)[0]
        if path in ("/", "/index.html"):
            page = self.server.page()
            self._headers(200, "text/html; charset=utf-8", len(page))
            self.wfile.write(page)
        elif path == "/health":
            status = 503 if self.server.closing else 200
            self._send_json(status, {"status": "shutting down" if status == 503 else "ok"})
        elif path.startswith("/v1/"):
            if not self._authorized():
                raise ApiError(401, "invalid or missing API key (send Authorization: Bearer KEY)",
                               code="invalid_api_key")
            if path == "/v1/models":
                self._send_json(200, {"object": "list", "data": [self.server.model_card()]})
            elif path == f"/v1/models/{self.server.engine.model_id}":
                self._send_json(200, self.server.model_card())
            elif path.startswith("/v1/models/"):
                raise ApiError(404, f"the model {path[len('/v1/models/'):]!r:.80} does not exist",
                               code="model_not_found")
            else:
                raise ApiError(404, f"no such endpoint: GET {path[:80]}", code="not_found")
        else:
            raise ApiError(404, f"no such endpoint: GET {path[:80]}", code="not_found")

    def _post(self) -> None:
        path = self.path.split("?", 1)[0]
        if path not in ("/v1/chat/completions", "/v1/completions", "/chat/completions", "/completions"):
            raise ApiError(404, f"no such endpoint: POST {path[:80]}", code="not_found")
        if not self._authorized():
            self.close_connection = True
            raise ApiError(401, "invalid or missing API key (send Authorization: Bearer KEY)", code="invalid_api_key")
        body = self._body()
        if self.server.closing:
            raise shutting_down()
        engine = self.server.engine
        if path.endswith("/chat/completions"):
            prepared = engine.prepare_chat(parse_chat_request(body, engine.model_id))
            self._chat(prepared)
        else:
            prepared = engine.prepare_completion(parse_completion_request(body, engine.model_id))
            self._completion(prepared)

    # --- chat ------------------------------------------------------------------------------------------

    def _token_text(self, token_id: int) -> str:
        return self.server.engine.tokenizer.token_bytes(token_id).decode("utf-8", "replace")

    def _new_logprobs(self, prepared, sent: int) -> tuple[list | None, int]:
        """logprobs.content entries of the tokens sampled since `sent` (None when not asked)."""
        if not prepared.request.logprobs or prepared.turn is None or prepared.turn.run is None:
            return None, sent
        entries = prepared.turn.run.logprobs or []
        eos = set(self.server.engine.tokenizer.eos_token_ids)
        fresh = [e for e in entries[sent:] if e is not None and e["id"] not in eos]
        return logprob_content(fresh, self._token_text), len(entries)

    def _chat(self, prepared) -> None:
        engine, request = self.server.engine, prepared.request
        completion_id, created = new_id("chatcmpl"), now()
        events = engine.run(prepared, self._alive)
        try:
            if not request.stream:
                done = None
                for event in events:
                    if event["type"] == "done":
                        done = event
                self._send_json(200, self._chat_response(prepared, completion_id, created, done))
                return
            self._chat_stream(prepared, events, completion_id, created)
        except TinyExaoneError as exc:
            raise self._generation_error(exc) from None
        finally:
            events.close()

    def _generation_error(self, exc: TinyExaoneError) -> ApiError:
        """What a failed generation answers: 503 when the server is stopping, else the error as a 400."""
        return shutting_down() if self.server.closing else ApiError(400, str(exc))

    def _chat_response(self, prepared, completion_id, created, done) -> dict:
        if done["finish_reason"] == "cancelled" and self.server.closing:
            raise shutting_down()
        logprobs, _ = self._new_logprobs(prepared, 0)
        message = assistant_message(done["message"], self.server.reasoning_format)
        stats = done["stats"]
        return chat_completion(completion_id, created, self.server.engine.model_id, message, done["finish_reason"],
                               usage_of(stats), logprobs)

    def _chat_stream(self, prepared, events, completion_id, created) -> None:
        model_id, reasoning_format = self.server.engine.model_id, self.server.reasoning_format
        started = False
        sent_logprobs, calls, in_reasoning = 0, 0, False

        def chunk(delta, finish=None, logprobs=None):
            return chat_chunk(completion_id, created, model_id, delta, finish, logprobs)

        for event in events:
            if not started:  # headers only once the first event proves the request runs
                self._headers(200, "text/event-stream")
                self._event(chunk({"role": "assistant", "content": ""}))
                started = True
            kind = event["type"]
            if kind == "done":
                break
            logprobs, sent_logprobs = self._new_logprobs(prepared, sent_logprobs)
            if kind == "reasoning":
                if reasoning_format == "none":
                    delta = {"content": ("<think>\n" if not in_reasoning else "") + event["delta"]}
                else:
                    delta = {reasoning_format: event["delta"]}
                in_reasoning = True
            elif kind == "content":
                prefix = "\n</think>\n\n" if in_reasoning and reasoning_format == "none" else ""
                in_reasoning = False
                delta = {"content": prefix + event["delta"]}
            elif kind == "tool_call":
                call = event["tool_call"]
                delta = {"tool_calls": [{"index": calls, "id": call["id"], "type": "function",
                                         "function": dict(call["function"])}]}
                calls += 1
            else:  # a tool call that does not parse stays visible as the text the model wrote
                delta = {"content": f"<tool_call>{event['error']['raw']}</tool_call>"}
            self._event(chunk(delta, logprobs=logprobs))
        else:
            return
        if event["finish_reason"] == "cancelled" and self.server.closing:
            raise shutting_down()
        self._event(chunk({}, event["finish_reason"]))
        if prepared.request.include_usage:
            stats = event["stats"]
            self._event(usage_chunk(completion_id, created, model_id,
                                    usage_of(stats),
                                    "chat.completion.chunk"))
        self._event("[DONE]")

    # --- completions -----------------------------------------------------------------------------------

    def _completion(self, prepared) -> None:
        engine, request = self.server.engine, prepared.request
        completion_id, created, model_id = new_id("cmpl"), now(), engine.model_id
        events = engine.run(prepared, self._alive)
        eos = set(engine.tokenizer.eos_token_ids)
        try:
            started, text, sent = False, [], 0
            for event in events:
                if event["type"] == "done":
                    break
                text.append(event["delta"])
                if request.stream:
                    if not started:
                        self._headers(200, "text/event-stream")
                        started = True
                    logprobs = None
                    if request.logprobs is not None:
                        entries = prepared.generation.logprobs or []
                        logprobs = legacy_logprobs([e for e in entries[sent:] if e and e["id"] not in eos],
                                                   self._token_text)
                        sent = len(entries)
                    self._event(text_completion(completion_id, created, model_id, event["delta"], None,
                                                logprobs=logprobs))
            else:
                return
            if event["finish_reason"] == "cancelled" and self.server.closing:
                raise shutting_down()
            stats = event["stats"]
            usage_ = usage_of(stats)
            if not request.stream:
                logprobs = None
                if request.logprobs is not None:
                    logprobs = legacy_logprobs([e for e in event["logprobs"] or () if e and e["id"] not in eos],
                                               self._token_text)
                self._send_json(200, text_completion(completion_id, created, model_id, "".join(text),
                                                     event["finish_reason"], usage_, logprobs))
                return
            if not started:
                self._headers(200, "text/event-stream")
            self._event(text_completion(completion_id, created, model_id, "", event["finish_reason"]))
            if request.include_usage:
                self._event(usage_chunk(completion_id, created, model_id, usage_, "text_completion"))
            self._event("[DONE]")
        except TinyExaoneError as exc:
            raise self._generation_error(exc) from None
        finally:
            events.close()


class Server(ThreadingHTTPServer):
    """The HTTP server; see the module docstring."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, engine: Engine, host: str = "127.0.0.1", port: int = 8080, api_key: str | None = None,
                 cors: str | None = None, reasoning_format: str = "reasoning_content", log=None):
        self.engine = engine
        self.api_key = api_key or None
        self.cors = cors
        self.reasoning_format = reasoning_format
        self.closing = False
        self._log = log or (lambda line: print(line, file=sys.stderr, flush=True))
        self._page = None
        try:
            super().__init__((host, port), Handler)
        except OSError as exc:
            raise TinyExaoneError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None

    def log(self, line: str) -> None:
        self._log(line)

    def handle_error(self, request, client_address) -> None:
        exc = sys.exc_info()[1]
        self.log(f"{client_address[0]} connection error: {type(exc).__name__}: {exc}"[:300])

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def page(self) -> bytes:
        if self._page is None:
            self._page = resources.files("tinyexaone").joinpath("chat_page.html").read_bytes()
        return self._page

    def model_card(self) -> dict:
        return {"id": self.engine.model_id, "object": "model", "created": now(), "owned_by": "tinyexaone",
                "context_length": self.engine.context_size}

    def shutdown_cleanly(self) -> None:
        """Stop accepting, end every generation (streams get a final error event), stop the engine."""
        self.closing = True
        threading.Thread(target=self.shutdown, daemon=True).start()
        self.engine.close()
        self.server_close()
