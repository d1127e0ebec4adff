"""A GGUF file opened for reading: its layout bounded and checked first, then read by `gguf.GGUFReader`.

`open_gguf(path) -> GgufFile`. GGUFReader (llama.cpp's own Python reader, memory-mapped) trusts
every count in the file: an array claiming 2^60 items makes it loop for ever, and a string cut
short by the end of the file comes back shorter without a word. So `_check_layout` walks the
header first, with each count and length bounded by what is left of the file and by limits far
above any real model (`MAX_*`), the tensor infos checked (at most 4 axes, a known type, rows made
of whole blocks, data aligned and inside the file, no two tensors overlapping), and only then is
the file handed to GGUFReader. Only little-endian files of GGUF versions 2 and 3 are read.

`GgufFile` offers typed access to the metadata (`integer`, `number`, `string`, `flag`,
`strings`, `integers`, `flags`: each checks the stored value type and says which key is wrong)
and the tensors by GGUF name (`gguf.ReaderTensor`: type, shape, the memory-mapped data). Every
problem is one `TinyExaoneError` line naming the file.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

from .errors import TinyExaoneError
from .safetensors_file import MappedFile, fail

MAX_KEYS = 1 << 16  # metadata entries
MAX_TENSORS = 1 << 20
MAX_STRING_BYTES = 1 << 24  # one metadata string (a chat template is a few KB)
MAX_ARRAY_ITEMS = 1 << 24  # one metadata array (a vocabulary is about 10^5 tokens)
MAX_AXES = 4  # ggml's GGML_MAX_DIMS
MAX_ELEMENTS = 1 << 40  # of one tensor

VALUE = gguf.GGUFValueType
SCALAR_SIZES = {VALUE.UINT8: 1, VALUE.INT8: 1, VALUE.UINT16: 2, VALUE.INT16: 2, VALUE.UINT32: 4, VALUE.INT32: 4,
                VALUE.FLOAT32: 4, VALUE.BOOL: 1, VALUE.UINT64: 8, VALUE.INT64: 8, VALUE.FLOAT64: 8}
INTEGER_TYPES = {VALUE.UINT8, VALUE.INT8, VALUE.UINT16, VALUE.INT16, VALUE.UINT32, VALUE.INT32, VALUE.UINT64,
                 VALUE.INT64}
NUMBER_TYPES = INTEGER_TYPES | {VALUE.FLOAT32, VALUE.FLOAT64}


class _Cursor:
    """Bounded little-endian reads from the mapped file; running past its end is a truncated file."""

    def __init__(self, path: Path, data, offset: int):
        self.path, self.data, self.offset = path, data, offset

    def take(self, size: int) -> int:
        start = self.offset
        if size > len(self.data) - start:
            fail(self.path, f"truncated GGUF file (the header runs past the end of the file at byte {start:,})")
        self.offset += size
        return start

    def unpack(self, code: str) -> int:
        return struct.unpack_from(code, self.data, self.take(struct.calcsize(code)))[0]

    def count(self, what: str, limit: int, min_item_bytes: int) -> int:
        """A u64 count of items, each at least `min_item_bytes` long, bounded by the bytes left."""
        value = self.unpack("<Q")
        if value > limit or value * min_item_bytes > len(self.data) - self.offset:
            fail(self.path, f"truncated or corrupt GGUF file ({what} {value:,} does not fit the file)")
        return value

    def string(self, what: str) -> bytes:
        size = self.count(f"{what} length", MAX_STRING_BYTES, 1)
        start = self.take(size)
        return bytes(self.data[start:start + size])

    def value(self, raw_type: int, key: str, nested: bool = False) -> None:
        """Skip one metadata value of `raw_type`, checking its counts."""
        if raw_type not in VALUE._value2member_map_:
            fail(self.path, f"corrupt GGUF file (metadata '{key:.80}' has unknown value type {raw_type})")
        kind = VALUE(raw_type)
        if kind in SCALAR_SIZES:
            self.take(SCALAR_SIZES[kind])
        elif kind == VALUE.STRING:
            self.take(self.count(f"length of metadata '{key:.80}'", MAX_STRING_BYTES, 1))
        elif nested:
            fail(self.path, f"metadata '{key:.80}' is an array of arrays, which tinyexaone does not read")
        else:
            item_type = self.unpack("<I")
            item_bytes = SCALAR_SIZES.get(VALUE(item_type), 8) if item_type in VALUE._value2member_map_ else 1
            items = self.count(f"item count of metadata '{key:.80}'", MAX_ARRAY_ITEMS, item_bytes)
            if item_type in VALUE._value2member_map_ and VALUE(item_type) in SCALAR_SIZES:
                self.take(items * item_bytes)
            else:
                for _ in range(items):
                    self.value(item_type, key, nested=True)


def _check_layout(path: Path, data) -> None:
    """Walk the header with every size bounded (module doc); raise on the first problem."""
    cursor = _Cursor(path, data, 0)
    if bytes(data[:4]) != b"GGUF":
        fail(path, "not a GGUF file (no GGUF magic)")
    cursor.take(4)
    version = cursor.unpack("<I")
    if version & 0xFFFF == 0 and version:
        fail(path, "big-endian GGUF files are not supported")
    if version not in (2, 3):
        fail(path, f"GGUF version {version} is not supported (versions 2 and 3 are)")
    n_tensors = cursor.count("tensor count", MAX_TENSORS, 24)
    n_keys = cursor.count("metadata count", MAX_KEYS, 13)
    alignment = gguf.GGUF_DEFAULT_ALIGNMENT
    for _ in range(n_keys):
        key = cursor.string("metadata key").decode("utf-8", errors="replace")
        raw_type = cursor.unpack("<I")
        value_at = cursor.offset
        cursor.value(raw_type, key)
        if key == gguf.Keys.General.ALIGNMENT:
            if raw_type != VALUE.UINT32:
                fail(path, f"corrupt GGUF file ({key} is not a uint32)")
            alignment = struct.unpack_from("<I", data, value_at)[0]
            if alignment == 0 or alignment & (alignment - 1):
                fail(path, f"corrupt GGUF file ({key} {alignment} is not a power of two)")
    tensors = []
    for _ in range(n_tensors):
        name = cursor.string("tensor name").decode("utf-8", errors="replace")
        n_axes = cursor.unpack("<I")
        if n_axes > MAX_AXES:
            fail(path, f"tensor '{name:.80}' has {n_axes} axes (at most {MAX_AXES})")
        dims = [cursor.unpack("<Q") for _ in range(n_axes)]
        raw_type, offset = cursor.unpack("<I"), cursor.unpack("<Q")
        tensors.append((name, dims, raw_type, offset))
    data_start = -(-cursor.offset // alignment) * alignment
    data_size = len(data) - data_start
    spans = []
    for name, dims, raw_type, offset in tensors:
        if raw_type not in gguf.GGMLQuantizationType._value2member_map_:
            fail(path, f"tensor '{name:.80}' has unknown tensor type {raw_type}")
        kind = gguf.GGMLQuantizationType(raw_type)
        block, block_bytes = gguf.GGML_QUANT_SIZES[kind]
        elements = int(np.prod(dims, dtype=object)) if dims else 1
        if elements > MAX_ELEMENTS or any(d == 0 for d in dims):
            fail(path, f"tensor '{name:.80}' has an implausible shape {dims}")
        if dims and dims[0] % block:
            fail(path, f"tensor '{name:.80}' ({kind.name}) has rows of {dims[0]} elements, not whole blocks of {block}")
        nbytes = elements // block * block_bytes
        if offset % alignment or offset + nbytes > data_size:
            fail(path, f"truncated or corrupt GGUF file (tensor '{name:.80}' lies outside the file or is misaligned)")
        spans.append((offset, offset + nbytes, name))
    spans.sort()
    for (_, end, first), (start, _, second) in zip(spans, spans[1:]):
        if start < end:
            fail(path, f"corrupt GGUF file (tensors '{first:.60}' and '{second:.60}' overlap)")


@dataclass
class GgufFile:
    path: Path
    reader: gguf.GGUFReader
    tensors: dict[str, gguf.ReaderTensor]  # by GGUF name, in file order
    mapped_file: MappedFile  # for the forward pass's file-size check

    def has(self, key: str) -> bool:
        return key in self.reader.fields

    def _field(self, key: str, types: set, what: str, array: bool):
        """The reader's field for `key`, checked to be `what` (items of `types`, in an array or not)."""
        field = self.reader.fields.get(key)
        if field is None:
            fail(self.path, f"GGUF metadata has no '{key}'")
        kinds = field.types  # [type] for a scalar; [ARRAY] or [ARRAY, item type] for an array
        if array:
            fits = kinds[:1] == [VALUE.ARRAY] and (len(kinds) == 1 or kinds[1] in types)
        else:
            fits = len(kinds) == 1 and kinds[0] in types
        if not fits:
            held = " of ".join(kind.name.lower() for kind in kinds)
            fail(self.path, f"GGUF metadata '{key}' must be {what}, the file holds {held}")
        return field

    def integer(self, key: str, default=None) -> int:
        if default is not None and not self.has(key):
            return default
        return int(self._field(key, INTEGER_TYPES, "an integer", False).contents())

    def number(self, key: str, default=None) -> float:
        if default is not None and not self.has(key):
            return default
        return float(self._field(key, NUMBER_TYPES, "a number", False).contents())

    def flag(self, key: str, default=None) -> bool:
        if default is not None and not self.has(key):
            return default
        return bool(self._field(key, {VALUE.BOOL}, "true or false", False).contents())

    def string(self, key: str, default=None) -> str:
        if default is not None and not self.has(key):
            return default
        field = self._field(key, {VALUE.STRING}, "a string", False)
        return self._text(key, bytes(field.parts[-1]))

    def strings(self, key: str) -> list[str]:
        field = self._field(key, {VALUE.STRING}, "an array of strings", True)
        return [self._text(key, bytes(field.parts[i])) for i in field.data]

    def integers(self, key: str) -> np.ndarray:
        field = self._field(key, INTEGER_TYPES, "an array of integers", True)
        return np.array([int(field.parts[i][0]) for i in field.data], dtype=np.int64)

    def flags(self, key: str) -> list[bool]:
        field = self._field(key, {VALUE.BOOL}, "an array of true/false", True)
        return [bool(field.parts[i][0]) for i in field.data]

    def is_array(self, key: str) -> bool:
        return self.has(key) and self.reader.fields[key].types[:1] == [VALUE.ARRAY]

    def _text(self, key: str, raw: bytes) -> str:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            fail(self.path, f"GGUF metadata '{key}' holds text that is not UTF-8")


def open_gguf(path) -> GgufFile:
    """Open and check the GGUF file at `path` (module doc); reads no tensor data."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            if size == 0:
                fail(path, "truncated GGUF file (empty)")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
                _check_layout(path, data)
        mapped = MappedFile(path, size)
        reader = gguf.GGUFReader(path, "r")
    except OSError as exc:
        raise TinyExaoneError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except (ValueError, KeyError, IndexError, OverflowError) as exc:  # what GGUFReader raises on a bad file
        fail(path, f"corrupt GGUF file ({' '.join(str(exc).split())[:200]})")
    if len(reader.data) != size:
        fail(path, "the file changed size while being opened")
    return GgufFile(path, reader, {t.name: t for t in reader.tensors}, mapped)
