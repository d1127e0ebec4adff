"""`tinyexaone chat`: driven through a real pseudo-terminal (pexpect), through a pipe, and in process.

The pty and pipe tests run the installed command from outside the checkout, on the shipped demo
model when it is present (else on a tiny random model carrying the real EXAONE tokenizer). The
in-process tests drive `ChatApp` with a scripted stand-in model (exact replies: tool calls,
escape sequences, context overflow) and with the tiny real model (Ctrl-C during prefill and
decode, then checking the session still gives exactly what a fresh one gives).
"""

import json
import os
from pathlib import Path
import re
import signal
import sys
import time

import pexpect
import pytest

from cli_models import (FIXTURE, ScriptedChatModel, build_tiny_chat_model, cli, cli_env, one_thread, reset_sigint,
                        shipped_model)
from tinyexaone import load, load_tokenizer
from tinyexaone.cli.chat import ChatApp, check_conversation
from tinyexaone.cli.terminal import Style
from tinyexaone.cli.tools import load_tools

PROMPT = "> \x1b[0m"  # the coloured prompt's end, as the terminal receives it
STATS = re.compile(r"\[ prompt (\d+) tok(?: \((\d+) cached\))?, [\d.]+ tok/s \| reply (\d+) tok, [\d.]+ tok/s \| "
                   r"first token [\d.]+ s \]")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
TIMEOUT = 90
SLOW_CLI = Path(__file__).resolve().parent / "slow_cli.py"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return shipped_model() or build_tiny_chat_model(tmp_path_factory.mktemp("tiny") / "model")


def model_args(model_dir):
    """No --model for the shipped model (the default), else the tiny one."""
    return [] if model_dir == shipped_model() else ["--model", str(model_dir)]


def spawn(tmp_path, args, delay=None):
    """`tinyexaone chat ARGS` in a pseudo-terminal; with `delay`, each forward pass waits that long."""
    launcher = ["-m", "tinyexaone"] if delay is None else [str(SLOW_CLI), str(delay)]
    child = pexpect.spawn(sys.executable, [*launcher, *one_thread(["chat", *args])], cwd=str(tmp_path),
                          env=cli_env(tmp_path), encoding="utf-8", codec_errors="replace", timeout=TIMEOUT,
                          dimensions=(50, 250), preexec_fn=reset_sigint)
    child.logfile_read = open(tmp_path / "screen.log", "a", encoding="utf-8")
    return child


def say(child, text):
    """Send one message at the prompt; returns the stats match of the reply."""
    child.sendline(text)
    child.expect(STATS)
    stats = child.match
    child.expect_exact(PROMPT)
    return stats


def finish(child):
    child.expect(pexpect.EOF)
    child.close()
    return child.exitstatus


# --- through a pseudo-terminal --------------------------------------------------------------------------


def test_conversation_think_clear_save_load(model_dir, tmp_path):
    child = spawn(tmp_path, [*model_args(model_dir), "--max-tokens", "48", "--seed", "3"])
    child.expect("tinyexaone chat")
    if not model_args(model_dir):
        child.expect_exact("demo model shipped with tinyexaone")
    child.expect_exact(PROMPT)

    first = say(child, "What is 12 + 7?")
    assert first.group(2) is None  # nothing cached yet
    second = say(child, "What is 3 + 4?")
    # the first turn is reused, not prefilled again (up to its last token, "\n\n", which the template's
    # re-rendering of the reply may tokenize differently)
    assert int(second.group(2)) >= int(first.group(1)) - 1

    child.sendline("/think on")
    child.expect_exact("(thinking on)")
    child.expect_exact(PROMPT)
    child.sendline("What is 25 + 17?")
    child.expect_exact("[thinking]")
    child.expect(STATS)
    reasoning = ANSI.sub("", child.before).split("[end of thinking]")[0]
    assert re.search(r"\w", reasoning), "the reasoning should be visible"
    assert "\x1b[2m" in child.before  # and dimmed
    child.expect_exact(PROMPT)

    child.sendline("/save conv.json")
    child.expect_exact("(saved 6 messages to conv.json)")
    child.expect_exact(PROMPT)
    saved = json.loads((tmp_path / "conv.json").read_text())
    assert [m["role"] for m in saved["messages"]] == ["user", "assistant"] * 3
    assert saved["messages"][0]["content"] == "What is 12 + 7?" and saved["enable_thinking"] is True

    child.sendline("/clear")
    child.expect_exact("(new conversation)")
    child.expect_exact(PROMPT)
    child.sendline("/think off")
    child.expect_exact(PROMPT)
    fresh = say(child, "Hello!")
    assert fresh.group(2) is None  # a new conversation: nothing to reuse

    child.sendline("/load conv.json")
    child.expect_exact("(loaded 6 messages from conv.json; thinking on)")
    child.expect_exact("What is 25 + 17?")  # the transcript is shown again
    child.expect_exact(PROMPT)
    child.sendline("/save again.json")
    child.expect_exact(PROMPT)
    assert json.loads((tmp_path / "again.json").read_text()) == saved  # the round trip loses nothing
    after_load = say(child, "Thanks!")
    assert int(after_load.group(1)) > int(first.group(1))  # the loaded history is part of the prompt

    child.sendline("/exit")
    assert finish(child) == 0


def test_ctrl_c_stops_a_reply_and_the_session_goes_on(model_dir, tmp_path):
    child = spawn(tmp_path, [*model_args(model_dir), "--max-tokens", "30", "--seed", "5"], delay=0.15)
    child.expect_exact(PROMPT)
    child.sendline("/think on")
    child.expect_exact(PROMPT)
    child.sendline("What is 48 + 37?")
    child.expect_exact("[thinking]")
    child.expect_exact("\x1b[2m")  # the dimmed reasoning begins here
    child.expect(r"[^\s\x1b]")  # the first reasoning text has been shown (the model output is sanitised)
    child.sendintr()
    child.expect_exact("(stopped)")
    child.expect(STATS)
    stopped_tokens = int(child.match.group(3))
    assert 1 <= stopped_tokens < 30
    child.expect_exact(PROMPT)
    child.sendline("/think off")
    child.expect_exact(PROMPT)
    child.sendline("/save partial.json")
    child.expect_exact(PROMPT)
    messages = json.loads((tmp_path / "partial.json").read_text())["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant"]  # the partial reply is kept
    os.write(child.child_fd, b"What is 2 + 2? \xff\xfe\r")  # the chat goes on, even with invalid UTF-8 typed
    child.expect(STATS)
    child.expect_exact(PROMPT)
    child.sendline("/save after.json")
    child.expect_exact(PROMPT)
    messages = json.loads((tmp_path / "after.json").read_text())["messages"]
    assert messages[2] == {"role": "user", "content": "What is 2 + 2? \ufffd\ufffd"}
    child.sendcontrol("d")
    assert finish(child) == 0


@pytest.mark.parametrize("how", ["ctrl-d", "/exit", "ctrl-c", "sigterm"])
def test_clean_exits_at_the_prompt(model_dir, tmp_path, how):
    child = spawn(tmp_path, [*model_args(model_dir), "--no-color"])
    child.expect_exact("/help for commands")
    child.expect_exact("> ")
    if how == "ctrl-d":
        child.sendcontrol("d")
    elif how == "ctrl-c":
        child.sendintr()
    elif how == "sigterm":
        child.kill(signal.SIGTERM)
    else:
        child.sendline(how)
    assert finish(child) == {"sigterm": 143, "ctrl-c": 130}.get(how, 0)
    screen = (tmp_path / "screen.log").read_text()
    assert "Traceback" not in screen and "\x1b[2m" not in screen  # --no-color: no dimming codes


# --- through a pipe ---------------------------------------------------------------------------------------


def test_piped_stdin_prints_only_the_replies(model_dir, tmp_path):
    questions = "What is 12 + 7?\n\nWhat is 3 + 4?\n"
    result = cli("chat", *model_args(model_dir), "--temperature", "0", "-n", "24", cwd=tmp_path,
                 input=questions.encode() + b"What is \xff 5 + 5?\n")
    assert result.returncode == 0, result.stderr
    out, err = result.stdout.decode(), result.stderr.decode()
    assert "\x1b" not in out and "tinyexaone chat" not in out and "tok/s" not in out
    assert "input line 4 is not valid UTF-8" in err and "Traceback" not in err
    # the first reply is what `generate` gives for the same message and settings
    single = cli("generate", *model_args(model_dir), "-p", "What is 12 + 7?", "--temperature", "0", "-n", "24",
                 cwd=tmp_path)
    assert out.startswith(single.stdout.decode())
    assert len(out) > len(single.stdout)  # and more replies follow


def test_piped_overlong_line_is_reported_and_later_lines_still_run(model_dir, tmp_path):
    lines = ("word " * 20000).encode() + b"\nWhat is 1 + 1?\n"
    result = cli("chat", *model_args(model_dir), "--ctx-size", "512", "-n", "8", cwd=tmp_path, input=lines)
    err = result.stderr.decode()
    assert result.returncode == 1
    assert "does not fit the context" in err and "/clear" in err and "--ctx-size" in err and "Traceback" not in err
    assert err.count("error: ") == 1  # the second message was answered (an empty line marks the failed one)
    assert result.stdout.decode().startswith("\n") and result.stdout.decode().count("\n") >= 2


@pytest.mark.skipif(shipped_model() is None, reason="needs the trained demo model (a random model calls no tools)")
def test_piped_tool_use_on_the_demo_model(tmp_path):
    (tmp_path / "tools.py").write_text(TOOLS_SOURCE)
    result = cli("chat", "--tools", tmp_path / "tools.py", "--temperature", "0", cwd=tmp_path,
                 input=b"What is 123 + 456?\n")
    out, err = result.stdout.decode(), result.stderr.decode()
    assert result.returncode == 0, err
    assert '→ tool call add({"a": 123, "b": 456})' in err and "← 579" in err  # shown and run
    assert "579" in out  # the result went back to the model, which answered with it


def test_startup_errors_are_one_line(model_dir, tmp_path, capsys):
    broken = tmp_path / "broken_tools.py"
    broken.write_text("import no_such_module_for_tools\n")
    result = cli("chat", *model_args(model_dir), "--tools", broken, cwd=tmp_path, input=b"hi\n")
    err = result.stderr.decode()
    assert result.returncode == 2 and err.count("\n") == 1 and err.startswith("error: "), err
    assert "cannot import the tools file: ModuleNotFoundError: No module named 'no_such_module_for_tools'" in err
    from tinyexaone.cli.main import main

    for args, message in [
        (["--model", str(tmp_path / "nope")], "no such file or directory"),
        (["--top-k", "-3"], "invalid value for --top-k: '-3' (must be >= 0)"),
        (["--repetition-penalty", "0"], "invalid value for --repetition-penalty: '0' (must be >= 1e-06)"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            main(["chat", *model_args(model_dir), *args])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and err.count("\n") == 1 and err.startswith("error: ") and message in err


def test_threads_flag_sets_numba_threads():
    numba = pytest.importorskip("numba")
    from tinyexaone.cli.options import apply_threads

    before = numba.get_num_threads()
    try:
        assert apply_threads(1) == 1 and numba.get_num_threads() == 1
        most = numba.config.NUMBA_NUM_THREADS
        assert apply_threads(most + 50) == most and numba.get_num_threads() == most  # clamped
        assert apply_threads(None) is None
    finally:
        numba.set_num_threads(before)


# --- in process: the chat loop on a scripted model ---------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(FIXTURE)


def app_for(model, interactive=True, toolbox=None, **session_options):
    session = model.chat_session(tools=toolbox.schemas if toolbox else None, **session_options)
    return ChatApp(session, toolbox, Style(False), interactive, model.config.max_position_embeddings)


TOOLS_SOURCE = '''
def add(a: int, b: int) -> int:
    """Add two integers.

    Args:
        a: The first number.
        b: The second number.
    """
    return a + b


def explode(reason: str) -> str:
    """Always fails.

    Args:
        reason: Why.
    """
    raise ValueError(reason)
'''


def test_tool_calls_are_shown_run_and_fed_back(tokenizer, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("tinyexaone.chat._has_llguidance", lambda: False)  # unconstrained calls, so "nosuch" comes out
    (tmp_path / "tools.py").write_text(TOOLS_SOURCE)
    toolbox = load_tools(tmp_path / "tools.py")
    model = ScriptedChatModel(tokenizer, [
        '<tool_call>{"name": "add", "arguments": {"a": 2, "b": 3}}</tool_call>',
        '<tool_call>{"name": "explode", "arguments": {"reason": "bad\\u001b[31m input"}}</tool_call>'
        '<tool_call>{"name": "nosuch", "arguments": {}}</tool_call>',
        "The sum is 5, but explode failed.",
    ])
    app = app_for(model, toolbox=toolbox, temperature=0)
    app.turn("What is 2 + 3?")
    out = capsys.readouterr().out
    assert '→ tool call add({"a": 2, "b": 3})' in out and "← 5" in out
    assert "← error: explode() raised ValueError: bad^[[31m input" in out  # shown sanitised
    assert "! unusable tool call: unknown tool 'nosuch'" in out
    assert "The sum is 5, but explode failed." in out and out.count("[ prompt") == 3
    roles = [m["role"] for m in app.session.messages]
    assert roles == ["user", "assistant", "tool", "assistant", "tool", "assistant"]
    assert app.session.messages[2]["content"] == "5"
    assert app.session.messages[4]["content"].startswith("error: explode() raised ValueError")


def test_piped_tool_activity_goes_to_stderr(tokenizer, tmp_path, capsys):
    (tmp_path / "tools.py").write_text(TOOLS_SOURCE)
    model = ScriptedChatModel(tokenizer, ['<tool_call>{"name": "add", "arguments": {"a": 2, "b": 3}}</tool_call>',
                                          "It is 5.", "", "Bye."])
    app = app_for(model, interactive=False, toolbox=load_tools(tmp_path / "tools.py"))
    for message in ("What is 2 + 3?", "Say nothing.", "Bye!"):
        app.turn(message)
    captured = capsys.readouterr()
    assert captured.out == "It is 5.\n\nBye.\n"  # one line per reply, an empty reply included
    assert '→ tool call add({"a": 2, "b": 3})' in captured.err and "← 5" in captured.err
    assert "tok/s" not in captured.out + captured.err


def test_model_output_cannot_drive_the_terminal(tokenizer, capsys):
    hostile = "Hi\x1b]0;pwned\x07\x1b[2J\x1b[31mred\rover\x08\x9b1m\u202eevil\x00 end"
    app = app_for(ScriptedChatModel(tokenizer, [hostile]))
    app.turn("hello")
    out = capsys.readouterr().out
    for bad in ("\x1b", "\x07", "\r", "\x08", "\x9b", "\u202e", "\x00"):
        assert bad not in out
    assert "Hi^[]0;pwned^G^[[2J^[[31mredover^H<U+009B>1m<U+202E>evil^@ end" in out


def test_context_full_is_said_plainly(tokenizer, capsys):
    model = ScriptedChatModel(tokenizer, ["word " * 200], max_tokens=60)
    app = app_for(model)
    app.turn("hello")
    out = capsys.readouterr().out
    assert "context full: the conversation filled the 60-token context" in out
    assert "/clear" in out and "--ctx-size" in out
    app.turn("more")  # the next message no longer fits: said so, and the chat goes on
    out = capsys.readouterr().out
    assert "does not fit the context" in out and "/clear" in out
    app.command("/clear")
    app.turn("again")
    assert "context full" in capsys.readouterr().out  # after /clear the model can talk again


def test_commands(tokenizer, tmp_path, capsys):
    model = ScriptedChatModel(tokenizer, ["one", "two", "three", "four"])
    app = app_for(model)
    app.turn("first")
    app.command("/system Be brief.")
    assert app.session.messages[0] == {"role": "system", "content": "Be brief."}
    calls = model.forward_calls
    app.command("/regen")  # the reply to "first" is generated again (the scripted model repeats it)
    assert [m["content"] for m in app.session.messages] == ["Be brief.", "first", "one"]
    assert model.forward_calls > calls and capsys.readouterr().out.count("[ prompt") == 2
    assert app.command("/bogus") and "unknown command /bogus" in capsys.readouterr().out
    (tmp_path / "bad.json").write_text('{"format": "tinyexaone-chat", "messages": [{"role": "robot"}]}')
    app.command(f"/load {tmp_path / 'bad.json'}")
    assert "message 0 has no valid role" in capsys.readouterr().out
    assert len(app.session.messages) == 3  # a bad file leaves the conversation alone
    app.command(f"/load {tmp_path / 'missing.json'}")
    assert "cannot read" in capsys.readouterr().out
    app.command("/think")
    assert "(thinking off)" in capsys.readouterr().out
    app.command("/help")
    assert "/regen" in capsys.readouterr().out
    assert app.command("/exit") is False


def test_multiline_input(tokenizer):
    class Reader:
        def __init__(self, lines):
            self.lines = list(lines)

        def read(self, prompt):
            return self.lines.pop(0)

    app = app_for(ScriptedChatModel(tokenizer, ["ok"]))
    assert app._read_message(Reader(['"""', "line one", "", "line two", '"""'])) == "line one\n\nline two"
    assert app._read_message(Reader(['"""first', 'last"""'])) == "first\nlast"
    assert app._read_message(Reader(['"""one line"""'])) == "one line"
    assert app._read_message(Reader(["plain"])) == "plain"


def test_conversation_files_are_checked():
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": None, "tool_calls": []}]
    assert check_conversation(messages, "x") == (messages, None)
    with pytest.raises(Exception, match="content is not text"):
        check_conversation([{"role": "user", "content": 3}], "x")
    with pytest.raises(Exception, match="not a conversation saved by tinyexaone"):
        check_conversation({"messages": []}, "x")


# --- in process: Ctrl-C during prefill and decode on a real model ----------------------------------------


def test_ctrl_c_in_prefill_and_decode_leaves_the_session_usable(tmp_path, capsys, monkeypatch):
    model = load(build_tiny_chat_model(tmp_path / "tiny", seed=1))
    options = dict(temperature=0, max_new_tokens=6)
    weight = model.model.weights.layers[1].q_proj  # runs once per forward pass, after layer 0 has filled its cache
    matmul = weight.matmul
    plan = {"calls": 0, "presses": {}}

    def matmul_with_ctrl_c(x):
        plan["calls"] += 1
        for _ in range(plan["presses"].get(plan["calls"], 0)):
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C arrives in the middle of this forward pass
            time.sleep(0.02)
        return matmul(x)

    monkeypatch.setattr(weight, "matmul", matmul_with_ctrl_c)
    app = app_for(model, **options)
    app.turn("first question")
    reference_first = app.session.messages[-1]["content"]

    plan.update(calls=0, presses={1: 1})  # one press during the prefill: the reply stops before any token
    app.turn("second question")
    out = capsys.readouterr().out
    assert "(stopped)" in out and "reply 0 tok" in out
    plan.update(calls=0, presses={3: 2})  # two presses while decoding: interrupted inside the forward pass
    app.turn("third question")
    assert "(interrupted)" in capsys.readouterr().out
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # Ctrl-C at the prompt exits again

    plan.update(calls=0, presses={})
    app.turn("fourth question")
    # the session still works: its reply equals a fresh session's reply to the same conversation
    history = app.session.messages[:-1]
    fresh = model.chat_session(**options)
    fresh.messages = [dict(m) for m in history[:-1]]
    assert app.session.messages[-1]["content"] == fresh.send(history[-1]).message["content"]
    assert app.session.messages[1]["content"] == reference_first


def test_hostile_save_and_load_commands_keep_the_session(tokenizer, tmp_path, capsys):
    """/load and /save of things that are not conversations: one error line each, never a
    traceback, and the conversation so far stays."""
    app = app_for(ScriptedChatModel(tokenizer, ["first reply"]), temperature=0)
    app.turn("hello")
    nested = tmp_path / "nested.json"
    nested.write_text("[" * 100000 + "]" * 100000)
    bad_calls = tmp_path / "calls.json"
    bad_calls.write_text(json.dumps([{"role": "assistant", "content": "x", "tool_calls": ["x"]}]))
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    for command in (f"/load {nested}", f"/load {bad_calls}", "/load /dev/zero", f"/load {fifo}", f"/load {tmp_path}",
                    "/save /", "/save .", f"/save {tmp_path}"):
        capsys.readouterr()
        assert app.command(command)
        out = capsys.readouterr().out
        assert "error: " in out and out.count("\n") == 1, (command, out)
    assert [m["content"] for m in app.session.messages] == ["hello", "first reply"]


def test_piped_lines_are_read_with_bounded_memory(monkeypatch):
    import io

    from tinyexaone.cli import chat as chat_cli

    monkeypatch.setattr(chat_cli, "MAX_INPUT_BYTES", 10)
    stream = io.BytesIO(b"short\n" + b"x" * 35 + b"\nlast line\nend")
    assert list(chat_cli._bounded_lines(stream)) == [b"short\n", None, b"last line\n", b"end"]
