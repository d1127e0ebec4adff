"""Splitting generated text into reasoning, answer and tool calls, while it streams.

EXAONE writes reasoning inside `<think>...</think>` and tool calls as
`<tool_call>{"name": ..., "arguments": {...}}</tool_call>` lines. With thinking on, the prompt
already ends inside an open `<think>`, so the output starts in the reasoning state:
`starts_in_reasoning(prompt)` tells by checking whether the prompt's last `<think>` comes after
its last `</think>`.

`OutputSplitter.feed(text)` takes text in arbitrary pieces and returns events
`("reasoning", text)`, `("content", text)` and `("tool_call", raw_body)`. Markers never leak
into reasoning or content, even partially: any tail that could be the start of a marker is held
back until the next piece decides it. Each of reasoning and content is stripped as a whole --
leading whitespace is dropped and trailing whitespace is held until more text follows -- so the
concatenated deltas equal the final stripped field. `finish()` flushes the rest; an unclosed
tool call comes back as ("tool_call_unterminated", body). A stray `</think>` outside reasoning
is dropped.

`parse_tool_call(body, tool_names)` turns a tool-call body into an OpenAI-style call
`{"id", "type": "function", "function": {"name", "arguments": "<JSON string>"}}` or an error
entry `{"error": ..., "raw": body}`: malformed JSON or an unknown tool name never raises.
"""

from __future__ import annotations

import json
import uuid

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"

# state -> markers recognised in that state, and the state each one leads to (None: drop the marker)
TRANSITIONS = {
    "content": {THINK_OPEN: "reasoning", CALL_OPEN: "tool_call", THINK_CLOSE: None},
    "reasoning": {THINK_CLOSE: "content"},
    "tool_call": {CALL_CLOSE: "content"},
}


def starts_in_reasoning(prompt: str) -> bool:
    """True when the prompt leaves a <think> block open (thinking on)."""
    return prompt.rfind(THINK_OPEN) > prompt.rfind(THINK_CLOSE)


def partial_marker_length(text: str, markers) -> int:
    """Length of the longest tail of `text` that is a proper prefix of some marker."""
    for length in range(min(len(text), max(map(len, markers)) - 1), 0, -1):
        tail = text[-length:]
        if any(marker.startswith(tail) for marker in markers):
            return length
    return 0


class _StrippedChannel:
    """Emits a stream as if the whole text were .strip()ped at the end."""

    def __init__(self):
        self.started = False
        self.held_space = ""

    def push(self, text: str) -> str:
        if not self.started:
            text = text.lstrip()
            if not text:
                return ""
            self.started = True
        body = text.rstrip()
        if not body:
            self.held_space += text
            return ""
        out = self.held_space + body
        self.held_space = text[len(body):]
        return out


class OutputSplitter:
    def __init__(self, in_reasoning: bool):
        self.state = "reasoning" if in_reasoning else "content"
        self.pending = ""  # text not yet classified (may end with a partial marker)
        self.tool_body: list[str] = []
        self.channels = {"reasoning": _StrippedChannel(), "content": _StrippedChannel()}

    def _emit(self, text: str, events: list) -> None:
        if not text:
            return
        if self.state == "tool_call":
            self.tool_body.append(text)
            return
        out = self.channels[self.state].push(text)
        if out:
            events.append((self.state, out))

    def feed(self, text: str) -> list[tuple[str, str]]:
        events: list[tuple[str, str]] = []
        self.pending += text
        while self.pending:
            markers = TRANSITIONS[self.state]
            found = [(self.pending.find(m), m) for m in markers if m in self.pending]
            if not found:
                keep = partial_marker_length(self.pending, markers)
                self._emit(self.pending[: len(self.pending) - keep], events)
                self.pending = self.pending[len(self.pending) - keep:]
                break
            at, marker = min(found)
            self._emit(self.pending[:at], events)
            self.pending = self.pending[at + len(marker):]
            next_state = markers[marker]
            if self.state == "tool_call":
                events.append(("tool_call", "".join(self.tool_body)))
                self.tool_body = []
            if next_state is not None:
                self.state = next_state
        return events

    def finish(self) -> list[tuple[str, str]]:
        """Flush held text at the end of generation."""
        events: list[tuple[str, str]] = []
        self._emit(self.pending, events)
        self.pending = ""
        if self.state == "tool_call":
            events.append(("tool_call_unterminated", "".join(self.tool_body)))
            self.tool_body = []
        return events


def tool_names(tools) -> set[str] | None:
    """Names declared in an OpenAI-style tools list ({"type": "function", "function": {...}} or bare)."""
    if not tools:
        return None
    names = set()
    for tool in tools:
        spec = tool.get("function", tool) if isinstance(tool, dict) else {}
        if isinstance(spec, dict) and isinstance(spec.get("name"), str):
            names.add(spec["name"])
    return names


def _load_json_object(body: str):
    """The JSON value at the start of body (after whitespace), tolerating trailing junk."""
    text = body.strip()
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        start = text.find("{")
        if start < 0:
            raise
        value, _ = json.JSONDecoder().raw_decode(text, start)
        return value


def parse_tool_call(body: str, known_names: set[str] | None, terminated: bool = True) -> dict:
    """An OpenAI tool call dict, or {"error": message, "raw": body} when it cannot be used.

    known_names None means no tools were declared, so any name is accepted.
    """
    if not terminated:
        return {"error": "tool call was not closed with </tool_call>", "raw": body}
    try:
        call = _load_json_object(body)
    except json.JSONDecodeError as e:
        return {"error": f"malformed tool call JSON: {e}", "raw": body}
    except RecursionError:
        return {"error": "malformed tool call JSON: nested too deeply", "raw": body}
    if not isinstance(call, dict) or not isinstance(call.get("name"), str):
        return {"error": 'tool call must be a JSON object with a string "name"', "raw": body}
    name = call["name"]
    if known_names is not None and name not in known_names:
        return {"error": f"unknown tool {name!r} (declared: {', '.join(sorted(known_names))})", "raw": body}
    arguments = call.get("arguments", call.get("parameters", {}))
    if isinstance(arguments, str):  # a JSON-encoded object is unwrapped; plain text stays a JSON string
        try:
            arguments = json.loads(arguments)
        except (json.JSONDecodeError, RecursionError):
            pass
    try:
        encoded = json.dumps(arguments, ensure_ascii=False)
    except RecursionError:
        return {"error": "tool call arguments are nested too deeply", "raw": body}
    return {
        "id": f"call_{uuid.uuid4().hex[:24]}",
        "type": "function",
        "function": {"name": name, "arguments": encoded},
    }
