"""`tinyexaone info PATH`: what a model is, without running it.

Prints the config summary (sizes, layer kinds, RoPE, head tying), the tensor count and the
checkpoint size of a Hugging Face model directory, after validating every tensor against the
config. Reads no weight data.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import click

from tinyexaone.checkpoint import check_tensors, open_checkpoint
from tinyexaone.config import load_config
from tinyexaone.errors import TinyExaoneError


@click.command()
@click.argument("path", type=click.Path(path_type=Path))
def info(path: Path):
    """Describe the model at PATH (a Hugging Face model directory)."""
    if not path.exists():
        raise TinyExaoneError(f"{path}: no such file or directory")
    config = load_config(path)
    checkpoint = open_checkpoint(path)
    check_tensors(config, checkpoint)
    entries = checkpoint.entries.values()
    files = {e.file for e in entries}
    dtypes = Counter(e.dtype for e in entries)
    kinds = Counter(config.layer_types)
    params = sum(e.nbytes // {"BF16": 2, "F16": 2, "F32": 4}[e.dtype] for e in entries)
    rope = config.rope
    rope_text = f"{rope.rope_type}, theta {rope.theta:g}"
    if rope.rope_type == "llama3":
        rope_text += f", factor {rope.factor:g}, original context {rope.original_max_position_embeddings}"
    click.echo(f"model       {path}  (Hugging Face directory)")
    click.echo(
        f"shape       {config.num_hidden_layers} layers, hidden {config.hidden_size}, MLP {config.intermediate_size}, "
        f"heads {config.num_attention_heads}/{config.num_key_value_heads} x {config.head_dim}, vocab {config.vocab_size}"
    )
    click.echo(f"layers      " + ", ".join(f"{n} {k.replace('_attention', '')}" for k, n in kinds.items())
               + (f" (window {config.sliding_window})" if config.sliding_window else ""))
    click.echo(f"rope        {rope_text}")
    click.echo(f"head        {'tied to the embedding' if config.tie_word_embeddings else 'separate lm_head'}")
    click.echo(f"context     {config.max_position_embeddings} positions")
    click.echo(f"tensors     {len(checkpoint.entries)} ({', '.join(f'{n} {d}' for d, n in dtypes.items())}), "
               f"{params:,} parameters")
    click.echo(f"files       {len(files)}, {sum(f.stat().st_size for f in files) / 1e6:,.1f} MB")
