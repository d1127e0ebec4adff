"""Offline quantizer of tinyexaone (installed as `tinyexaone.quant`)."""
