"""Opening a model: `load(path)` -> `Model`.

A path is a Hugging Face model directory (config.json plus model.safetensors or shards), or a
compact file written by `tinyexaone quantize` (see compact.py: validated, then memory-mapped). The
config is parsed and every tensor's presence, dtype and shape is checked against it before any
weight data is read, so a wrong or damaged checkpoint fails fast with one line naming the
problem. A directory with a tokenizer.json also gets its tokenizer as `Model.tokenizer`, read on
first use (the tokenizer costs ~60 MB of memory that a forward-only user never needs).
"""

from __future__ import annotations

from pathlib import Path

from .checkpoint import check_tensors, open_checkpoint
from .compact import load_compact
from .config import load_config
from .errors import TinyExaoneError
from .model import Model
from .weights import weights_from_checkpoint


def load(path) -> Model:
    """Load an EXAONE 4 model from a Hugging Face model directory or a compact file."""
    path = Path(path)
    if not path.exists():
        raise TinyExaoneError(f"{path}: no such file or directory")
    if path.is_file():
        return load_compact(path)
    if not path.is_dir():
        raise TinyExaoneError(f"{path}: not a model directory")
    config = load_config(path)
    checkpoint = open_checkpoint(path)
    check_tensors(config, checkpoint)
    tokenizer_source = path if (path / "tokenizer.json").exists() else None
    return Model(config, weights_from_checkpoint(config, checkpoint), tokenizer_source=tokenizer_source)
