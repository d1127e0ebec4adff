"""The one-file compact model format ("tinyexaone-compact", version 4): writer and zero-copy reader.

A compact file is a valid safetensors file (docs/format.md is the full specification): an
8-byte little-endian header length N, N bytes of JSON padded with spaces, then the tensor data.
Every tensor starts at a file offset that is a multiple of 64 (`ALIGNMENT`); the gaps are
declared as `__padding__.<n>` U8 tensors so the data region stays gap-free, as safetensors
requires. `__metadata__` holds strings only: the format name and version, `config.json`, the
quantization description (which arrays make up each model tensor, with bits and group size),
the embedded tokenizer/template files, an `integrity` record (size and CRC-32 of every tensor
plus a SHA-256 of the whole data region) and `header_sha256`, a SHA-256 of the first 8 + N
bytes computed with that field's 64 hex digits set to "0".

`CompactWriter` streams arrays into a file after a reserved header region and writes the
header last, with the oldest format version that can hold it: 4 when it embeds tokenizer or
template files (stored zlib-compressed, base64 in the metadata: about a fifth of their size),
else what its schemes need (`needed_version`: 3 where a tensor is int4k, int6 or int6k, else 2,
so such files stay readable by older readers). `open_compact(path)` reads the header once and validates all of it (format and
version, checksum, dtypes, shapes, offsets inside the file, alignment, sizes, the quantization
description against the tensor table of the config) before any tensor is touched, so a damaged
or hostile file fails with one `TinyExaoneError` line. The `CompactFile` it returns gives each
stored array as a read-only view (`array(name)`, nothing copied per array) of one memory map of the
file, or, after `read_into_memory()`, of one resident copy of its data region (resident.py), the
quantization record, and the embedded texts (`files`); turning them into weights and a
tokenizer is the loader's job (loading.py). `verify_data` checks the data checksums.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import mmap
import re
import struct
import zlib
from pathlib import Path

import numpy as np

from .config import Exaone4Config, parse_config
from .errors import TinyExaoneError
from .resident import read_resident
from .safetensors_file import DTYPES, MappedFile, SafetensorsHeader, TensorEntry, fail, is_count, read_header
from .tensors import model_tensors

FORMAT_NAME = "tinyexaone-compact"
FORMAT_VERSION = 4  # 2: rows interleaved by eights (quantized.py); 3: the int4k, int6 and int6k schemes; 4: embedded
# files compressed; 1 to 3 are still read
ALIGNMENT = 64
EMBEDDED_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja", "generation_config.json",
)
PADDING_PREFIX = "__padding__."
CHECKSUM_KEY = "header_sha256"
CHECKSUM_MARK = b'"header_sha256":"'
QUANTIZED_SCHEMES = {"int8": 8, "int6": 6, "int4": 4, "int4k": 4, "int6k": 6}
SCHEME_VERSIONS = {"int4k": 3, "int6": 3, "int6k": 3}  # schemes newer than version 1: the first version that has them
COMPRESSED_FILES_VERSION = 4  # from this version on, EMBEDDED_FILES are stored as base64 of their zlib-compressed UTF-8
MAX_EMBEDDED_BYTES = 64 << 20  # the largest embedded file a reader decompresses
GROUP_SIZES = (32, 64, 128)

COMPACT_DTYPES = tuple(code for code in DTYPES if code != "BF16")  # a compact file stores no BF16
DTYPE_CODES = {DTYPES[code]: code for code in COMPACT_DTYPES}


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def needed_version(quantization: dict) -> int:
    """The format version the schemes of this quantization record need (module doc); a writer
    with embedded files raises it to COMPRESSED_FILES_VERSION."""
    schemes = {spec.get("scheme") for spec in quantization["tensors"].values()}
    return max([2] + [SCHEME_VERSIONS[s] for s in schemes if s in SCHEME_VERSIONS])


def encode_embedded(text: str) -> str:
    """An embedded file's metadata value from format version 4 on: base64 of zlib of its UTF-8."""
    return base64.b64encode(zlib.compress(text.encode("utf-8"), 9)).decode("ascii")


def decode_embedded(path: Path, name: str, value: str) -> str:
    """The text of an embedded file stored by `encode_embedded`, at most MAX_EMBEDDED_BYTES."""
    try:
        packed = base64.b64decode(value, validate=True)
        inflater = zlib.decompressobj()
        raw = inflater.decompress(packed, MAX_EMBEDDED_BYTES)
        if inflater.unconsumed_tail:
            fail(path, f"embedded file '{name}' is larger than {MAX_EMBEDDED_BYTES >> 20} MB")
        if not inflater.eof or inflater.unused_data:
            fail(path, f"embedded file '{name}' is damaged (its compressed data is cut short or followed by junk)")
        return raw.decode("utf-8")
    except (binascii.Error, ValueError, zlib.error):  # ValueError: non-ASCII base64, or UnicodeDecodeError
        fail(path, f"embedded file '{name}' is damaged (not valid compressed UTF-8 text)")


def _dtype_code(dtype: np.dtype) -> str:
    code = DTYPE_CODES.get(np.dtype(dtype).newbyteorder("<"))
    if code is None:
        raise ValueError(f"dtype {dtype} cannot be stored in a compact file")
    return code


# ---------------------------------------------------------------------------------------------
# Writing


class CompactWriter:
    """Streams named arrays into `file` (opened "wb+"), then writes the header in front of them.

    `metadata` holds every `__metadata__` string except the format keys and the integrity
    record, and `tensor_names` every array name that will be added; both size the header region
    reserved at the start (numbers are assumed to have at most 16 digits, so the bound is safe).
    The embedded files among the metadata (EMBEDDED_FILES) are stored compressed, which makes the
    file format version 4 (`format_version` is what its schemes need, from `needed_version`).
    """

    def __init__(self, file, metadata: dict[str, str], tensor_names: list[str], format_version: int = 2):
        self.file = file
        self.metadata = dict(metadata)
        embedded = [name for name in EMBEDDED_FILES if name in self.metadata]
        for name in embedded:
            self.metadata[name] = encode_embedded(self.metadata[name])
        self.format_version = max(format_version, COMPRESSED_FILES_VERSION) if embedded else format_version
        self.planned = set(tensor_names)
        budget = len(json.dumps(self.metadata, ensure_ascii=False).encode("utf-8")) + 1024 + 64 * 3
        budget += sum(2 * len(json.dumps(name)) + 320 for name in tensor_names)  # entry + integrity + padding
        self.data_start = _round_up(8 + budget, ALIGNMENT)
        self.entries: dict[str, tuple[str, tuple[int, ...], int, int]] = {}  # name -> (code, shape, begin, end)
        self.crc32: dict[str, int] = {}
        self.sha = hashlib.sha256()
        self.position = 0  # bytes of data written so far (relative to data_start)
        file.seek(self.data_start)

    def _write(self, buffer) -> None:
        self.file.write(buffer)
        self.sha.update(buffer)
        self.position += len(buffer)

    def add(self, name: str, array: np.ndarray) -> None:
        self.add_stacked(name, [array])

    def add_stacked(self, name: str, parts: list[np.ndarray]) -> None:
        """Write the concatenation of `parts` along axis 0 as one tensor, without building it."""
        if name not in self.planned or name in self.entries:
            raise ValueError(f"tensor '{name}' was not planned or is added twice")
        code = _dtype_code(parts[0].dtype)
        if any(p.dtype != parts[0].dtype or p.shape[1:] != parts[0].shape[1:] for p in parts):
            raise ValueError(f"parts of tensor '{name}' differ in dtype or trailing shape")
        pad = (-self.position) % ALIGNMENT
        if pad:
            pad_name = f"{PADDING_PREFIX}{len(self.entries)}"
            self.entries[pad_name] = ("U8", (pad,), self.position, self.position + pad)
            self._write(bytes(pad))
        begin, crc = self.position, 0
        for part in parts:
            data = memoryview(np.ascontiguousarray(part, dtype=part.dtype.newbyteorder("<"))).cast("B")
            crc = zlib.crc32(data, crc)
            self._write(data)
        shape = (sum(p.shape[0] for p in parts),) + tuple(parts[0].shape[1:]) if parts[0].ndim else ()
        self.entries[name] = (code, shape, begin, self.position)
        self.crc32[name] = crc

    def finish(self) -> None:
        """Write the header (with its checksum) at the start of the file."""
        missing = self.planned - set(self.entries)
        if missing:
            raise ValueError(f"planned tensors were never added: {sorted(missing)[:3]}")
        integrity = {
            "data_sha256": self.sha.hexdigest(),
            "tensors": {
                name: {"nbytes": end - begin, "crc32": f"{self.crc32[name]:08x}"}
                for name, (_, _, begin, end) in self.entries.items()
                if not name.startswith(PADDING_PREFIX)
            },
        }
        metadata = {"format": FORMAT_NAME, "format_version": str(self.format_version), CHECKSUM_KEY: "0" * 64}
        metadata.update(self.metadata)
        metadata["integrity"] = json.dumps(integrity, separators=(",", ":"))
        header = {"__metadata__": metadata}
        for name, (code, shape, begin, end) in self.entries.items():
            header[name] = {"dtype": code, "shape": list(shape), "data_offsets": [begin, end]}
        text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        header_len = self.data_start - 8
        if len(text) > header_len:
            raise RuntimeError(f"compact header of {len(text)} bytes exceeds the {header_len} reserved")
        prefix = struct.pack("<Q", header_len) + text + b" " * (header_len - len(text))
        digest = hashlib.sha256(prefix).hexdigest().encode("ascii")
        at = prefix.index(CHECKSUM_MARK) + len(CHECKSUM_MARK)
        self.file.seek(0)
        self.file.write(prefix[:at] + digest + prefix[at + 64 :])


# ---------------------------------------------------------------------------------------------
# Reading


CompactEntry = TensorEntry  # name, dtype code, shape, file, absolute start, nbytes


class CompactFile:
    """A validated compact file: metadata, config, quantization record, lazily memory-mapped arrays."""

    def __init__(self, header: SafetensorsHeader, entries: dict[str, CompactEntry], config: Exaone4Config,
                 quantization: dict, files: dict[str, str]):
        self.path = header.path
        self.file_size = header.file_size
        self.header_len = header.header_len
        self.metadata: dict[str, str] = header.metadata
        self.entries = entries  # every non-padding tensor
        self.config = config
        self.quantization = quantization  # {"bits", "group_size", "embedding_bits", "tensors": {name: spec}}
        self._files = files  # config.json and the embedded files present, as text
        self._map: mmap.mmap | None = None
        self.mapped_file: MappedFile | None = None  # for size checks, once the map exists
        self._resident: np.ndarray | None = None  # [data bytes] uint8 once read_into_memory ran

    @property
    def format_version(self) -> int:
        return int(self.metadata["format_version"])

    @property
    def files(self) -> dict[str, str]:
        """The embedded files present, by file name (config.json included), as text."""
        return dict(self._files)

    @property
    def data_start(self) -> int:
        return 8 + self.header_len

    def read_into_memory(self) -> None:
        """Read the whole data region into resident memory (resident.py): `array` then returns views
        of that copy, and the file is never mapped."""
        if self._map is not None:
            raise TinyExaoneError(f"{self.path}: already memory-mapped")
        self._resident = read_resident(self.path, self.data_start, self.file_size - self.data_start)

    @property
    def resident(self) -> np.ndarray | None:
        """The in-memory copy of the data region, when read_into_memory ran."""
        return self._resident

    def array(self, name: str) -> np.ndarray:
        """The stored array as a read-only NumPy view of the in-memory copy of the data region, or
        else of the file's memory map (no copy either way)."""
        entry = self.entries[name]
        dtype = DTYPES[entry.dtype]
        if entry.nbytes == 0:
            return np.zeros(entry.shape, dtype)
        count = entry.nbytes // dtype.itemsize
        if self._resident is not None:
            return self._resident[entry.start - self.data_start : entry.start - self.data_start + entry.nbytes].view(
                dtype).reshape(entry.shape)
        if self._map is None:
            mapped = MappedFile(self.path, self.file_size)
            try:
                self._map = mmap.mmap(mapped.fileno(), 0, access=mmap.ACCESS_READ)
            except (OSError, ValueError) as exc:
                raise TinyExaoneError(f"{self.path}: cannot memory-map ({exc})") from None
            if len(self._map) != self.file_size:
                raise TinyExaoneError(f"{self.path}: the file changed size while being opened")
            self.mapped_file = mapped
        return np.frombuffer(self._map, dtype=dtype, count=count, offset=entry.start).reshape(entry.shape)


def _check_format(path: Path, raw: bytes, metadata) -> None:
    """The format name and version, then the header checksum: before any entry is looked at."""
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        fail(path, "not a tinyexaone compact file (no string __metadata__ in the safetensors header)")
    if metadata.get("format") != FORMAT_NAME:
        fail(path, f"not a tinyexaone compact file (format is {metadata.get('format')!r:.40}, "
                   f"expected {FORMAT_NAME!r})")
    version = metadata.get("format_version", "")
    if not re.fullmatch(r"[0-9]{1,9}", version) or int(version) < 1:
        fail(path, f"corrupt header (format_version {version!r:.20} is not a positive integer)")
    if int(version) > FORMAT_VERSION:
        fail(path, f"compact format version {int(version)} is newer than this tinyexaone supports "
                   f"(up to {FORMAT_VERSION}); upgrade tinyexaone")
    if raw.count(CHECKSUM_MARK) != 1:
        fail(path, "corrupt header (no single header_sha256 field)")
    at = raw.index(CHECKSUM_MARK) + len(CHECKSUM_MARK)
    stored = raw[at : at + 64]
    if not re.fullmatch(rb"[0-9a-f]{64}", stored) or metadata.get(CHECKSUM_KEY) != stored.decode("ascii"):
        fail(path, "corrupt header (malformed header_sha256)")
    actual = hashlib.sha256(raw[:at] + b"0" * 64 + raw[at + 64 :]).hexdigest()
    if actual != stored.decode("ascii"):
        fail(path, "corrupt header (header checksum mismatch: the file is damaged)")


def _check_layout(header: SafetensorsHeader) -> dict[str, CompactEntry]:
    """Padding entries well-formed, tensors aligned, the data region covered without gap or overlap;
    returns the non-padding entries."""
    path, data_start = header.path, header.data_start
    if data_start % ALIGNMENT:
        fail(path, f"data region starts at byte {data_start}, not aligned to {ALIGNMENT}")
    entries = {}
    for name, entry in header.entries.items():
        if name.startswith(PADDING_PREFIX):
            if entry.dtype != "U8" or len(entry.shape) != 1 or not 0 < entry.nbytes < ALIGNMENT:
                fail(path, f"corrupt padding entry '{name:.80}'")
        elif entry.start % ALIGNMENT:
            fail(path, f"tensor '{name:.80}' is not aligned to {ALIGNMENT} bytes")
        else:
            entries[name] = entry
    position = data_start
    for entry in sorted(header.entries.values(), key=lambda e: (e.start, e.start + e.nbytes, e.name)):
        if entry.start != position:
            fail(path, f"tensor '{entry.name:.80}' overlaps another or leaves a gap in the data region")
        position = entry.start + entry.nbytes
    if position != header.file_size:
        fail(path, f"{header.file_size - position} bytes after the last tensor (not a complete compact file)")
    return entries


def _json_field(path: Path, metadata: dict[str, str], key: str) -> dict:
    text = metadata.get(key)
    if text is None:
        fail(path, f"corrupt header (metadata has no '{key}')")
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        fail(path, f"corrupt header (metadata '{key}' is not valid JSON)")
    if not isinstance(value, dict):
        fail(path, f"corrupt header (metadata '{key}' is not a JSON object)")
    return value


def _check_integrity_record(path: Path, metadata: dict[str, str], entries: dict[str, CompactEntry]) -> dict:
    integrity = _json_field(path, metadata, "integrity")
    sha = integrity.get("data_sha256")
    if not isinstance(sha, str) or not re.fullmatch(r"[0-9a-f]{64}", sha):
        fail(path, "corrupt header (integrity record has no valid data_sha256)")
    sizes = integrity.get("tensors")
    if not isinstance(sizes, dict) or set(sizes) != set(entries):
        fail(path, "corrupt header (integrity record does not list exactly the file's tensors)")
    for name, record in sizes.items():
        if not isinstance(record, dict) or record.get("nbytes") != entries[name].nbytes:
            fail(path, f"tensor '{name:.80}' size differs from its integrity record")
        if not isinstance(record.get("crc32"), str) or not re.fullmatch(r"[0-9a-f]{8}", record["crc32"]):
            fail(path, f"corrupt header (tensor '{name:.80}' has no valid crc32)")
    return integrity


def _check_quantization(path: Path, quant: dict, config: Exaone4Config, entries: dict[str, CompactEntry],
                        version: int) -> None:
    """Every model tensor described once, with the expected shape; every file tensor used once."""
    tensors = quant.get("tensors")
    if not isinstance(tensors, dict):
        fail(path, "corrupt header (quantization record has no 'tensors' object)")
    expected = model_tensors(config)
    for name in expected:
        if name not in tensors:
            fail(path, f"model tensor '{name}' is missing from the file")
    used = set()
    for name, spec in tensors.items():
        if name not in expected:
            fail(path, f"unexpected model tensor '{name:.80}' in the quantization record")
        if not isinstance(spec, dict) or not isinstance(spec.get("arrays"), dict):
            fail(path, f"corrupt quantization record for '{name}'")
        shape = spec.get("shape")
        expected_shape = list(expected[name].shape)
        if not isinstance(shape, list) or not all(is_count(d) for d in shape) or shape != expected_shape:
            fail(path, f"tensor '{name}' has shape {spec.get('shape')!r:.40}, the config implies {expected_shape}")
        scheme = spec.get("scheme")
        if not expected[name].is_matrix:
            if scheme != "float32" or set(spec["arrays"]) != {"weight"}:
                fail(path, f"norm weight '{name}' must be stored as float32")
        elif (not isinstance(scheme, str) or scheme not in QUANTIZED_SCHEMES
              or not is_count(spec.get("group_size")) or spec["group_size"] not in GROUP_SIZES):
            fail(path, f"tensor '{name}' has unsupported scheme {scheme!r:.20} / group size {spec.get('group_size')!r:.20}")
        elif SCHEME_VERSIONS.get(scheme, 1) > version:
            fail(path, f"tensor '{name}' has scheme {scheme}, which format version {version} does not have")
        for array_name in spec["arrays"].values():
            if not isinstance(array_name, str) or array_name not in entries:
                fail(path, f"tensor '{name}' refers to array {array_name!r:.80}, which the file does not hold")
            if array_name in used:
                fail(path, f"array '{array_name:.80}' is used twice")
            used.add(array_name)
    unused = set(entries) - used
    if unused:
        fail(path, f"tensor '{sorted(unused)[0]:.80}' in the file is not part of the model")


def open_compact(path) -> CompactFile:
    """Read the compact file's header once and validate all of it; reads no tensor data."""
    path = Path(path)
    header = read_header(path, COMPACT_DTYPES, verify=lambda raw, metadata: _check_format(path, raw, metadata))
    entries = _check_layout(header)
    _check_integrity_record(path, header.metadata, entries)
    config_text = header.metadata.get("config.json")
    if config_text is None:
        fail(path, "corrupt header (no embedded config.json)")
    try:
        config = parse_config(json.loads(config_text))
    except (json.JSONDecodeError, RecursionError):
        fail(path, "embedded config.json is not valid JSON")
    except TinyExaoneError as exc:
        fail(path, f"embedded {exc}")
    version = int(header.metadata["format_version"])
    files = {"config.json": config_text}
    for name in EMBEDDED_FILES:
        if name in header.metadata:
            value = header.metadata[name]
            files[name] = decode_embedded(path, name, value) if version >= COMPRESSED_FILES_VERSION else value
    quantization = _json_field(path, header.metadata, "quantization")
    _check_quantization(path, quantization, config, entries, version)
    return CompactFile(header, entries, config, quantization, files)


def verify_data(compact: CompactFile) -> str:
    """Check the data region against the SHA-256 (and each tensor's CRC-32); returns the digest."""
    integrity = json.loads(compact.metadata["integrity"])
    sha = hashlib.sha256()
    try:
        with open(compact.path, "rb") as f:
            f.seek(8 + compact.header_len)
            while chunk := f.read(16 << 20):
                sha.update(chunk)
    except OSError as exc:
        raise TinyExaoneError(f"{compact.path}: cannot read ({exc.strerror})") from None
    if sha.hexdigest() == integrity["data_sha256"]:
        return integrity["data_sha256"]
    for name, record in integrity["tensors"].items():
        view = memoryview(compact.array(name)).cast("B") if compact.entries[name].nbytes else b""
        if f"{zlib.crc32(view):08x}" != record["crc32"]:
            fail(compact.path, f"data checksum mismatch: tensor '{name}' is damaged")
    fail(compact.path, "data checksum mismatch: padding between tensors is damaged")
