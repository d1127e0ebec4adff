"""`python -m tinyexaone` runs the `tinyexaone` command."""

from tinyexaone.cli.entry import run

run()
