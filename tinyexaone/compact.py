"""The one-file compact model format ("tinyexaone-compact", version 1): writer and zero-copy reader.

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
header last. `open_compact(path)` validates the whole header (format and version, checksum,
dtypes, shapes, offsets inside the file, alignment, sizes, the quantization description against
the config) before any tensor is touched, so a damaged or hostile file fails with one
`TinyExaoneError` line; `load_compact(path)` then builds a `Model` whose weights are read-only
views of one memory map (nothing is copied). `embedded_files(path)` returns the embedded
tokenizer/template/config texts, and `verify_data(path)` checks the data checksums.
"""

from __future__ import annotations

import hashlib
import json
import math
import mmap
import re
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .checkpoint import expected_tensors
from .config import Exaone4Config, parse_config
from .errors import TinyExaoneError
from .model import Model
from .quantized import QuantizedWeight
from .weights import LayerWeights, ModelWeights

FORMAT_NAME = "tinyexaone-compact"
FORMAT_VERSION = 1
ALIGNMENT = 64
MAX_HEADER_BYTES = 100 * 1024 * 1024  # the safetensors format's own limit
EMBEDDED_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja", "generation_config.json",
)
PADDING_PREFIX = "__padding__."
CHECKSUM_KEY = "header_sha256"
CHECKSUM_MARK = b'"header_sha256":"'
QUANTIZED_SCHEMES = {"int8": 8, "int4": 4}
GROUP_SIZES = (32, 64, 128)

# safetensors dtype code <-> little-endian NumPy dtype
DTYPES = {
    "U8": np.dtype("u1"), "I8": np.dtype("i1"), "U16": np.dtype("<u2"), "I16": np.dtype("<i2"),
    "U32": np.dtype("<u4"), "I32": np.dtype("<i4"), "U64": np.dtype("<u8"), "I64": np.dtype("<i8"),
    "F16": np.dtype("<f2"), "F32": np.dtype("<f4"), "F64": np.dtype("<f8"),
}
DTYPE_CODES = {dtype: code for code, dtype in DTYPES.items()}


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


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
    """

    def __init__(self, file, metadata: dict[str, str], tensor_names: list[str]):
        self.file = file
        self.metadata = dict(metadata)
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
        metadata = {"format": FORMAT_NAME, "format_version": str(FORMAT_VERSION), CHECKSUM_KEY: "0" * 64}
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


@dataclass(frozen=True)
class CompactEntry:
    name: str
    dtype: str  # safetensors code, e.g. "U8", "F32"
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the file
    nbytes: int


class CompactFile:
    """A validated compact file: metadata, config, tensor entries, lazily memory-mapped data."""

    def __init__(self, path: Path, file_size: int, header_len: int, metadata: dict[str, str],
                 entries: dict[str, CompactEntry], config: Exaone4Config, quantization: dict):
        self.path = path
        self.file_size = file_size
        self.header_len = header_len
        self.metadata = metadata
        self.entries = entries  # every non-padding tensor
        self.config = config
        self.quantization = quantization
        self._map: mmap.mmap | None = None

    @property
    def format_version(self) -> int:
        return int(self.metadata["format_version"])

    @property
    def files(self) -> dict[str, str]:
        """The embedded files present, by file name (config.json included)."""
        names = ("config.json",) + EMBEDDED_FILES
        return {name: self.metadata[name] for name in names if name in self.metadata}

    def array(self, name: str) -> np.ndarray:
        """The tensor as a read-only NumPy view of the file's memory map (no copy)."""
        entry = self.entries[name]
        dtype = DTYPES[entry.dtype]
        if entry.nbytes == 0:
            return np.zeros(entry.shape, dtype)
        if self._map is None:
            try:
                with open(self.path, "rb") as f:
                    self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            except (OSError, ValueError) as exc:
                raise TinyExaoneError(f"{self.path}: cannot memory-map ({exc})") from None
            if len(self._map) != self.file_size:
                raise TinyExaoneError(f"{self.path}: the file changed size while being opened")
        count = entry.nbytes // dtype.itemsize
        return np.frombuffer(self._map, dtype=dtype, count=count, offset=entry.start).reshape(entry.shape)


def _fail(path: Path, problem: str):
    """Raise the one-line error; control characters from a hostile header are shown escaped."""
    problem = "".join(c if c.isprintable() else repr(c)[1:-1] for c in problem)
    raise TinyExaoneError(f"{path}: {problem}")


def _read_header(path: Path) -> tuple[int, int, bytes]:
    """(file size, header length N, the first 8 + N bytes)."""
    try:
        file_size = path.stat().st_size
        with open(path, "rb") as f:
            prefix = f.read(8)
            if len(prefix) < 8:
                _fail(path, "truncated file (shorter than the 8-byte header length)")
            (header_len,) = struct.unpack("<Q", prefix)
            if header_len > MAX_HEADER_BYTES:
                _fail(path, f"not a compact model file (header length {header_len} is implausible)")
            if 8 + header_len > file_size:
                _fail(path, f"truncated file (header of {header_len} bytes, file of {file_size})")
            raw = f.read(header_len)
    except OSError as exc:
        raise TinyExaoneError(f"{path}: cannot read ({exc.strerror})") from None
    if len(raw) != header_len:
        _fail(path, "truncated file (header cut short)")
    return file_size, header_len, prefix + raw


def _parse_metadata(path: Path, raw: bytes) -> tuple[dict, dict[str, str]]:
    try:
        header = json.loads(raw[8:].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        _fail(path, "corrupt or not a compact model file (header is not valid JSON)")
    if not isinstance(header, dict):
        _fail(path, "corrupt header (not a JSON object)")
    metadata = header.pop("__metadata__", None)
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        _fail(path, "not a tinyexaone compact file (no string __metadata__ in the safetensors header)")
    if metadata.get("format") != FORMAT_NAME:
        _fail(path, f"not a tinyexaone compact file (format is {metadata.get('format')!r}, expected {FORMAT_NAME!r})")
    version = metadata.get("format_version", "")
    if not re.fullmatch(r"[0-9]{1,9}", version) or int(version) < 1:
        _fail(path, f"corrupt header (format_version {version!r} is not a positive integer)")
    if int(version) > FORMAT_VERSION:
        _fail(path, f"compact format version {int(version)} is newer than this tinyexaone supports "
                    f"(up to {FORMAT_VERSION}); upgrade tinyexaone")
    return header, metadata


def _check_header_checksum(path: Path, raw: bytes, metadata: dict[str, str]) -> None:
    if raw.count(CHECKSUM_MARK) != 1:
        _fail(path, "corrupt header (no single header_sha256 field)")
    at = raw.index(CHECKSUM_MARK) + len(CHECKSUM_MARK)
    stored = raw[at : at + 64]
    if not re.fullmatch(rb"[0-9a-f]{64}", stored) or metadata.get(CHECKSUM_KEY) != stored.decode("ascii"):
        _fail(path, "corrupt header (malformed header_sha256)")
    actual = hashlib.sha256(raw[:at] + b"0" * 64 + raw[at + 64 :]).hexdigest()
    if actual != stored.decode("ascii"):
        _fail(path, "corrupt header (header checksum mismatch: the file is damaged)")


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _parse_entries(path: Path, header: dict, data_start: int, data_size: int) -> dict[str, CompactEntry]:
    """Validate every tensor entry: dtype, shape, size, alignment, and gap-free coverage of the data."""
    spans = []
    entries = {}
    for name, info in header.items():
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            _fail(path, f"corrupt header entry for tensor '{name:.80}'")
        code, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if not isinstance(code, str) or code not in DTYPES:
            _fail(path, f"tensor '{name:.80}' has unsupported dtype {code!r:.20}")
        if not isinstance(shape, list) or len(shape) > 8 or not all(_is_count(d) for d in shape):
            _fail(path, f"tensor '{name:.80}' has an invalid shape {shape!r:.80}")
        if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_count(o) for o in offsets):
            _fail(path, f"tensor '{name:.80}' has invalid data_offsets {offsets!r:.80}")
        begin, end = offsets
        nbytes = math.prod(shape) * DTYPES[code].itemsize
        if end < begin or end - begin != nbytes:
            _fail(path, f"tensor '{name:.80}' data_offsets {offsets} do not match its shape {shape} and dtype {code}")
        if end > data_size:
            _fail(path, f"tensor '{name:.80}' lies outside the file (ends at byte {data_start + end}, "
                        f"file has {data_start + data_size}: truncated?)")
        if name.startswith(PADDING_PREFIX):
            if code != "U8" or len(shape) != 1 or not 0 < nbytes < ALIGNMENT:
                _fail(path, f"corrupt padding entry '{name:.80}'")
        elif (data_start + begin) % ALIGNMENT:
            _fail(path, f"tensor '{name:.80}' is not aligned to {ALIGNMENT} bytes")
        else:
            entries[name] = CompactEntry(name, code, tuple(shape), data_start + begin, nbytes)
        spans.append((begin, end, name))
    position = 0
    for begin, end, name in sorted(spans):
        if begin != position:
            _fail(path, f"tensor '{name:.80}' overlaps another or leaves a gap in the data region")
        position = end
    if position != data_size:
        _fail(path, f"{data_size - position} bytes after the last tensor (not a complete compact file)")
    return entries


def _json_field(path: Path, metadata: dict[str, str], key: str) -> dict:
    text = metadata.get(key)
    if text is None:
        _fail(path, f"corrupt header (metadata has no '{key}')")
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        _fail(path, f"corrupt header (metadata '{key}' is not valid JSON)")
    if not isinstance(value, dict):
        _fail(path, f"corrupt header (metadata '{key}' is not a JSON object)")
    return value


def _check_integrity_record(path: Path, metadata: dict[str, str], entries: dict[str, CompactEntry]) -> dict:
    integrity = _json_field(path, metadata, "integrity")
    sha = integrity.get("data_sha256")
    if not isinstance(sha, str) or not re.fullmatch(r"[0-9a-f]{64}", sha):
        _fail(path, "corrupt header (integrity record has no valid data_sha256)")
    sizes = integrity.get("tensors")
    if not isinstance(sizes, dict) or set(sizes) != set(entries):
        _fail(path, "corrupt header (integrity record does not list exactly the file's tensors)")
    for name, record in sizes.items():
        if not isinstance(record, dict) or record.get("nbytes") != entries[name].nbytes:
            _fail(path, f"tensor '{name:.80}' size differs from its integrity record")
        if not isinstance(record.get("crc32"), str) or not re.fullmatch(r"[0-9a-f]{8}", record["crc32"]):
            _fail(path, f"corrupt header (tensor '{name:.80}' has no valid crc32)")
    return integrity


def _check_quantization(path: Path, quant: dict, config: Exaone4Config, entries: dict[str, CompactEntry]) -> None:
    """Every model tensor described once, with the expected shape; every file tensor used once."""
    tensors = quant.get("tensors")
    if not isinstance(tensors, dict):
        _fail(path, "corrupt header (quantization record has no 'tensors' object)")
    expected = expected_tensors(config)
    for name in expected:
        if name not in tensors:
            _fail(path, f"model tensor '{name}' is missing from the file")
    used = set()
    for name, spec in tensors.items():
        if name not in expected:
            _fail(path, f"unexpected model tensor '{name:.80}' in the quantization record")
        if not isinstance(spec, dict) or not isinstance(spec.get("arrays"), dict):
            _fail(path, f"corrupt quantization record for '{name}'")
        shape = spec.get("shape")
        if not isinstance(shape, list) or not all(_is_count(d) for d in shape) or shape != list(expected[name]):
            _fail(path, f"tensor '{name}' has shape {spec.get('shape')!r:.40}, the config implies {list(expected[name])}")
        scheme = spec.get("scheme")
        if len(expected[name]) == 1:
            if scheme != "float32" or set(spec["arrays"]) != {"weight"}:
                _fail(path, f"norm weight '{name}' must be stored as float32")
        elif (not isinstance(scheme, str) or scheme not in QUANTIZED_SCHEMES
              or not _is_count(spec.get("group_size")) or spec["group_size"] not in GROUP_SIZES):
            _fail(path, f"tensor '{name}' has unsupported scheme {scheme!r:.20} / group size {spec.get('group_size')!r:.20}")
        for array_name in spec["arrays"].values():
            if not isinstance(array_name, str) or array_name not in entries:
                _fail(path, f"tensor '{name}' refers to array {array_name!r:.80}, which the file does not hold")
            if array_name in used:
                _fail(path, f"array '{array_name:.80}' is used twice")
            used.add(array_name)
    unused = set(entries) - used
    if unused:
        _fail(path, f"tensor '{sorted(unused)[0]:.80}' in the file is not part of the model")


def open_compact(path) -> CompactFile:
    """Open and fully validate a compact file's header; reads no tensor data."""
    path = Path(path)
    file_size, header_len, raw = _read_header(path)
    header, metadata = _parse_metadata(path, raw)
    _check_header_checksum(path, raw, metadata)
    data_start = 8 + header_len
    if data_start % ALIGNMENT:
        _fail(path, f"data region starts at byte {data_start}, not aligned to {ALIGNMENT}")
    entries = _parse_entries(path, header, data_start, file_size - data_start)
    _check_integrity_record(path, metadata, entries)
    config_text = metadata.get("config.json")
    if config_text is None:
        _fail(path, "corrupt header (no embedded config.json)")
    try:
        config = parse_config(json.loads(config_text))
    except (json.JSONDecodeError, RecursionError):
        _fail(path, "embedded config.json is not valid JSON")
    except TinyExaoneError as exc:
        _fail(path, f"embedded {exc}")
    quantization = _json_field(path, metadata, "quantization")
    _check_quantization(path, quantization, config, entries)
    return CompactFile(path, file_size, header_len, metadata, entries, config, quantization)


def _matrix(compact: CompactFile, name: str) -> QuantizedWeight:
    spec = compact.quantization["tensors"][name]
    arrays = {key: compact.array(array_name) for key, array_name in spec["arrays"].items()}
    try:
        return QuantizedWeight.from_arrays(QUANTIZED_SCHEMES[spec["scheme"]], spec["group_size"],
                                           tuple(spec["shape"]), arrays)
    except (ValueError, TypeError, KeyError) as exc:
        raise TinyExaoneError(f"{compact.path}: tensor '{name}' has inconsistent quantized arrays ({exc})") from None


def _norm(compact: CompactFile, name: str) -> np.ndarray:
    spec = compact.quantization["tensors"][name]
    array = compact.array(spec["arrays"]["weight"])
    if array.dtype != np.float32 or array.shape != tuple(spec["shape"]):
        _fail(compact.path, f"norm weight '{name}' must be float32 of shape {spec['shape']}, "
                            f"the file holds {array.dtype} {list(array.shape)}")
    return array


def compact_weights(compact: CompactFile) -> ModelWeights:
    """ModelWeights whose matrices and norms are views of the file's memory map."""
    config = compact.config
    layers = []
    for i in range(config.num_hidden_layers):
        p = f"model.layers.{i}."
        layers.append(LayerWeights(
            q_proj=_matrix(compact, p + "self_attn.q_proj.weight"),
            k_proj=_matrix(compact, p + "self_attn.k_proj.weight"),
            v_proj=_matrix(compact, p + "self_attn.v_proj.weight"),
            o_proj=_matrix(compact, p + "self_attn.o_proj.weight"),
            q_norm=_norm(compact, p + "self_attn.q_norm.weight"),
            k_norm=_norm(compact, p + "self_attn.k_norm.weight"),
            post_attention_layernorm=_norm(compact, p + "post_attention_layernorm.weight"),
            gate_proj=_matrix(compact, p + "mlp.gate_proj.weight"),
            up_proj=_matrix(compact, p + "mlp.up_proj.weight"),
            down_proj=_matrix(compact, p + "mlp.down_proj.weight"),
            post_feedforward_layernorm=_norm(compact, p + "post_feedforward_layernorm.weight"),
        ))
    embed = _matrix(compact, "model.embed_tokens.weight")
    head = embed if config.tie_word_embeddings else _matrix(compact, "lm_head.weight")
    return ModelWeights(embed_tokens=embed, layers=layers, norm=_norm(compact, "model.norm.weight"), lm_head=head)


def load_compact(path) -> Model:
    """A Model running from the compact file (weights memory-mapped); its tokenizer, when one is
    embedded, is read on first use of `Model.tokenizer`."""
    compact = open_compact(path)
    tokenizer_source = compact.path if "tokenizer.json" in compact.metadata else None
    return Model(compact.config, compact_weights(compact), tokenizer_source=tokenizer_source)


def is_compact_file(path) -> bool:
    """True when `path` is a file whose header names the compact format (any version); reads ~1 KB."""
    path = Path(path)
    if not path.is_file():
        return False
    try:
        with open(path, "rb") as f:
            prefix = f.read(8 + 4096)
    except OSError:
        return False
    return f'"format":"{FORMAT_NAME}"'.encode() in prefix[8:]


def embedded_files(path) -> dict[str, str]:
    """The embedded files of a validated compact file, by name: config.json and whichever of
    `EMBEDDED_FILES` (tokenizer.json, tokenizer_config.json, ...) it holds."""
    return open_compact(path).files


def extract_embedded_files(compact, directory) -> Path:
    """Write the embedded files of `compact` (a CompactFile or a path) into `directory`, which
    then reads like a Hugging Face directory without weights; returns the directory."""
    compact = compact if isinstance(compact, CompactFile) else open_compact(compact)
    directory = Path(directory)
    for name, text in compact.files.items():
        (directory / name).write_text(text, encoding="utf-8")
    return directory


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
            _fail(compact.path, f"data checksum mismatch: tensor '{name}' is damaged")
    _fail(compact.path, "data checksum mismatch: padding between tensors is damaged")
