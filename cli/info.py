"""`tinyexaone info PATH [--verify]`: what a model is, without running it.

For a Hugging Face model directory: the config summary (sizes, layer kinds, RoPE, head tying),
the tensor count and the checkpoint size, after validating every tensor against the config.
For a compact file: the same config summary, the compact format version, the quantization
scheme, the tensor count, the file size and the embedded tokenizer files, after validating the
whole header (checksum included). For a GGUF file: the config summary read from its metadata,
the tensor types (and which the loader copies exactly or requantizes), the parameter count,
the file size and whether it carries a tokenizer and chat template. Reads no weight data, except with `--verify`, which checks a
compact file's data against its SHA-256 (and names the damaged tensor on a mismatch).
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import click

from tinyexaone.checkpoint import check_tensors, open_checkpoint
from tinyexaone.compact import open_compact, verify_data
from tinyexaone.config import Exaone4Config, load_config
from tinyexaone.errors import TinyExaoneError
from tinyexaone.gguf_source import EXACT, GgufSource, is_gguf
from tinyexaone.amx import kernel_paths
from tinyexaone.safetensors_file import DTYPES
from tinyexaone.tensors import EMBEDDING, model_tensors


def _describe_config(config: Exaone4Config) -> None:
    kinds = Counter(config.layer_types)
    rope = config.rope
    rope_text = f"{rope.rope_type}, theta {rope.theta:g}"
    if rope.rope_type == "llama3":
        rope_text += f", factor {rope.factor:g}, original context {rope.original_max_position_embeddings}"
    click.echo(
        f"shape       {config.num_hidden_layers} layers, hidden {config.hidden_size}, MLP {config.intermediate_size}, "
        f"heads {config.num_attention_heads}/{config.num_key_value_heads} x {config.head_dim}, vocab {config.vocab_size}"
    )
    click.echo("layers      " + ", ".join(f"{n} {k.replace('_attention', '')}" for k, n in kinds.items())
               + (f" (window {config.sliding_window})" if config.sliding_window else ""))
    click.echo(f"rope        {rope_text}")
    click.echo(f"head        {'tied to the embedding' if config.tie_word_embeddings else 'separate lm_head'}")
    click.echo(f"context     {config.max_position_embeddings} positions")
    paths = kernel_paths()
    click.echo(f"kernels     integer dot products: {paths['integer_dot']} path, prefill: {paths['prefill']} (CPU {paths['cpu']})")


def _describe_directory(path: Path) -> None:
    config = load_config(path)
    checkpoint = open_checkpoint(path)
    check_tensors(config, checkpoint)
    entries = checkpoint.entries.values()
    files = {e.file for e in entries}
    dtypes = Counter(e.dtype for e in entries)
    params = sum(e.nbytes // DTYPES[e.dtype].itemsize for e in entries)
    click.echo(f"model       {path}  (Hugging Face directory)")
    _describe_config(config)
    click.echo(f"tensors     {len(checkpoint.entries)} ({', '.join(f'{n} {d}' for d, n in dtypes.items())}), "
               f"{params:,} parameters")
    click.echo(f"files       {len(files)}, {sum(f.stat().st_size for f in files) / 1e6:,.1f} MB")


def _describe_compact(path: Path, verify: bool) -> None:
    compact = open_compact(path)
    quant = compact.quantization
    tensors = quant["tensors"]
    schemes = Counter(
        spec["scheme"] if spec["scheme"] == "float32" else f"{spec['scheme']} g{spec['group_size']}"
        for spec in tensors.values()
    )
    embed = tensors[EMBEDDING]
    params = sum(math.prod(spec["shape"]) for spec in tensors.values())
    matrices = [spec for spec in tensors.values() if spec["scheme"] != "float32"]
    matrix_params = sum(spec["shape"][0] * spec["shape"][1] for spec in matrices)
    matrix_bytes = sum(compact.entries[a].nbytes for spec in matrices for a in spec["arrays"].values())
    click.echo(f"model       {path}  (tinyexaone compact file, format version {compact.format_version})")
    _describe_config(compact.config)
    layer_matrices = [name for name, spec in model_tensors(compact.config).items()
                      if spec.layer is not None and spec.is_matrix]
    layer_kinds = Counter(f"{tensors[name]['scheme']} g{tensors[name]['group_size']}" for name in layer_matrices)
    layers = (next(iter(layer_kinds)) if len(layer_kinds) == 1
              else "mixed (" + ", ".join(f"{n} {kind}" for kind, n in layer_kinds.most_common()) + ")")
    click.echo(f"quantized   layers {layers}, embedding "
               f"{embed['scheme']} g{embed['group_size']}, norms float32; "
               f"{8 * matrix_bytes / max(matrix_params, 1):.3f} bits per matrix weight")
    click.echo(f"tensors     {len(tensors)} model tensors ({', '.join(f'{n} {s}' for s, n in schemes.items())}) "
               f"in {len(compact.entries)} arrays, {params:,} parameters")
    click.echo(f"file        {compact.file_size / 2**20:,.1f} MiB ({compact.file_size:,} bytes)")
    embedded = [name for name in compact.files if name != "config.json"]
    click.echo(f"embedded    {', '.join(embedded) if embedded else 'no tokenizer files'}")
    if verify:
        digest = verify_data(compact)
        click.echo(f"verified    data SHA-256 {digest[:16]}... matches")


def _describe_gguf(path: Path) -> None:
    source = GgufSource(path)
    tensors = list(source.gguf.tensors.values())
    kinds = Counter(t.tensor_type.name for t in tensors)
    params = sum(math.prod(int(d) for d in t.shape) for t in tensors)
    matrix_kinds = {source.tensor(spec).tensor_type for spec in model_tensors(source.config).values() if spec.is_matrix}
    exact = sorted(k.name for k in matrix_kinds if k in EXACT)
    other = sorted(k.name for k in matrix_kinds if k not in EXACT and k.name not in ("F32", "F16", "BF16"))
    click.echo(f"model       {path}  (GGUF, architecture exaone4)")
    _describe_config(source.config)
    click.echo(f"tensors     {len(tensors)} ({', '.join(f'{n} {k}' for k, n in kinds.items())}), {params:,} parameters")
    loads = [f"{', '.join(exact)} as int8/int4 g32 bit for bit"] if exact else []
    loads += [f"{', '.join(other)} requantized to int8 g32"] if other else []
    click.echo(f"loads       {'; '.join(loads) if loads else 'as float weights'}")
    click.echo(f"file        {path.stat().st_size / 2**20:,.1f} MiB ({path.stat().st_size:,} bytes)")
    click.echo(f"tokenizer   {'embedded' if source.has_tokenizer else 'none'}, chat template "
               f"{'embedded' if source.gguf.has('tokenizer.chat_template') else 'none'}")


@click.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--verify", is_flag=True, help="Check a compact file's data checksum (reads the whole file).")
def info(path: Path, verify: bool):
    """Describe the model at PATH (a Hugging Face model directory, a compact file or a GGUF file)."""
    if not path.exists():
        raise TinyExaoneError(f"{path}: no such file or directory")
    if path.is_file() and is_gguf(path):
        _describe_gguf(path)
        if verify:
            click.echo("verified    nothing: a GGUF file carries no checksums")
    elif path.is_file():
        _describe_compact(path, verify)
    else:
        _describe_directory(path)
        if verify:
            click.echo("verified    nothing: a Hugging Face directory carries no checksums")
