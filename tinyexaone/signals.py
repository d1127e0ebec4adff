"""SIGTERM as an exception, so that what runs in the main thread cleans up before the process ends.

`sigterm_raises()` is a context manager: inside it, in the main thread, SIGTERM raises
`SystemExit(143)` (128 + 15, the shell's code for a process ended by SIGTERM), so `finally`
blocks run (a half-written file is removed, a cache rolled back) and the process exits with
that code; on leaving, the previous handler is back. Outside the main thread it does nothing
(Python delivers signals to the main thread only). `install_sigterm_exit()` sets the same
handler for the rest of the process (the CLI's commands).
"""

from __future__ import annotations

import contextlib
import signal
import threading

SIGTERM_EXIT_CODE = 128 + signal.SIGTERM


def _raise_exit(signum, frame):
    raise SystemExit(128 + signum)


def install_sigterm_exit() -> None:
    """From now on, SIGTERM raises SystemExit(143) in the main thread."""
    signal.signal(signal.SIGTERM, _raise_exit)


@contextlib.contextmanager
def sigterm_raises():
    """While inside, SIGTERM raises SystemExit(143) (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_exit)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
