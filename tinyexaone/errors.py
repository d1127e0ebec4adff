"""The project's own error type.

Every problem caused by the user's input -- a missing or malformed model file, a config that
contradicts itself, a prompt that does not fit the context -- is raised as `TinyExaoneError`
with a one-line message that names the problem. The CLI prints that line to stderr and exits
non-zero; anything else escaping is a bug in tinyexaone.
"""


class TinyExaoneError(Exception):
    """A clear, one-line, user-facing error (bad model file, bad config, bad input)."""
