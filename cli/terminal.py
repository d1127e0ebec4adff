"""Terminal output and input for `chat`: safe text, optional colours, readline line editing.

`sanitize(text)` makes model output (or any text we did not write) harmless to print: every
control character except newline and tab -- ESC, backspace, bell, DEL, the C1 range
U+0080..U+009F -- and the bidirectional-override characters become visible caret or `<U+XXXX>`
notation (carriage returns are dropped), so an escape sequence in the output can neither recolour, move the cursor,
retitle the window nor hide text. It works per character, so it is safe on streamed chunks.
`Style` wraps text in ANSI colours only when colours are on. `LineReader` reads one line with
readline editing and history (history kept in `$XDG_STATE_HOME/tinyexaone/chat_history` when that
can be written), falling back to plain `input()`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import click

KEEP = {"\n", "\t"}
BIDI_CONTROLS = {*map(chr, range(0x202A, 0x202F)), *map(chr, range(0x2066, 0x206A)), "\u200e", "\u200f", "\u061c"}
HISTORY_LENGTH = 1000
ANSI_SEQUENCE = re.compile(r"\x1b\[[0-9;]*m")


def _visible(char: str) -> str:
    code = ord(char)
    if code < 0x20:
        return "^" + chr(code + 0x40)  # ESC -> ^[, CR -> ^M, BEL -> ^G
    if code == 0x7F:
        return "^?"
    return f"<U+{code:04X}>"


def _needs_escape(char: str) -> bool:
    code = ord(char)
    return (code < 0x20 and char not in KEEP) or 0x7F <= code <= 0x9F or char in BIDI_CONTROLS


_TABLE = {code: _visible(chr(code)) for code in [*range(0x20), *range(0x7F, 0xA0)] if _needs_escape(chr(code))}
_TABLE.update({ord(c): _visible(c) for c in BIDI_CONTROLS})
_TABLE[ord("\r")] = None  # dropped: it could only overwrite the line (and CRLF would show as ^M)


def sanitize(text: str) -> str:
    """`text` with every terminal control character replaced by a visible, inert notation."""
    return text.translate(_TABLE)


class Style:
    """ANSI styling that becomes the identity when colours are off."""

    def __init__(self, color: bool):
        self.color = color

    def _style(self, text: str, **kwargs) -> str:
        return click.style(text, **kwargs) if self.color else text

    def dim(self, text: str) -> str:
        return self._style(text, dim=True)

    def start_dim(self) -> str:
        """The code that dims everything printed until `reset()` (for streamed text)."""
        return "\x1b[2m" if self.color else ""

    def reset(self) -> str:
        return "\x1b[0m" if self.color else ""

    def bold(self, text: str) -> str:
        return self._style(text, bold=True)

    def prompt(self, text: str) -> str:
        return self._style(text, fg="green", bold=True)

    def tool(self, text: str) -> str:
        return self._style(text, fg="cyan")

    def warning(self, text: str) -> str:
        return self._style(text, fg="yellow")

    def error(self, text: str) -> str:
        return self._style(text, fg="red", bold=True)


def history_file() -> Path:
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state).expanduser() / "tinyexaone" / "chat_history"


class LineReader:
    """input() with readline editing and a persistent history when readline is available."""

    def __init__(self, style: Style):
        self.style = style
        try:
            import readline
        except ImportError:  # e.g. Windows without pyreadline
            readline = None
        self.readline = readline
        self.history = history_file()
        if readline is not None:
            readline.set_history_length(HISTORY_LENGTH)
            try:
                readline.read_history_file(self.history)
            except (OSError, UnicodeDecodeError):
                pass

    def read(self, prompt: str) -> str:
        """One line (without its newline); raises EOFError on Ctrl-D, KeyboardInterrupt on Ctrl-C."""
        styled = self.style.prompt(prompt)
        if self.readline is not None and styled != prompt:
            # readline must be told which bytes take no screen space, or it miscounts the prompt width
            styled = ANSI_SEQUENCE.sub("\x01\\g<0>\x02", styled)
        return input(styled)

    def save(self) -> None:
        if self.readline is None:
            return
        try:
            self.history.parent.mkdir(parents=True, exist_ok=True)
            self.readline.write_history_file(self.history)
        except OSError:
            pass
