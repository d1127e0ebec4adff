"""SIGTERM and SIGHUP as an exception, so that what runs in the main thread cleans up before the
process ends.

`sigterm_raises()` is a context manager: inside it, in the main thread, SIGTERM raises
`Terminated(143)` and SIGHUP `Terminated(129)` (128 + the signal number, the shell's code for a
process ended by it). `Terminated` is a `SystemExit`, so `finally` blocks run (a half-written
file is removed, a cache rolled back) and the process exits with that code, and code that
reports other failures (a tool's own exceptions) can still let it through by its type. On
leaving, the previous handlers are back. Outside the main thread it does nothing (Python
delivers signals to the main thread only). `install_sigterm_exit()` sets the same handlers for
the rest of the process (the CLI's commands). `exit_interrupted()` ends the process on Ctrl-C;
`redeliver_swallowed_interrupts()` makes sure a Ctrl-C that lands inside a C callback (Numba's
compiler calls back into Python through ctypes, which only reports what such a callback
raised) still reaches the main thread, and records every Ctrl-C, so that `interrupt_seen()`
tells an error the interrupt caused (Numba's cache failing on a compile the interrupt broke)
from a real one.
"""

from __future__ import annotations

import _thread
import contextlib
import os
import signal
import sys
import threading
import time

SIGNALS = (signal.SIGTERM, signal.SIGHUP)


class Terminated(SystemExit):
    """The process was asked to end by SIGTERM or SIGHUP; the exit code is 128 + the signal."""


def _raise_terminated(signum, frame):
    raise Terminated(128 + signum)


def install_sigterm_exit() -> None:
    """From now on, SIGTERM and SIGHUP raise Terminated in the main thread."""
    for signum in SIGNALS:
        signal.signal(signum, _raise_terminated)


_interrupts = {"seen": False, "hard_exit": False}


def interrupt_seen() -> bool:
    """Whether a Ctrl-C has reached this process since `redeliver_swallowed_interrupts()`."""
    return _interrupts["seen"]


def exit_interrupted() -> None:
    """Say "interrupted" on stderr and exit 130 (the command line's end on Ctrl-C); the `finally`
    blocks between the interrupt and here have run. An interrupt can leave objects half-built
    (an llvmlite module whose compilation it broke), whose destructors can fail or even crash
    the process while Python shuts down, so after `redeliver_swallowed_interrupts()` (the
    console script) the process ends at once, with its output flushed and its exit handlers run,
    skipping that teardown; elsewhere (the command run inside another program) it raises
    SystemExit(130), with such reports silenced."""
    sys.unraisablehook = lambda unraisable: None
    sys.stderr.write("interrupted\n")
    if not _interrupts["hard_exit"]:
        sys.exit(130)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    with contextlib.suppress(BaseException):
        import atexit

        atexit._run_exitfuncs()
    os._exit(130)


def _record_interrupt(signum, frame):
    _interrupts["seen"] = True
    raise KeyboardInterrupt


def _interrupt_main_soon() -> None:
    time.sleep(0.05)
    _thread.interrupt_main()


def redeliver_swallowed_interrupts() -> None:
    """From now on, a KeyboardInterrupt that Python could only report as "Exception ignored"
    (raised in a ctypes callback or a destructor) is raised again in the main thread instead of
    printed; every other such report goes to the previous hook. Ctrl-C raises KeyboardInterrupt
    as before and is recorded (`interrupt_seen`), and `exit_interrupted` ends the process at
    once. For the console script: call it from the main thread."""
    previous = sys.unraisablehook
    _interrupts["hard_exit"] = True
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _record_interrupt)

    def hook(unraisable):
        if isinstance(unraisable.exc_value, KeyboardInterrupt):
            _interrupts["seen"] = True
            # from another thread, a moment later: raised inside the hook it would only be reported
            # again (threading.Thread.start would even wait here, where the interrupt could land)
            _thread.start_new_thread(_interrupt_main_soon, ())
        else:
            previous(unraisable)

    sys.unraisablehook = hook


@contextlib.contextmanager
def sigterm_raises():
    """While inside, SIGTERM and SIGHUP raise Terminated (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, _raise_terminated) for signum in SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
