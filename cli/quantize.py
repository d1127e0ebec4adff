"""`tinyexaone quantize SRC OUT`: a Hugging Face model directory or a GGUF file into one compact file.

A thin click wrapper around `tinyexaone.quant.convert.convert` (Hugging Face directories) and
`tinyexaone.quant.gguf_convert.convert_gguf` (GGUF files: Q8_0 / Q4_0 tensors keep their codes,
other quantized types are requantized, each part keeping the file's precision unless its flag is
given); both stream, write under a temporary name and rename only when complete. For a Hugging
Face directory `--recipe` (mixed by default) and `--calibration FILE` choose the int4 recipe and
the activation weighting of the scale fit (convert.py); a GGUF source takes neither. Prints a progress
bar over tensors on stderr, then the file size, bits per weight, the worst per-tensor relative
error (for a GGUF: the error added to the file's own weights, and how many matrices were copied
exactly) and the time. An existing OUT without `--force`, or a SRC that is not a model, is a
one-line error (exit 2); Ctrl-C exits 130, SIGTERM 143 and SIGHUP 129, leaving no output file.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import click

from tinyexaone.errors import TinyExaoneError
from tinyexaone.gguf_source import is_gguf
from tinyexaone.quant.convert import convert
from tinyexaone.quant.gguf_convert import convert_gguf
from tinyexaone.signals import Terminated

DEFAULTS = {"bits": 4, "group_size": 32, "embedding_bits": 8}  # for a Hugging Face directory


@click.command()
@click.argument("src", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--bits", type=click.Choice(["4", "8"]), default=None,
              help="Bits per weight of the layer matrices [default: 4; a GGUF's own].")
@click.option("--group-size", type=click.Choice(["32", "64", "128"]), default=None,
              help="Weights sharing one scale [default: 32].")
@click.option("--embedding-bits", type=click.Choice(["8", "4"]), default=None,
              help="Bits of the embedding (also the output head) and of an untied lm_head [default: 8, but 6 "
                   "(int6k) in the mixed int4 recipe unless 4 is given; a GGUF's own].")
@click.option("--recipe", type=click.Choice(["mixed", "uniform"]), default="mixed", show_default=True,
              help="int4 only. mixed: the head, every k_proj/v_proj, the first and last eighth's down_proj "
                   "and layer 0's q_proj in 6 bits (int6k), the rest in int4k, where input sizes are multiples "
                   "of 256 (else int6 / int4 g32 and the head int8; docs/quantization.md); uniform: every layer matrix at --bits "
                   "and --group-size.")
@click.option("--calibration", type=click.Path(path_type=Path), default=None,
              help="UTF-8 text whose activations weight each input column's error in the scale fit "
                   "(Hugging Face sources; the first 4,096 tokens).")
@click.option("--force", is_flag=True, help="Overwrite OUT if it exists.")
def quantize(src: Path, out: Path, bits: str | None, group_size: str | None, embedding_bits: str | None,
             recipe: str, calibration: Path | None, force: bool):
    """Quantize the Hugging Face model directory or GGUF file SRC into the compact file OUT."""
    given = {name: int(value) for name, value in
             (("bits", bits), ("group_size", group_size), ("embedding_bits", embedding_bits)) if value is not None}
    from_gguf = is_gguf(src)
    try:
        if from_gguf:
            if calibration is not None:
                raise TinyExaoneError("--calibration needs a Hugging Face model directory, not a GGUF file")
            report = convert_gguf(src, out, force=force, **given)
        else:
            report = convert(src, out, force=force, mixed=recipe == "mixed", calibration=calibration,
                             **{**DEFAULTS, **given})
    except Terminated:
        click.echo("terminated; no output written", err=True)
        raise
    errors = report.relative_errors
    worst_name, worst = report.worst_error
    click.echo(f"wrote       {report.out}")
    click.echo(f"size        {report.file_bytes / 2**20:,.1f} MiB ({report.file_bytes:,} bytes)")
    click.echo(f"bits/weight {report.matrix_bits_per_weight:.3f} in quantized matrices (scales included), "
               f"{report.file_bits_per_weight:.3f} over the whole file")
    if from_gguf:
        exact = sum(1 for error in errors.values() if error == 0.0)
        click.echo(f"error       added to the GGUF's own weights: worst relative error {worst:.4f} ({worst_name}); "
                   f"{exact} of {len(errors)} matrices copied exactly")
    else:
        click.echo(f"error       worst relative error {worst:.4f} ({worst_name}); "
                   f"median {statistics.median(errors.values()):.4f} over {len(errors)} matrices")
    click.echo(f"time        {report.seconds:.1f} s")
