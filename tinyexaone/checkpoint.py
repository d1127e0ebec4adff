"""Reading Hugging Face safetensors checkpoints without torch and without copying.

`open_checkpoint(model_dir)` finds `model.safetensors` or the shards listed in
`model.safetensors.index.json`, parses each safetensors header itself (8-byte little-endian
length, JSON, then raw little-endian tensor bytes) and memory-maps the data. Every header entry
is validated before anything is read: a known dtype (BF16, F16, F32), a shape of non-negative
integers, and data offsets that lie inside the file and match the shape's byte size. A tensor's
bytes are only touched when `Checkpoint.float32(name)` is called; BF16 is widened to float32 by
a 16-bit shift (NumPy has no bfloat16), F32 is returned as a read-only zero-copy view.
`expected_tensors(config)` lists the names and shapes an EXAONE 4 model must have, and
`check_tensors` compares a checkpoint against it, naming the first missing, unexpected or
misshaped tensor.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .config import Exaone4Config
from .errors import TinyExaoneError

DTYPE_SIZES = {"BF16": 2, "F16": 2, "F32": 4}
MAX_HEADER_BYTES = 100 * 1024 * 1024  # the safetensors format's own limit


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: str  # "BF16", "F16" or "F32"
    shape: tuple[int, ...]
    file: Path
    start: int  # absolute byte offset of the data in `file`
    nbytes: int


def read_safetensors_header(path: Path) -> tuple[dict[str, TensorEntry], dict]:
    """Parse and validate one safetensors file's header; returns (entries, metadata)."""
    try:
        file_size = path.stat().st_size
        with open(path, "rb") as f:
            prefix = f.read(8)
            if len(prefix) < 8:
                raise TinyExaoneError(f"{path}: truncated safetensors file (no header length)")
            (header_len,) = struct.unpack("<Q", prefix)
            if header_len > MAX_HEADER_BYTES or 8 + header_len > file_size:
                raise TinyExaoneError(
                    f"{path}: truncated safetensors file (its header claims {header_len} bytes, the file has {file_size})"
                )
            raw = f.read(header_len)
    except OSError as exc:
        raise TinyExaoneError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise TinyExaoneError(f"{path}: corrupt safetensors header (not valid JSON)") from None
    if not isinstance(header, dict):
        raise TinyExaoneError(f"{path}: corrupt safetensors header (not a JSON object)")
    metadata = header.pop("__metadata__", None) or {}
    data_start = 8 + header_len
    data_size = file_size - data_start
    entries = {}
    for name, info in header.items():
        entries[name] = _validate_entry(path, name, info, data_start, data_size)
    return entries, metadata


def _validate_entry(path: Path, name: str, info, data_start: int, data_size: int) -> TensorEntry:
    if not isinstance(info, dict):
        raise TinyExaoneError(f"{path}: corrupt header entry for tensor '{name}'")
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in DTYPE_SIZES:
        raise TinyExaoneError(f"{path}: tensor '{name}' has unsupported dtype {dtype!r} (supported: BF16, F16, F32)")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise TinyExaoneError(f"{path}: tensor '{name}' has an invalid shape {shape!r}")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
    ):
        raise TinyExaoneError(f"{path}: tensor '{name}' has invalid data_offsets {offsets!r}")
    begin, end = offsets
    nbytes = math.prod(shape) * DTYPE_SIZES[dtype]
    if not 0 <= begin <= end or end - begin != nbytes:
        raise TinyExaoneError(
            f"{path}: tensor '{name}' data_offsets {offsets} do not match its shape {shape} and dtype {dtype}"
        )
    if end > data_size:
        raise TinyExaoneError(
            f"{path}: truncated safetensors file (tensor '{name}' ends at byte {data_start + end}, "
            f"file has {data_start + data_size})"
        )
    return TensorEntry(name, dtype, tuple(shape), path, data_start + begin, nbytes)


class Checkpoint:
    """The tensors of a model directory, memory-mapped lazily, one map per file."""

    def __init__(self, entries: dict[str, TensorEntry]):
        self.entries = entries
        self._maps: dict[Path, np.memmap] = {}

    def raw(self, name: str) -> np.ndarray:
        """The tensor's stored bytes as a read-only array of its own dtype (uint16 for BF16)."""
        entry = self.entries[name]
        if entry.nbytes == 0:
            return np.zeros(entry.shape, np.uint16 if entry.dtype == "BF16" else np.dtype(entry.dtype.lower()))
        mm = self._maps.get(entry.file)
        if mm is None:
            mm = self._maps[entry.file] = np.memmap(entry.file, dtype=np.uint8, mode="r")
        storage = {"BF16": np.uint16, "F16": np.float16, "F32": np.float32}[entry.dtype]
        view = mm[entry.start : entry.start + entry.nbytes].view(np.dtype(storage).newbyteorder("<"))
        return view.reshape(entry.shape)

    def float32(self, name: str) -> np.ndarray:
        """The tensor as float32: a zero-copy view for F32, a widened copy for BF16 and F16."""
        data = self.raw(name)
        if self.entries[name].dtype == "BF16":
            return (data.astype(np.uint32) << 16).view(np.float32)
        if self.entries[name].dtype == "F16":
            return data.astype(np.float32)
        return data


def open_checkpoint(model_dir: str | Path) -> Checkpoint:
    """Find and validate the safetensors file(s) of a Hugging Face model directory."""
    model_dir = Path(model_dir)
    single = model_dir / "model.safetensors"
    index = model_dir / "model.safetensors.index.json"
    if single.is_file():
        entries, _ = read_safetensors_header(single)
        return Checkpoint(entries)
    if not index.is_file():
        raise TinyExaoneError(f"{model_dir}: no model.safetensors or model.safetensors.index.json")
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise TypeError
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
        raise TinyExaoneError(f"{index}: corrupt shard index (needs a 'weight_map' of tensor name -> file)") from None
    entries: dict[str, TensorEntry] = {}
    for shard in sorted(set(weight_map.values())):
        shard_path = model_dir / shard
        if Path(shard).name != shard or not shard_path.is_file():
            raise TinyExaoneError(f"{index}: shard file '{shard}' is missing")
        shard_entries, _ = read_safetensors_header(shard_path)
        for name, entry in shard_entries.items():
            if weight_map.get(name) != shard:
                raise TinyExaoneError(f"{shard_path}: tensor '{name}' is not assigned to this shard by the index")
            entries[name] = entry
    for name in weight_map:
        if name not in entries:
            raise TinyExaoneError(f"{index}: tensor '{name}' is listed but missing from shard '{weight_map[name]}'")
    return Checkpoint(entries)


def expected_tensors(config: Exaone4Config) -> dict[str, tuple[int, ...]]:
    """Every tensor an EXAONE 4 checkpoint must hold, with its shape ([out, in] for linears)."""
    h, d = config.hidden_size, config.head_dim
    q_out, kv_out = config.num_attention_heads * d, config.num_key_value_heads * d
    shapes = {"model.embed_tokens.weight": (config.vocab_size, h), "model.norm.weight": (h,)}
    for i in range(config.num_hidden_layers):
        p = f"model.layers.{i}."
        shapes.update({
            p + "self_attn.q_proj.weight": (q_out, h),
            p + "self_attn.k_proj.weight": (kv_out, h),
            p + "self_attn.v_proj.weight": (kv_out, h),
            p + "self_attn.o_proj.weight": (h, q_out),
            p + "self_attn.q_norm.weight": (d,),
            p + "self_attn.k_norm.weight": (d,),
            p + "post_attention_layernorm.weight": (h,),
            p + "post_feedforward_layernorm.weight": (h,),
            p + "mlp.gate_proj.weight": (config.intermediate_size, h),
            p + "mlp.up_proj.weight": (config.intermediate_size, h),
            p + "mlp.down_proj.weight": (h, config.intermediate_size),
        })
    if not config.tie_word_embeddings:
        shapes["lm_head.weight"] = (config.vocab_size, h)
    return shapes


def check_tensors(config: Exaone4Config, checkpoint: Checkpoint) -> None:
    """Raise naming the first missing, unexpected or misshaped tensor; reads no tensor data."""
    expected = expected_tensors(config)
    present = checkpoint.entries
    for name, shape in expected.items():
        if name not in present:
            raise TinyExaoneError(f"checkpoint is missing tensor '{name}' (expected shape {list(shape)})")
        if present[name].shape != shape:
            raise TinyExaoneError(
                f"tensor '{name}' has shape {list(present[name].shape)}, the config implies {list(shape)}"
            )
    for name in present:
        # A tied checkpoint may still carry a copy of the head; it is simply unused.
        if name not in expected and not (name == "lm_head.weight" and config.tie_word_embeddings):
            raise TinyExaoneError(f"checkpoint has unexpected tensor '{name}'")
