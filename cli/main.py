"""The `tinyexaone` command: a click group; each subcommand lives in its own module.

`main()` is the console-script entry point. It turns the project's own `TinyExaoneError` into one
line on stderr and exit code 2 (the same code click uses for bad flags), and Ctrl-C into exit
code 130, so users never see a traceback for a problem they caused.
"""

from __future__ import annotations

import sys

import click

from tinyexaone.errors import TinyExaoneError

from .bench import bench
from .chat import chat
from .generate import generate
from .info import info
from .quantize import quantize


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="tinyexaone")
def cli():
    """tinyexaone: run EXAONE 4.0 language models on the CPU."""


cli.add_command(bench)
cli.add_command(chat)
cli.add_command(generate)
cli.add_command(info)
cli.add_command(quantize)


def main(argv=None):
    try:
        cli.main(args=argv, prog_name="tinyexaone", standalone_mode=False)
    except TinyExaoneError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(0)
    sys.exit(0)
