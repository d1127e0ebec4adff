"""Hugging Face safetensors checkpoints, read without torch and without copying.

`open_checkpoint(model_dir)` finds `model.safetensors` or the shards listed in
`model.safetensors.index.json` (each shard a plain file inside the directory), validates every
header with `safetensors_file.read_header` (dtypes BF16, F16 and F32 only) and returns a
`Checkpoint`. Its tensors' bytes are touched only when asked for, through one read-only memory
map per file: `raw(name)` is the stored array (uint16 bits for BF16), `float32(name)` a
zero-copy view for F32 and a widened copy for BF16 and F16. `check_tensors` compares the
entries with the tensor table (tensors.py) for a config, reading no data.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .config import Exaone4Config
from .errors import TinyExaoneError
from .safetensors_file import DTYPES, MappedFile, TensorEntry, read_header, widen_bf16
from .tensors import check_tensor_shapes


class Checkpoint:
    """The tensors of a model directory, memory-mapped lazily, one map per file."""

    def __init__(self, entries: dict[str, TensorEntry]):
        self.entries = entries
        self._maps: dict[Path, np.memmap] = {}
        self.mapped_files: dict[Path, MappedFile] = {}  # every file a map was made of, for size checks

    def raw(self, name: str) -> np.ndarray:
        """The tensor's stored bytes as a read-only array of its own dtype (uint16 for BF16)."""
        entry = self.entries[name]
        dtype = DTYPES[entry.dtype]
        if entry.nbytes == 0:
            return np.zeros(entry.shape, dtype)
        mm = self._maps.get(entry.file)
        if mm is None:
            mapped = MappedFile(entry.file, entry.file.stat().st_size)
            try:
                mm = self._maps[entry.file] = np.memmap(entry.file, dtype=np.uint8, mode="r")
            except (OSError, ValueError) as exc:
                raise TinyExaoneError(f"{entry.file}: cannot memory-map ({exc})") from None
            if len(mm) != mapped.size:
                raise TinyExaoneError(f"{entry.file}: the file changed size while being opened")
            self.mapped_files[entry.file] = mapped
        return mm[entry.start : entry.start + entry.nbytes].view(dtype).reshape(entry.shape)

    def float32(self, name: str) -> np.ndarray:
        """The tensor as float32: a zero-copy view for F32, a widened copy for BF16 and F16."""
        data = self.raw(name)
        if self.entries[name].dtype == "BF16":
            return widen_bf16(data)
        return data.astype(np.float32, copy=False)


def open_checkpoint(model_dir: str | Path) -> Checkpoint:
    """Find and validate the safetensors file(s) of a Hugging Face model directory."""
    model_dir = Path(model_dir)
    single = model_dir / "model.safetensors"
    index = model_dir / "model.safetensors.index.json"
    if single.exists():
        return Checkpoint(read_header(single).entries)
    if not index.is_file():
        raise TinyExaoneError(f"{model_dir}: no model.safetensors or model.safetensors.index.json")
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise TypeError
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, RecursionError):
        raise TinyExaoneError(f"{index}: corrupt shard index (needs a 'weight_map' of tensor name -> file)") from None
    entries: dict[str, TensorEntry] = {}
    for shard in sorted(set(weight_map.values())):
        shard_path = model_dir / shard
        if Path(shard).name != shard or not shard_path.is_file():
            raise TinyExaoneError(f"{index}: shard file '{shard:.80}' is missing")
        for name, entry in read_header(shard_path).entries.items():
            if weight_map.get(name) != shard:
                raise TinyExaoneError(f"{shard_path}: tensor '{name:.80}' is not assigned to this shard by the index")
            entries[name] = entry
    for name in weight_map:
        if name not in entries:
            raise TinyExaoneError(f"{index}: tensor '{name:.80}' is listed but missing from shard '{weight_map[name]:.80}'")
    return Checkpoint(entries)


def check_tensors(config: Exaone4Config, checkpoint: Checkpoint) -> None:
    """Raise naming the first missing, unexpected or misshaped tensor; reads no tensor data."""
    check_tensor_shapes(config, {name: entry.shape for name, entry in checkpoint.entries.items()})
