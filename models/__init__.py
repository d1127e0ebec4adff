"""Models shipped with tinyexaone (installed as `tinyexaone.models`): data only, no code."""
