"""The `tinyexaone` command: a click group; each subcommand lives in its own module.

`main()` is the console-script entry point. It turns the project's own `TinyExaoneError` into one
line on stderr and exit code 2 (the same code click uses for bad flags), and Ctrl-C into exit
code 130, so users never see a traceback for a problem they caused. Output that cannot be
written (stdout closed, full, or a reader that went away) is one line on stderr and exit code 1.
"""

from __future__ import annotations

import contextlib
import os
import sys

import click

from tinyexaone.errors import TinyExaoneError
from tinyexaone.signals import exit_interrupted, interrupt_seen

from .bench import bench
from .chat import chat
from .generate import generate
from .info import info
from .pull import pull
from .quantize import quantize
from .serve import serve


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="tinyexaone")
def cli():
    """tinyexaone: run EXAONE 4.0 language models on the CPU."""


cli.add_command(bench)
cli.add_command(chat)
cli.add_command(generate)
cli.add_command(info)
cli.add_command(pull)
cli.add_command(quantize)
cli.add_command(serve)


def _output_lost(exc: OSError) -> None:
    """stdout is full or gone: one line on stderr, exit 1, and no second error while Python exits."""
    with contextlib.suppress(OSError, ValueError):
        sys.stdout = open(os.devnull, "w")  # the interpreter's final flush must not fail again
    message = "the output reader went away" if isinstance(exc, BrokenPipeError) else exc.strerror or str(exc)
    with contextlib.suppress(OSError, ValueError):
        click.echo(f"error: cannot write the output ({message})", err=True)
    sys.exit(1)


def main(argv=None):
    if sys.stdout is None:  # started with stdout closed (`>&-`): whatever it printed would be lost
        click.echo("error: standard output is closed", err=True)
        sys.exit(1)
    try:
        cli.main(args=argv, prog_name="tinyexaone", standalone_mode=False)
        sys.stdout.flush()
    except TinyExaoneError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:  # click turns a Ctrl-C inside a command into Abort
        exit_interrupted()
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        exit_interrupted()
    except OSError as exc:  # every file error of ours is a TinyExaoneError: this is stdout
        if interrupt_seen():
            exit_interrupted()
        _output_lost(exc)
    except Exception as exc:  # a Ctrl-C inside Numba's compiler can surface as its own error
        if interrupt_seen() or isinstance(exc.__cause__ or exc.__context__, KeyboardInterrupt):
            exit_interrupted()
        raise
    sys.exit(0)
