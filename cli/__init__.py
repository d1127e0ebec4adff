"""Command-line interface of tinyexaone (installed as `tinyexaone.cli`)."""
