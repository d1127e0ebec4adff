"""Opening a model: the one loader, for every kind of model file.

`load(path) -> ChatModel` and `open_model(path) -> (Model, tokenizer_loader)`. A path is a
Hugging Face model directory (config.json plus model.safetensors or its shards), a compact file
written by `tinyexaone quantize`, or a GGUF file of architecture exaone4 (gguf_source.py); a
name that is no existing path but reads as a Hub reference (`ORG/NAME[:TAG][@REVISION]`, or with
`revision=`) is taken from the Hugging Face cache, or downloaded into it (hub.py). Each kind is a
source with a config and two ways to turn a `TensorSpec` of the tensor table (tensors.py) into a
weight: a matrix (`MatrixWeight`) or a norm vector. `build_weights` asks the source for every
tensor of the table, so every kind fills `ModelWeights` the same way. Every header is read and
validated once, before any weight byte is read: the directory's safetensors headers are checked
against the table, the compact header against the table and its own checksums (compact.py), the
GGUF header with every size bounded (gguf_file.py). A compact file's data region is read into
memory in one piece (resident.py: huge pages where the OS gives them, decode's fastest place),
unless `mmap=True` or it does not fit in the available memory, and its arrays become
`QuantizedWeight` views of that copy or of the file's memory map. A directory's matrices stay in
the file's memory map where their layout allows: F32 as zero-copy float32 views, BF16 as
`Bf16Weight` over the mapped bits, F16 widened up front; a GGUF's quantized tensors are moved
into our layout in memory (gguf_source.py says how, and logs what it requantized). The
tokenizer comes from the directory's files, the compact file's embedded texts or the GGUF
metadata, built on first use. A wrong or damaged model fails fast with one `TinyExaoneError`
line naming the problem.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .bf16 import Bf16Weight
from .chat_model import ChatModel
from .checkpoint import check_tensors, open_checkpoint
from .compact import CompactFile, open_compact
from .config import Exaone4Config, load_config
from .errors import TinyExaoneError
from .gguf_source import GgufSource
from .model import Model
from .quantized import SCHEMES, QuantizedWeight, from_version_1
from .resident import fits_in_memory
from .safetensors_file import fail
from .tensors import TensorSpec, build_weights
from .tokenizer import read_tokenizer_files, tokenizer_from_files
from .weights import DenseWeight, MatrixWeight

GGUF_MAGIC = b"GGUF"


class DirectorySource:
    """A Hugging Face model directory: config.json, safetensors file(s), tokenizer files."""

    def __init__(self, path: Path):
        self.path = path
        self.config: Exaone4Config = load_config(path)
        self.checkpoint = open_checkpoint(path)
        check_tensors(self.config, self.checkpoint)

    def matrix(self, spec: TensorSpec) -> MatrixWeight:
        if self.checkpoint.entries[spec.name].dtype == "BF16":
            return Bf16Weight(self.checkpoint.raw(spec.name))
        return DenseWeight(self.checkpoint.float32(spec.name))

    def norm(self, spec: TensorSpec) -> np.ndarray:
        return self.checkpoint.float32(spec.name)

    def mapped_files(self) -> list:
        return list(self.checkpoint.mapped_files.values())

    def tokenizer_loader(self):
        if not (self.path / "tokenizer.json").exists():
            return None
        return lambda: tokenizer_from_files(read_tokenizer_files(self.path), str(self.path))


class CompactSource:
    """A compact file: its header (read once), its arrays (read into memory, or memory-mapped with
    `mmap` or when they do not fit), embedded texts."""

    def __init__(self, path: Path, mmap: bool = False):
        self.compact: CompactFile = open_compact(path)
        self.config: Exaone4Config = self.compact.config
        if not mmap and fits_in_memory(self.compact.file_size):
            self.compact.read_into_memory()

    def _spec(self, spec: TensorSpec) -> dict:
        return self.compact.quantization["tensors"][spec.name]

    def matrix(self, spec: TensorSpec) -> MatrixWeight:
        stored = self._spec(spec)
        arrays = {key: self.compact.array(name) for key, name in stored["arrays"].items()}
        (bits, affine), group_size = SCHEMES[stored["scheme"]], stored["group_size"]
        try:
            if self.compact.format_version == 1:  # rows stored one by one: repacked in memory
                arrays = from_version_1(bits, group_size, spec.shape, arrays)
            return QuantizedWeight.from_arrays(bits, group_size, spec.shape, arrays, affine)
        except TinyExaoneError as exc:
            fail(self.compact.path, f"tensor '{spec.name}' has inconsistent quantized arrays ({exc})")

    def norm(self, spec: TensorSpec) -> np.ndarray:
        array = self.compact.array(self._spec(spec)["arrays"]["weight"])
        if array.dtype != np.float32 or array.shape != spec.shape:
            fail(self.compact.path, f"norm weight '{spec.name}' must be float32 of shape {list(spec.shape)}, "
                                    f"the file holds {array.dtype} {list(array.shape)}")
        return array

    def mapped_files(self) -> list:
        return [self.compact.mapped_file] if self.compact.mapped_file is not None else []

    def tokenizer_loader(self):
        files = self.compact.files
        if "tokenizer.json" not in files:
            return None
        return lambda: tokenizer_from_files(files, f"{self.compact.path} (embedded files)")


def open_source(path, mmap: bool = False) -> DirectorySource | CompactSource | GgufSource:
    path = Path(path)
    if not path.exists():
        raise TinyExaoneError(f"{path}: no such file or directory")
    if path.is_dir():
        return DirectorySource(path)
    if not path.is_file():
        raise TinyExaoneError(f"{path}: not a model (neither a regular file nor a directory)")
    try:
        with open(path, "rb") as f:
            start = f.read(9)
    except OSError as exc:
        raise TinyExaoneError(f"{path}: cannot read ({exc.strerror})") from None
    if start[:4] == GGUF_MAGIC:
        return GgufSource(path)
    if start[8:9] != b"{":  # a safetensors header's JSON begins right after its 8-byte length
        raise TinyExaoneError(f"{path}: not a model (neither a tinyexaone compact file nor a Hugging Face model "
                              f"directory)")
    return CompactSource(path, mmap)


def model_path(spec, revision: str | None = None) -> Path:
    """The local path of `spec`: itself when it exists (or is no Hub reference), else the cached
    or downloaded model the reference names (hub.py)."""
    path = Path(spec)
    if path.exists() or not isinstance(spec, str):
        return path
    from . import hub

    reference = hub.parse_reference(spec, revision)
    return hub.resolve(reference).path if reference is not None else path


def open_model(path, revision: str | None = None, mmap: bool = False) -> tuple[Model, object]:
    """(Model, tokenizer_loader) for the model at `path`; tokenizer_loader() builds its tokenizer,
    and is None when the model has none. `mmap` keeps a compact file's weights in its memory map
    instead of reading them into memory."""
    source = open_source(model_path(path, revision), mmap)
    weights = build_weights(source.config, source.matrix, source.norm)
    weights.mapped_files = source.mapped_files()  # made while the weights were built
    if isinstance(source, GgufSource):
        source.report_requantized()
    return Model(source.config, weights), source.tokenizer_loader()


def load(path, revision: str | None = None, mmap: bool = False) -> ChatModel:
    """Load an EXAONE 4 model from a Hugging Face model directory, a compact file, a GGUF file or
    a Hub reference (`revision`: its branch, tag or commit). A compact file's weights are read
    into memory (huge pages where the OS gives them: decode is faster there), unless `mmap` is
    set or they do not fit in the memory available; then they stay in the file's memory map."""
    model, tokenizer_loader = open_model(path, revision, mmap)
    return ChatModel(model, tokenizer_loader=tokenizer_loader)
