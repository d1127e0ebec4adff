"""`tinyexaone chat`: an interactive conversation with a model, or a scriptable one over a pipe.

Interactive (stdin is a terminal): a banner naming the model (and saying when it is the shipped
demo model), then a `> ` prompt with readline editing and history. Each reply streams as it is
generated; reasoning is dimmed between `[thinking]` and `[end of thinking]` and stays out of
history (the chat template drops it); tool calls (`--tools FILE.py`) are shown, executed, and
their results fed back until the model answers. A dim stats line follows every reply. Commands:
see HELP. Ctrl-C during a reply stops it at the next token (a second Ctrl-C interrupts at once);
the partial reply stays in the conversation and the session goes on. Ctrl-C or Ctrl-D at the
prompt exits with code 130, Ctrl-D with 0, SIGTERM with 143 and SIGHUP with 129.

Piped (stdin is not a terminal): every non-empty input line is one user message; only the
replies are printed, each ending with one newline (a failed turn prints an empty reply), without
colours, banner, reasoning or stats; invalid UTF-8 is replaced (with a warning on stderr). Tool
activity and per-turn errors go to stderr; the exit code is 1 when any turn failed, else 0.

`--json-schema FILE` (or `--grammar FILE`, Lark or GBNF) constrains every answer (after any
reasoning) to JSON matching the schema (or to the grammar); tool calls stay possible with
`--tools`. A bad file or schema is an error (exit 2) before the chat starts.

Everything printed that the model (or a tool, or a loaded file) wrote goes through
`terminal.sanitize`, so escape sequences in it cannot take over the terminal.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
from pathlib import Path

import click

from tinyexaone.chat import ROLES
from tinyexaone.errors import ContextOverflowError, TinyExaoneError
from tinyexaone.signals import install_sigterm_exit

from .model_resolution import load_model
from .options import (MAX_INPUT_BYTES, apply_threads, context_size, generation_options, sampling_options,
                      structured_output, structured_output_options, valid_text)
from .terminal import ANSI_SEQUENCE, LineReader, Style, sanitize
from .tools import load_tools

MAX_TOOL_ROUNDS = 8  # model replies per user message when every reply asks for tools
MULTILINE = '"""'
SAVE_FORMAT = "tinyexaone-chat"
HELP = f"""\
/help              show this list
/exit              quit (also /quit, Ctrl-D, or Ctrl-C at the prompt)
/clear             start a new conversation (the system prompt stays)
/think on|off      turn reasoning on or off (/think alone shows it)
/system TEXT       set the system prompt (/system alone shows it)
/regen             generate the last reply again
/save FILE         save the conversation as JSON
/load FILE         continue a conversation saved with /save
{MULTILINE}                start a multi-line message; end it with another {MULTILINE} line
Ctrl-C stops a reply (twice: at once)."""


def format_stats(stats: dict) -> str:
    """One line: prompt tokens (reused from the cache) and tok/s, reply tokens and tok/s, TTFT."""
    reused = stats["prompt_tokens"] - stats["prefilled_tokens"]
    prompt = f"prompt {stats['prompt_tokens']} tok"
    if reused:
        prompt += f" ({reused} cached)"
    prompt += f", {stats['prompt_tokens_per_s']:.1f} tok/s"
    reply = f"reply {stats['generated_tokens']} tok, {stats['generation_tokens_per_s']:.1f} tok/s"
    first = stats.get("time_to_first_token_s")
    first_text = "first token -" if first is None else f"first token {first:.2f} s"
    return f"[ {prompt} | {reply} | {first_text} ]"


def _describe_call(call: dict) -> str:
    function = call.get("function", {})
    return f"{function.get('name')}({function.get('arguments', '')})"


def check_conversation(data, source: str) -> tuple[list, bool | None]:
    """(messages, enable_thinking or None) from a /save file's JSON, or a plain message list."""
    thinking = None
    if isinstance(data, dict):
        if data.get("format") != SAVE_FORMAT:
            raise TinyExaoneError(f"{source}: not a conversation saved by tinyexaone chat")
        thinking = data.get("enable_thinking")
        data = data.get("messages")
    if not isinstance(data, list):
        raise TinyExaoneError(f"{source}: expected a list of messages")
    for i, message in enumerate(data):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise TinyExaoneError(f"{source}: message {i} has no valid role (one of {', '.join(ROLES)})")
        if not isinstance(message.get("content"), (str, type(None))):
            raise TinyExaoneError(f"{source}: message {i} content is not text")
        calls = message.get("tool_calls") or []
        if not isinstance(calls, list) or not all(
                isinstance(call, dict) and isinstance(call.get("function", {}), dict) for call in calls):
            raise TinyExaoneError(f"{source}: message {i} tool_calls is not a list of tool-call objects")
    return data, thinking if isinstance(thinking, bool) else None


class _ReplyInterrupts:
    """While a reply runs: the first SIGINT cancels it at the next token, a second raises."""

    def __init__(self, session):
        self.session = session
        self.presses = 0
        self.previous = None

    def _handle(self, signum, frame):
        self.presses += 1
        if self.presses > 1:
            raise KeyboardInterrupt
        self.session.cancel()

    def __enter__(self):
        self.presses = 0
        self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc):
        signal.signal(signal.SIGINT, self.previous)
        return False


class ChatApp:
    """The conversation loop around one ChatSession; `run()` returns the exit code."""

    def __init__(self, session, toolbox, style: Style, interactive: bool, max_context: int):
        self.session = session
        self.toolbox = toolbox
        self.style = style
        self.interactive = interactive
        self.max_context = max_context
        self.at_line_start = True
        self.phase = None  # what the streamed text is: "reasoning", "content" or None
        self.failed_turns = 0
        self.regenerations = 0

    # --- output -------------------------------------------------------------------------------------

    def write(self, text: str) -> None:
        if text:
            sys.stdout.write(text)
            sys.stdout.flush()
            visible = ANSI_SEQUENCE.sub("", text)
            if visible:
                self.at_line_start = visible.endswith("\n")

    def line(self, text: str = "") -> None:
        """Print `text` on a line of its own."""
        if not self.at_line_start:
            self.write("\n")
        self.write(text + "\n")

    def note(self, text: str) -> None:
        """Say something about the session: on stdout when interactive, on stderr when piped."""
        if self.interactive:
            self.line(text)
        else:
            click.echo(text, err=True)

    # --- one user turn ----------------------------------------------------------------------------------

    def turn(self, payload, **options) -> None:
        """Send a user message (or tool results), show the reply, run requested tools, repeat."""
        self._rounds(payload, options)
        if not self.interactive:  # piped: every reply ends with exactly one newline, even an empty one
            self.write("\n")

    def _rounds(self, payload, options: dict) -> None:
        for _ in range(MAX_TOOL_ROUNDS):
            done = self._reply(payload, options)
            if done is None or done["finish_reason"] != "tool_calls":
                return
            if self.toolbox is None:
                self.note(self.style.warning("(the model asked for a tool, but no --tools file was given)"))
                return
            payload = self._run_tools(done["message"]["tool_calls"])
            if payload is None:
                return
        self.note(self.style.warning(f"(stopped after {MAX_TOOL_ROUNDS} rounds of tool calls)"))

    def _reply(self, payload, options: dict) -> dict | None:
        """Stream one model reply; returns its "done" event, or None if it failed or was interrupted."""
        done = events = None
        try:
            events = self.session.send(payload, stream=True, **options)
            if self.interactive:
                with _ReplyInterrupts(self.session):
                    done = self._show(events)
            else:
                done = self._show(events)
        except KeyboardInterrupt:
            if not self.interactive:  # piped: nobody to go on for; main() exits 130
                raise
            self.line(self.style.warning("(interrupted)"))
            return None
        except TinyExaoneError as exc:
            self.failed_turns += 1
            message = sanitize(str(exc))
            if isinstance(exc, ContextOverflowError):
                message += "; " + self._context_advice()
            self.note(self.style.error("error: ") + message)
            return None
        finally:
            if events is not None:
                events.close()  # an abandoned turn keeps what was generated, with a consistent cache
        if done is None:
            return None
        if self.interactive:
            self._after_reply(done)
        return done

    def _show(self, events) -> dict | None:
        self.phase = None
        try:
            for event in events:
                kind = event["type"]
                if kind == "reasoning" and self.interactive:
                    self._enter("reasoning")
                    self.write(sanitize(event["delta"]))
                elif kind == "content":
                    self._enter("content")
                    self.write(sanitize(event["delta"]))
                elif kind == "tool_call":
                    self._enter(None)
                    self.note(self.style.tool(f"→ tool call {sanitize(_describe_call(event['tool_call']))}"))
                elif kind == "tool_call_error":
                    self._enter(None)
                    self.note(self.style.warning(f"! unusable tool call: {sanitize(event['error']['error'])}"))
                elif kind == "done":
                    return event
            return None
        finally:
            self._enter(None)

    def _enter(self, phase: str | None) -> None:
        """Switch the streamed output between reasoning (dimmed, under a header), content and neither."""
        if phase == self.phase:
            return
        if self.phase == "reasoning":
            self.write(self.style.reset())
            self.line(self.style.dim("[end of thinking]"))
        if phase == "reasoning":
            self.line(self.style.dim("[thinking]"))
            self.write(self.style.start_dim())
        self.phase = phase

    def _after_reply(self, done: dict) -> None:
        if not self.at_line_start:
            self.write("\n")
        reason, stats = done["finish_reason"], done["stats"]
        if reason == "cancelled":
            self.line(self.style.warning("(stopped)"))
        elif reason == "length" and stats.get("context_full"):
            self.line(self.style.warning(f"context full: the conversation filled the {self.session.context_size}"
                                         f"-token context. {self._context_advice().capitalize()}."))
        elif reason == "length":
            self.line(self.style.warning("(reply cut at the --max-tokens limit)"))
        self.line(self.style.dim(format_stats(stats)))

    def _context_advice(self) -> str:
        now = self.session.context_size
        if now >= self.max_context:
            return f"use /clear to start a new conversation ({now} tokens is this model's maximum --ctx-size)"
        return (f"use /clear to start a new conversation, or restart with a larger --ctx-size "
                f"(now {now}, this model allows {self.max_context})")

    def _run_tools(self, calls: list) -> list | None:
        results = []
        try:
            for call in calls:
                text, ok = self.toolbox.call(call)
                shown = sanitize(text if len(text) <= 500 else text[:500] + "…")
                self.note(self.style.tool(f"← {shown}") if ok else self.style.warning(f"← {shown}"))
                results.append({"role": "tool", "tool_call_id": call.get("id"), "content": text})
        except KeyboardInterrupt:
            if not self.interactive:
                raise
            self.line(self.style.warning("(tool call interrupted)"))
            self.session.append({"role": "tool", "content": "error: interrupted by the user"})
            return None
        return results

    # --- commands ---------------------------------------------------------------------------------------

    def command(self, text: str) -> bool:
        """Run a /command; returns False when the chat should end."""
        name, _, argument = text.strip().partition(" ")
        argument = argument.strip()
        name = name.lower()
        if name in ("/exit", "/quit", "/bye"):
            return False
        if name in ("/help", "/?"):
            self.line(HELP)
        elif name == "/clear":
            self.session.reset()
            self.line(self.style.dim("(new conversation)"))
        elif name == "/think":
            self._think(argument)
        elif name == "/system":
            self._system(argument)
        elif name == "/regen":
            self._regen()
        elif name == "/save":
            self._save(argument)
        elif name == "/load":
            self._load(argument)
        else:
            self.line(self.style.warning(f"unknown command {sanitize(name)}; /help lists the commands"))
        return True

    def _think(self, argument: str) -> None:
        if argument.lower() in ("on", "off"):
            self.session.set_thinking(argument.lower() == "on")
        elif argument:
            self.line(self.style.warning("usage: /think on|off"))
            return
        self.line(self.style.dim(f"(thinking {'on' if self.session.enable_thinking else 'off'})"))

    def _system(self, argument: str) -> None:
        if not argument:
            current = self.session.system
            self.line(self.style.dim("(no system prompt)" if current is None else f"system: {sanitize(current)}"))
            return
        self.session.set_system(argument)
        self.line(self.style.dim("(system prompt set)"))

    def _regen(self) -> None:
        messages = self.session.messages
        last_user = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=None)
        if last_user is None:
            self.line(self.style.warning("nothing to regenerate yet"))
            return
        removed = self.session.truncate(last_user)
        self.regenerations += 1
        seed = self.session.default_options.get("seed")  # a fixed --seed would only repeat the same reply
        self.turn(removed[0], **({} if seed is None else {"seed": seed + self.regenerations}))
        if len(self.session.messages) <= last_user:  # the new reply failed: keep the old one
            self.session.replace_messages(messages)

    def _save(self, argument: str) -> None:
        if not argument:
            self.line(self.style.warning("usage: /save FILE"))
            return
        path = Path(argument).expanduser()
        if path.is_dir() or not path.name:
            self.line(self.style.error("error: ") + sanitize(f"cannot save to {path}: it is a directory"))
            return
        data = {"format": SAVE_FORMAT, "version": 1, "enable_thinking": self.session.enable_thinking,
                "messages": self.session.messages}
        temporary = path.with_name(path.name + ".partial")
        try:
            temporary.write_text(json.dumps(data, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
            temporary.replace(path)
        except (OSError, RecursionError) as exc:
            with contextlib.suppress(OSError):
                temporary.unlink(missing_ok=True)
            reason = getattr(exc, "strerror", None) or "the conversation is nested too deeply"
            self.line(self.style.error("error: ") + sanitize(f"cannot save to {path}: {reason}"))
            return
        self.line(self.style.dim(f"(saved {len(self.session.messages)} messages to {sanitize(str(path))})"))

    def _load(self, argument: str) -> None:
        if not argument:
            self.line(self.style.warning("usage: /load FILE"))
            return
        path = Path(argument).expanduser()
        try:
            if not path.exists():
                raise TinyExaoneError(f"cannot read {path}: no such file")
            if not path.is_file():  # a directory, a FIFO or /dev/zero would never end or never load
                raise TinyExaoneError(f"{path}: not a regular file")
            if path.stat().st_size > MAX_INPUT_BYTES:
                raise TinyExaoneError(f"{path}: larger than {MAX_INPUT_BYTES >> 20} MB, not a saved chat")
            data = json.loads(path.read_text(encoding="utf-8"))
            messages, thinking = check_conversation(data, str(path))
        except OSError as exc:
            self.line(self.style.error("error: ") + sanitize(f"cannot read {path}: {exc.strerror}"))
            return
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            self.line(self.style.error("error: ") + sanitize(f"{path}: not a JSON file (or nested too deeply)"))
            return
        except TinyExaoneError as exc:
            self.line(self.style.error("error: ") + sanitize(str(exc)))
            return
        self.session.reset()
        self.session.replace_messages(messages)
        if thinking is not None:
            self.session.set_thinking(thinking)
        self.line(self.style.dim(f"(loaded {len(messages)} messages from {sanitize(str(path))}; "
                                 f"thinking {'on' if self.session.enable_thinking else 'off'})"))
        self._transcript(messages)

    def _transcript(self, messages: list) -> None:
        for message in messages:
            role, content = message["role"], sanitize(message.get("content") or "")
            if role == "user":
                self.line(self.style.bold("you: ") + content)
            elif role == "system":
                self.line(self.style.dim(f"system: {content}"))
            elif role == "tool":
                self.line(self.style.tool(f"← {content}"))
            else:
                for call in message.get("tool_calls") or []:
                    self.line(self.style.tool(f"→ tool call {sanitize(_describe_call(call))}"))
                if content:
                    self.line(content)

    # --- input loops ------------------------------------------------------------------------------------

    def run(self) -> int:
        return self._interactive() if self.interactive else self._piped()

    def _interactive(self) -> int:
        reader = LineReader(self.style)
        try:
            while True:
                try:
                    text = self._read_message(reader)
                except EOFError:  # Ctrl-D: the end of the conversation
                    self.line()
                    return 0
                except KeyboardInterrupt:  # Ctrl-C at the prompt: interrupted, as the shell reports it
                    self.line()
                    return 130
                if text is None or not text.strip():
                    continue
                if text.lstrip().startswith("/") and "\n" not in text:
                    if not self.command(text):
                        return 0
                    continue
                self.turn(text)
        finally:
            reader.save()

    def _read_message(self, reader: LineReader) -> str | None:
        first = reader.read("> ")
        if not first.lstrip().startswith(MULTILINE):
            return first
        body = first.lstrip()[len(MULTILINE):]
        lines = []
        while True:
            if body.rstrip().endswith(MULTILINE):
                lines.append(body.rstrip()[: -len(MULTILINE)])
                return "\n".join(lines).strip("\n")
            lines.append(body)
            try:
                body = reader.read("... ")
            except KeyboardInterrupt:  # abandons the multi-line message, not the chat
                self.line(self.style.dim("(discarded)"))
                return None

    def _piped(self) -> int:
        for number, raw in enumerate(_bounded_lines(sys.stdin.buffer), start=1):
            if raw is None:
                self.failed_turns += 1
                click.echo(f"error: input line {number} is longer than {MAX_INPUT_BYTES >> 20} MB; skipped", err=True)
                self.write("\n")
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                text = raw.decode("utf-8", errors="replace")
                click.echo(f"warning: input line {number} is not valid UTF-8; invalid bytes were replaced", err=True)
            text = text.rstrip("\r\n")
            if text.strip():
                self.turn(text)
        return 1 if self.failed_turns else 0


def _bounded_lines(stream):
    """The lines of a binary stream, each read with at most MAX_INPUT_BYTES in memory; a longer
    line is read to its end and given as None."""
    while True:
        line = stream.readline(MAX_INPUT_BYTES + 1)
        if not line:
            return
        if len(line) <= MAX_INPUT_BYTES or line.endswith(b"\n"):
            yield line
            continue
        while line and not line.endswith(b"\n"):  # the rest of the overlong line
            line = stream.readline(MAX_INPUT_BYTES)
        yield None


def _banner(app: ChatApp, resolved, model, threads: int | None, toolbox) -> None:
    style = app.style
    config = model.config
    if resolved.shipped:
        name = (f"{resolved.label}, the tiny demo model shipped with tinyexaone ({resolved.path}); "
                f"pass --model for a real EXAONE 4.0")
    else:
        name = f"{resolved.label} ({resolved.kind})"
    app.line(style.bold("tinyexaone chat") + " · " + sanitize(name))
    details = [f"{config.num_hidden_layers} layers", f"vocab {config.vocab_size:,}",
               f"context {app.session.cache.max_tokens:,} tokens",
               f"thinking {'on' if app.session.enable_thinking else 'off'}"]
    if threads is not None:
        details.append(f"{threads} thread{'' if threads == 1 else 's'}")
    app.line(style.dim(" · ".join(details)))
    if toolbox is not None:
        app.line(style.dim(f"tools from {sanitize(str(toolbox.path))}: {', '.join(toolbox.functions)}"))
    app.line(style.dim("Type a message, /help for commands. Ctrl-C stops a reply; Ctrl-D or /exit quits."))


@click.command()
@generation_options
@structured_output_options
@click.option("--tools", "tools_file", type=click.Path(path_type=Path), default=None, metavar="FILE.py",
              help="Python file whose public top-level functions the model may call.")
@click.option("--no-color", is_flag=True, help="No colours (also when NO_COLOR is set or output is not a terminal).")
def chat(model, system, think, ctx_size, mmap, threads, tools_file, no_color, json_schema_file, grammar_file, **flags):
    """Chat with a model interactively (or one message per line through a pipe)."""
    install_sigterm_exit()
    system = valid_text(system, "--system")
    interactive = sys.stdin.isatty()
    if hasattr(sys.stdin, "reconfigure"):
        sys.stdin.reconfigure(errors="replace")  # invalid UTF-8 typed or pasted becomes U+FFFD
    color = interactive and sys.stdout.isatty() and not no_color and not os.environ.get("NO_COLOR")
    toolbox = load_tools(tools_file) if tools_file is not None else None
    structured = structured_output(json_schema_file, grammar_file, chat=True)
    threads_used = apply_threads(threads)
    loaded, resolved = load_model(model, mmap=mmap)
    options = {**sampling_options(flags), **structured}
    session = loaded.chat_session(system=system, tools=toolbox.schemas if toolbox else None, enable_thinking=think,
                                  context_size=context_size(loaded, ctx_size), **options)
    app = ChatApp(session, toolbox, Style(color), interactive, loaded.config.max_position_embeddings)
    if interactive:
        _banner(app, resolved, loaded, threads_used, toolbox)
    code = app.run()
    if code:
        sys.exit(code)
