"""`tinyexaone quantize SRC OUT`: convert a Hugging Face model directory into one compact file.

A thin click wrapper around `tinyexaone.quant.convert.convert` (which streams, writes under a
temporary name and renames only when complete). Prints a progress bar over tensors on stderr,
then the file size, bits per weight, the worst per-tensor relative error and the time. An
existing OUT without `--force`, or a SRC that is not a model, is a one-line error (exit 2);
Ctrl-C exits 130, SIGTERM 143 and SIGHUP 129, leaving no output file.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import click

from tinyexaone.quant.convert import convert
from tinyexaone.signals import Terminated


@click.command()
@click.argument("src", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--bits", type=click.Choice(["4", "8"]), default="4", show_default=True,
              help="Bits per weight of the layer matrices.")
@click.option("--group-size", type=click.Choice(["32", "64", "128"]), default="32", show_default=True,
              help="Weights sharing one scale.")
@click.option("--embedding-bits", type=click.Choice(["8", "4"]), default="8", show_default=True,
              help="Bits of the embedding (also the output head) and of an untied lm_head.")
@click.option("--force", is_flag=True, help="Overwrite OUT if it exists.")
def quantize(src: Path, out: Path, bits: str, group_size: str, embedding_bits: str, force: bool):
    """Quantize the Hugging Face model directory SRC into the compact file OUT."""
    try:
        report = convert(src, out, bits=int(bits), group_size=int(group_size), embedding_bits=int(embedding_bits),
                         force=force)
    except Terminated:
        click.echo("terminated; no output written", err=True)
        raise
    errors = report.relative_errors
    worst_name, worst = report.worst_error
    click.echo(f"wrote       {report.out}")
    click.echo(f"size        {report.file_bytes / 2**20:,.1f} MiB ({report.file_bytes:,} bytes)")
    click.echo(f"bits/weight {report.matrix_bits_per_weight:.3f} in quantized matrices (scales included), "
               f"{report.file_bits_per_weight:.3f} over the whole file")
    click.echo(f"error       worst relative error {worst:.4f} ({worst_name}); "
               f"median {statistics.median(errors.values()):.4f} over {len(errors)} matrices")
    click.echo(f"time        {report.seconds:.1f} s")
