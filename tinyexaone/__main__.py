"""`python -m tinyexaone` runs the `tinyexaone` command."""

from tinyexaone.cli.main import main

main()
