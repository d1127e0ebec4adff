"""The `tinyexaone` console script: import the command line, then run it.

`run()` does the imports (NumPy, Numba and the kernels take a moment) inside a handler, so a
Ctrl-C that lands while they load ends the process with "interrupted" and exit code 130, like
one that lands later, instead of a traceback. `tinyexaone/__init__.py` imports nothing itself,
which keeps this module's own import instant. `signals.exit_interrupted` is the one way the
command line ends on Ctrl-C.
"""

from tinyexaone.signals import exit_interrupted, interrupt_seen, redeliver_swallowed_interrupts


def run() -> None:
    redeliver_swallowed_interrupts()  # a Ctrl-C inside Numba's compiler callbacks ends the run too
    try:
        from .main import main
    except KeyboardInterrupt:
        exit_interrupted()
    except Exception:
        if interrupt_seen():
            exit_interrupted()
        raise
    main()
