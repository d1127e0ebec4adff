"""The safetensors container, read without torch: header parsing, validation, dtypes, BF16 widening.

A safetensors file is an 8-byte little-endian header length N, N bytes of JSON, then raw
little-endian tensor bytes. `read_header(path, dtypes)` reads and validates the header once:
N bounded by `MAX_HEADER_BYTES` and by the file size before anything is allocated, the JSON an
object, `__metadata__` kept aside, and every entry given a dtype among `dtypes`, a shape of
non-negative integers (at most 8 axes) and data offsets that match the shape's byte size and
lie inside the file. It returns a `SafetensorsHeader` whose `entries` carry absolute file
offsets. `DTYPES` is the one table of safetensors dtype codes and the NumPy dtypes their bytes
are read as (BF16 as its raw uint16 bits: NumPy has no bfloat16), and `widen_bf16` turns those
bits into float32 by a 16-bit shift. Errors are one-line `TinyExaoneError`s naming the file;
control characters from a hostile header are shown escaped.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import TinyExaoneError

MAX_HEADER_BYTES = 100 * 1024 * 1024  # the safetensors format's own limit
MAX_AXES = 8

# safetensors dtype code -> the little-endian NumPy dtype its bytes are read as
DTYPES = {
    "U8": np.dtype("u1"), "I8": np.dtype("i1"), "U16": np.dtype("<u2"), "I16": np.dtype("<i2"),
    "U32": np.dtype("<u4"), "I32": np.dtype("<i4"), "U64": np.dtype("<u8"), "I64": np.dtype("<i8"),
    "BF16": np.dtype("<u2"), "F16": np.dtype("<f2"), "F32": np.dtype("<f4"), "F64": np.dtype("<f8"),
}
FLOAT_DTYPES = ("BF16", "F16", "F32")  # what a Hugging Face checkpoint's tensors may be


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: str  # a key of DTYPES
    shape: tuple[int, ...]
    file: Path
    start: int  # absolute byte offset of the data in `file`
    nbytes: int


@dataclass(frozen=True)
class SafetensorsHeader:
    path: Path
    file_size: int
    header_len: int  # N
    raw: bytes  # the first 8 + N bytes of the file
    metadata: dict  # the `__metadata__` object ({} when absent)
    entries: dict[str, TensorEntry]  # every tensor, in header order

    @property
    def data_start(self) -> int:
        return 8 + self.header_len


class MappedFile:
    """A file whose bytes are memory-mapped, held open so its size can be checked: reading a page
    past the end of a file that shrank after it was mapped kills the process (SIGBUS), so every
    forward pass first calls `check()`."""

    def __init__(self, path: Path, size: int):
        self.path, self.size = path, size
        try:
            self._file = open(path, "rb")
        except OSError as exc:
            raise TinyExaoneError(f"{path}: cannot read ({exc.strerror})") from None

    def fileno(self) -> int:
        return self._file.fileno()

    def check(self) -> None:
        now = os.fstat(self._file.fileno()).st_size
        if now < self.size:
            raise TinyExaoneError(f"{self.path}: the file shrank from {self.size:,} to {now:,} bytes after it was "
                                  f"loaded (rewritten in place?); load the model again")


def widen_bf16(bits: np.ndarray) -> np.ndarray:
    """BF16 bit patterns (uint16) -> float32 values of the same shape (a new array)."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def fail(path: Path, problem: str):
    """Raise the one-line error for `path`; control characters in `problem` are shown escaped."""
    problem = "".join(c if c.isprintable() else repr(c)[1:-1] for c in problem)
    raise TinyExaoneError(f"{path}: {problem}")


def is_count(value) -> bool:
    """A non-negative int that is not a bool (JSON sizes and offsets)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _read_prefix(path: Path) -> tuple[int, int, bytes]:
    """(file size, N, the first 8 + N bytes), with N bounded before it is read."""
    try:
        if not path.is_file():
            fail(path, "not a regular file")
        file_size = path.stat().st_size
        with open(path, "rb") as f:
            prefix = f.read(8)
            if len(prefix) < 8:
                fail(path, "truncated safetensors file (shorter than the 8-byte header length)")
            (header_len,) = struct.unpack("<Q", prefix)
            if header_len > MAX_HEADER_BYTES:
                fail(path, f"not a safetensors file (header length {header_len} is implausible)")
            if 8 + header_len > file_size:
                fail(path, f"truncated safetensors file (its header claims {header_len} bytes, the file has {file_size})")
            raw = f.read(header_len)
    except OSError as exc:
        raise TinyExaoneError(f"{path}: cannot read ({exc.strerror})") from None
    if len(raw) != header_len:
        fail(path, "truncated safetensors file (header cut short)")
    return file_size, header_len, prefix + raw


def _entry(path: Path, name: str, info, dtypes, data_start: int, data_size: int) -> TensorEntry:
    if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
        fail(path, f"corrupt header entry for tensor '{name:.80}'")
    code, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if not isinstance(code, str) or code not in dtypes:
        fail(path, f"tensor '{name:.80}' has unsupported dtype {code!r:.20} (supported: {', '.join(dtypes)})")
    if not isinstance(shape, list) or len(shape) > MAX_AXES or not all(is_count(d) for d in shape):
        fail(path, f"tensor '{name:.80}' has an invalid shape {shape!r:.80}")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(is_count(o) for o in offsets):
        fail(path, f"tensor '{name:.80}' has invalid data_offsets {offsets!r:.80}")
    begin, end = offsets
    nbytes = math.prod(shape) * DTYPES[code].itemsize
    if end < begin or end - begin != nbytes:
        fail(path, f"tensor '{name:.80}' data_offsets {offsets} do not match its shape {shape} and dtype {code}")
    if end > data_size:
        fail(path, f"truncated safetensors file: tensor '{name:.80}' lies outside the file (it ends at byte "
                   f"{data_start + end}, the file has {data_start + data_size})")
    return TensorEntry(name, code, tuple(shape), path, data_start + begin, nbytes)


def read_header(path, dtypes=FLOAT_DTYPES, verify=None) -> SafetensorsHeader:
    """Read and validate the header of the safetensors file `path`; reads no tensor data.

    `verify(raw, metadata)`, when given, runs after the JSON is parsed and before the entries
    are checked (a format of its own checks its metadata and checksum there first)."""
    path = Path(path)
    file_size, header_len, raw = _read_prefix(path)
    try:
        header = json.loads(raw[8:].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        fail(path, "corrupt safetensors header (not valid JSON)")
    if not isinstance(header, dict):
        fail(path, "corrupt safetensors header (not a JSON object)")
    metadata = header.pop("__metadata__", None)
    if verify is not None:
        verify(raw, metadata)
    metadata = {} if metadata is None else metadata
    if not isinstance(metadata, dict):
        fail(path, "corrupt safetensors header (__metadata__ is not an object)")
    data_start = 8 + header_len
    entries = {name: _entry(path, name, info, dtypes, data_start, file_size - data_start)
               for name, info in header.items()}
    return SafetensorsHeader(path, file_size, header_len, raw, metadata, entries)
