"""`tinyexaone pull REPO [--revision R] [--quantize 4|8]`: download a model from the Hugging Face Hub.

REPO is `ORG/NAME`, or `ORG/NAME:TAG` for one file of a GGUF repository (tinyexaone/hub.py says
which files are fetched and how the cache, HF_ENDPOINT, HF_TOKEN and HF_HUB_OFFLINE are honoured).
It brings the cache up to date for the revision (files already there are not fetched again, a cut
download resumes) and prints where the model is. With `--quantize`, it also writes the compact
file of that commit next to the cache, `<repo cache>/tinyexaone/<commit>[-<gguf name>]-int<bits>.tx`
(Hugging Face weights: as `tinyexaone quantize` writes them by default, int4 in its mixed recipe; a GGUF: its layers at int<bits>,
Q8_0/Q4_0 copied where they fit, see quant/gguf_convert.py), or reuses it when it is already
there, and prints its path. Errors are one line (exit 2).
"""

from __future__ import annotations

from pathlib import Path

import click

from tinyexaone import hub
from tinyexaone.errors import TinyExaoneError
from tinyexaone.quant.convert import convert
from tinyexaone.quant.gguf_convert import convert_gguf


def compact_path(found: hub.HubModel, bits: int) -> Path:
    """Where `pull --quantize` keeps the compact file of `found`."""
    stem = f"{found.commit}-{found.path.stem}" if found.path.suffix == ".gguf" else found.commit
    return hub.repo_cache_dir(found.reference.repo_id) / "tinyexaone" / f"{stem}-int{bits}.tx"


@click.command()
@click.argument("repo")
@click.option("--revision", default=None, help="Branch, tag or commit of the repository [default: main].")
@click.option("--quantize", "bits", type=click.Choice(["4", "8"]), default=None,
              help="Also write the compact file at this many bits per layer weight.")
def pull(repo: str, revision: str | None, bits: str | None):
    """Download the model REPO (ORG/NAME or ORG/NAME:TAG) from the Hugging Face Hub into its cache."""
    reference = hub.parse_reference(repo, revision)
    if reference is None:
        raise TinyExaoneError(f"{repo[:80]!r} is not a Hugging Face repo id (ORG/NAME, or ORG/NAME:TAG for a GGUF file)")
    found = hub.pull(reference)
    click.echo(f"model       {found.path}")
    click.echo(f"commit      {found.commit}")
    if bits is None:
        click.echo(f"run it      tinyexaone chat --model {reference}")
        return
    out = compact_path(found, int(bits))
    if out.is_file():
        click.echo(f"compact     {out} (already written)")
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        if found.path.suffix == ".gguf":
            report = convert_gguf(found.path, out, bits=int(bits))
        else:
            report = convert(found.path, out, bits=int(bits), group_size=32, embedding_bits=8, mixed=True)
        click.echo(f"compact     {out} ({report.file_bytes / 2**20:,.1f} MiB, worst relative error "
                   f"{report.worst_error[1]:.4f})")
    click.echo(f"run it      tinyexaone chat --model {out}")
