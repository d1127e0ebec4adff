"""The project's error types.

Every problem caused by the user's input -- a missing or malformed model file, a config that
contradicts itself, a prompt that does not fit the context -- is raised as `TinyExaoneError`
with a one-line message that names the problem. The CLI prints that line to stderr and exits
non-zero; anything else escaping is a bug in tinyexaone. Kinds of error a caller may want to
handle on their own are subclasses with the facts as attributes: `ContextOverflowError` (the
tokens needed and the context limit), so a caller never has to read the message to tell them
apart.
"""


class TinyExaoneError(Exception):
    """A clear, one-line, user-facing error (bad model file, bad config, bad input)."""


class ContextOverflowError(TinyExaoneError):
    """More than the context holds: `needed` against a `limit`, in tokens, or in bytes (characters
    for a template's output) when the text is refused by its size before it is tokenized."""

    def __init__(self, message: str, needed: int, limit: int):
        super().__init__(message)
        self.needed = needed
        self.limit = limit
