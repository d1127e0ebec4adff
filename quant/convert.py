"""Streaming conversion of a Hugging Face EXAONE 4 checkpoint into one compact file.

`convert(src, out, bits=, group_size=, embedding_bits=, mixed=, calibration=, force=)` validates
SRC like the loader does (config, every tensor's name, dtype and shape), then quantizes one tensor
at a time: the matrices to int`bits` with `group_size` (the embedding, and an untied lm_head, to
int`embedding_bits`, with group 128 when that is int8), the norms kept float32; a tied head is
stored once, as the embedding. With `mixed` (int4 only; the command line's default) the layer
matrices, and the head unless `embedding_bits` is 4, follow the mixed recipe below instead of one
scheme (int4k and int6k included). With `calibration` (a UTF-8 text
file) each matrix's scale fit weights its input columns by their activations' mean square
(calibration.py). Each matrix is read from the source file in row slices of about
`SLICE_ELEMENTS` weights and quantized slice by slice (the group-wise layout stacks rows, so the
slices' arrays are written one after another), so peak memory stays near one slice plus one
quantized tensor, never the model.

The output is written to a hidden temporary file in OUT's directory (`.<name>.<random>.tmp`),
flushed to disk and renamed to OUT only when complete. Any exception, Ctrl-C (SIGINT) or SIGTERM
(turned into `SystemExit(143)` while converting in the main thread, see signals.py) removes the
temporary file, so an interrupted run never leaves a file that looks valid; an OSError while
writing (a full disk) becomes a one-line `TinyExaoneError`. An existing OUT is refused unless
`force`. Tensor names and shapes come from the tensor table (tensors.py). That writing half,
`write_compact`, also writes the compact file of a GGUF source (gguf_convert.py).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import click
import numpy as np

from tinyexaone.checkpoint import check_tensors, open_checkpoint
from tinyexaone.compact import EMBEDDED_FILES, CompactWriter, needed_version
from tinyexaone.config import load_config
from tinyexaone.errors import TinyExaoneError
from tinyexaone.affine_fit import SUPER_BLOCK
from tinyexaone.quantized import ROWS, expected_arrays, quantize, scheme_name
from tinyexaone.safetensors_file import DTYPES, TensorEntry, widen_bf16
from tinyexaone.signals import sigterm_raises
from tinyexaone.tensors import EMBEDDING, LM_HEAD, model_tensors

from .calibration import column_importance

SLICE_ELEMENTS = 1 << 22  # weights per quantized row slice (~16 MB of float32)
HEAD_NAMES = (EMBEDDING, LM_HEAD)


@dataclass
class ConversionReport:
    out: Path
    file_bytes: int = 0
    total_params: int = 0
    matrix_params: int = 0
    matrix_bytes: int = 0  # stored bytes of the quantized matrices (codes + scales)
    relative_errors: dict[str, float] = field(default_factory=dict)  # matrix -> ||W - Q(W)|| / ||W||
    seconds: float = 0.0

    @property
    def matrix_bits_per_weight(self) -> float:
        return 8 * self.matrix_bytes / max(self.matrix_params, 1)

    @property
    def file_bits_per_weight(self) -> float:
        return 8 * self.file_bytes / max(self.total_params, 1)

    @property
    def worst_error(self) -> tuple[str, float]:
        return max(self.relative_errors.items(), key=lambda item: item[1])


def array_name(tensor: str, key: str) -> str:
    """The file name of one stored array of a quantized tensor, e.g. 'model.layers.0.mlp.up_proj.scales'."""
    return f"{tensor.removesuffix('.weight')}.{key}"


def _read_float32(entry: TensorEntry, first: int, count: int) -> np.ndarray:
    """Elements [first, first + count) of a source tensor as a fresh float32 array (no memory map,
    so the pages read do not stay in this process's resident memory)."""
    storage = DTYPES[entry.dtype]
    try:
        with open(entry.file, "rb") as f:
            f.seek(entry.start + first * storage.itemsize)
            raw = np.fromfile(f, dtype=storage, count=count)
    except OSError as exc:
        raise TinyExaoneError(f"{entry.file}: cannot read ({exc.strerror})") from None
    if raw.size != count:
        raise TinyExaoneError(f"{entry.file}: file ended while reading tensor '{entry.name}' (truncated?)")
    return widen_bf16(raw) if entry.dtype == "BF16" else raw.astype(np.float32)


def _error_sums(qw, w: np.ndarray) -> tuple[float, float]:
    """(sum of squared error, sum of squared weights) of one quantized slice, in float64 (NumPy,
    which releases the GIL: it runs on the helper thread while the next slice is fitted)."""
    diff = qw.dequantize() - w  # [rows, in]
    return (float(np.einsum("ij,ij->", diff, diff, dtype=np.float64)),
            float(np.einsum("ij,ij->", w, w, dtype=np.float64)))


def _quantize_matrix(entry: TensorEntry, bits: int, group_size: int, affine: bool = False,
                     weights: np.ndarray | None = None) -> tuple[dict[str, list[np.ndarray]], float]:
    """The stored arrays of `entry` (int`bits`, or int4k with `affine`), as row-slice parts per
    array name, and its relative error; `weights` [in] weight each input column's error in the
    fit (calibration). A slice's error is measured on one helper thread while the main thread
    reads and fits the next slice (at most one slice waits, so memory stays near two slices)."""
    out_dim, in_dim = entry.shape
    rows_per_slice = max(1, SLICE_ELEMENTS // in_dim // ROWS) * ROWS  # whole row groups: slices stack
    parts: dict[str, list[np.ndarray]] = {}
    sums = [0.0, 0.0]  # squared error, squared weights
    pending = None
    with ThreadPoolExecutor(1) as measuring:
        for first in range(0, out_dim, rows_per_slice):
            rows = min(rows_per_slice, out_dim - first)
            w = _read_float32(entry, first * in_dim, rows * in_dim).reshape(rows, in_dim)  # [rows, in]
            try:
                qw = quantize(w, bits, group_size, weights, affine)
            except TinyExaoneError as exc:
                raise TinyExaoneError(f"tensor '{entry.name}': {exc}") from None
            if pending is not None:
                sums = [a + b for a, b in zip(sums, pending.result())]
            pending = measuring.submit(_error_sums, qw, w)
            for key, array in qw.arrays.items():
                parts.setdefault(key, []).append(array)
        error_sq, weight_sq = [a + b for a, b in zip(sums, pending.result())]
    relative = math.sqrt(error_sq / weight_sq) if weight_sq > 0 else (0.0 if error_sq == 0 else math.inf)
    return parts, relative


def embedding_group_for(embedding_bits: int, group_size: int) -> int:
    """The embedding's group size: 128 for int8 (8.125 bits/weight; int8's error is small at any
    group), the layers' group size for int4."""
    return 128 if embedding_bits == 8 else group_size


# The mixed int4 recipe (`mixed=True`, the command line's default), measured in docs/quantization.md:
# the embedding (also the tied head) in int6k (6.5625 bits, llama.cpp's q6_K scheme); every k_proj
# and v_proj, the down_proj of the first and last eighth of the layers and the first layer's
# q_proj in int6k too (of the choices measured, six bits for the attention's k and v lowered the
# output's drift most); every other layer matrix
# int4k (the affine Q4_K-like kind, 4.5 bits). Where the input size is not a multiple of 256 (the
# demo model's 192 and 576) int6k becomes int6 g32 and int4k int4 g32 (_plan), but the head
# becomes int8 g64 (g32 where 64 does not divide the input size): on the demo model int6 g32 there
# gave 0.0082 KL, int8 0.0061.
MIXED_HEAD = (6, 32, True)
MIXED_HEAD_FALLBACK = (8, 64, False)  # the head where the input size has no super-blocks
SIX_BIT_FIELDS = ("k_proj", "v_proj")  # int6k in every layer
SIX_BIT_EDGE_FIELDS = ("down_proj",)  # int6k in the first and last eighth of the layers
SIX_BIT_FIRST_LAYER = ("q_proj",)  # int6k in layer 0


def edge_layer(layer: int, n_layers: int) -> bool:
    """Whether a layer is in the first or the last eighth of the model (llama.cpp's Q4_K_M gives
    these, and every third layer between, q6_K for attn_v and ffn_down)."""
    return layer < n_layers // 8 or layer >= 7 * n_layers // 8


def _mixed_scheme(spec, group_size: int, n_layers: int) -> tuple[int, int, bool]:
    """(bits, group size, affine: int4k / int6k) of a layer matrix in the mixed int4 recipe."""
    if (spec.field in SIX_BIT_FIELDS or (spec.field in SIX_BIT_EDGE_FIELDS and edge_layer(spec.layer, n_layers))
            or (spec.layer == 0 and spec.field in SIX_BIT_FIRST_LAYER)):
        return 6, group_size, group_size == 32  # int6k where the input size allows (_plan), else int6
    return 4, group_size, group_size == 32  # int4k where the input size allows (_plan), else int4 g32


def _plan(config, bits: int, group_size: int, embedding_bits: int,
          mixed: bool = False) -> dict[str, tuple[int, int, bool] | None]:
    """Model tensor -> (bits, group size, affine: int4k), or None when kept float32; checks every
    matrix fits its group. `mixed` (int4 only) applies the mixed recipe: to the layer matrices, and
    to the head unless `embedding_bits` is 4 (then int4, as asked)."""
    plan = {}
    for name, spec in model_tensors(config).items():
        shape = spec.shape
        if not spec.is_matrix:
            plan[name] = None
            continue
        if name in HEAD_NAMES and mixed and bits == 4 and embedding_bits != 4:
            scheme = MIXED_HEAD if shape[1] % SUPER_BLOCK == 0 else MIXED_HEAD_FALLBACK
        elif name in HEAD_NAMES:
            scheme = (embedding_bits, embedding_group_for(embedding_bits, group_size), False)
        elif mixed and bits == 4:
            scheme = _mixed_scheme(spec, group_size, config.num_hidden_layers)
        else:
            scheme = (bits, group_size, False)
        if shape[1] % scheme[1] or (scheme[2] and shape[1] % SUPER_BLOCK):
            scheme = (scheme[0], group_size, False)  # an input size that the larger group (or int4k) does not divide
        plan[name] = scheme
        if shape[1] % group_size:
            raise TinyExaoneError(
                f"tensor '{name}' has {shape[1]} input columns, not a multiple of the group size {group_size}"
                f" (choose a group size that divides it)"
            )
    return plan


def _quantization_record(plan: dict[str, tuple[int, int, bool] | None], shapes: dict, bits: int, group_size: int,
                         embedding_bits: int) -> dict:
    tensors = {}
    for name, scheme in plan.items():
        if scheme is None:
            tensors[name] = {"scheme": "float32", "shape": list(shapes[name]), "arrays": {"weight": name}}
        else:
            tensor_bits, group, affine = scheme
            keys = expected_arrays(tensor_bits, group, shapes[name], affine=affine)
            tensors[name] = {
                "scheme": scheme_name(tensor_bits, affine), "group_size": group, "shape": list(shapes[name]),
                "arrays": {key: array_name(name, key) for key in keys},
            }
    return {"bits": bits, "group_size": group_size, "embedding_bits": embedding_bits, "tensors": tensors}


def _embedded_texts(src: Path) -> dict[str, str]:
    """The files to embed, by name; JSON files minified (same content, about half the bytes)."""
    texts = {}
    for name in ("config.json",) + EMBEDDED_FILES:
        path = src / name
        if not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8")
            if name.endswith(".json"):
                text = json.dumps(json.loads(text), separators=(",", ":"), ensure_ascii=False)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            raise TinyExaoneError(f"{path}: cannot embed ({exc})") from None
        texts[name] = text
    return texts


def _same_file_in(src: Path, out: Path) -> bool:
    """Whether `out` is (the same file as, a hard link to, or a symlink to) a file of `src`."""
    target = out.stat()
    return any(path.is_file() and path.stat().st_ino == target.st_ino and path.stat().st_dev == target.st_dev
               for path in src.iterdir())


def _check_paths(src: Path, out: Path, force: bool) -> None:
    if not src.exists():
        raise TinyExaoneError(f"{src}: no such file or directory")
    if not src.is_dir():
        raise TinyExaoneError(f"{src}: not a Hugging Face model directory (SRC must be a directory with config.json)")
    if out.is_dir():
        raise TinyExaoneError(f"{out}: is a directory (OUT must be a file path)")
    if out.exists() and not force:
        raise TinyExaoneError(f"{out}: already exists (use --force to overwrite it)")
    if out.exists() and _same_file_in(src, out):
        raise TinyExaoneError(f"{out}: is one of the source model's files (or a link to one); choose another OUT")
    if not out.parent.is_dir():
        raise TinyExaoneError(f"{out.parent}: no such directory for OUT")


def convert(src, out, *, bits: int = 4, group_size: int = 32, embedding_bits: int = 8, mixed: bool = False,
            calibration=None, force: bool = False, show_progress: bool = True) -> ConversionReport:
    """Quantize the model directory `src` into the compact file `out`; see the module docstring."""
    started = time.monotonic()
    src, out = Path(src), Path(out)
    if bits not in (4, 6, 8) or embedding_bits not in (4, 6, 8) or group_size not in (32, 64, 128):
        raise TinyExaoneError(f"unsupported scheme: bits {bits}, embedding bits {embedding_bits}, group size {group_size}")
    _check_paths(src, out, force)
    config = load_config(src)
    checkpoint = open_checkpoint(src)
    check_tensors(config, checkpoint)
    plan = _plan(config, bits, group_size, embedding_bits, mixed)
    importance = column_importance(src, calibration) if calibration is not None else {}
    shapes = {name: spec.shape for name, spec in model_tensors(config).items()}
    quantization = _quantization_record(plan, shapes, bits, group_size, embedding_bits)
    metadata = _embedded_texts(src)
    metadata["quantization"] = json.dumps(quantization, separators=(",", ":"))
    # source order, so the source files are read front to back
    order = sorted(plan, key=lambda name: (str(checkpoint.entries[name].file), checkpoint.entries[name].start))

    def write_tensor(writer: CompactWriter, name: str, report: ConversionReport) -> None:
        _convert_tensor(writer, checkpoint.entries[name], plan[name], quantization, report, importance.get(name))

    return write_compact(out, metadata, quantization, order, write_tensor, started, show_progress)


def write_compact(out: Path, metadata: dict[str, str], quantization: dict, order: list[str], write_tensor,
                  started: float, show_progress: bool = True) -> ConversionReport:
    """Write the compact file `out` (metadata texts, the `quantization` record's arrays), calling
    `write_tensor(writer, name, report)` for each model tensor in `order`, under a temporary name
    renamed to `out` only when complete (module doc)."""
    names = [a for spec in quantization["tensors"].values() for a in spec["arrays"].values()]
    report = ConversionReport(out)
    with sigterm_raises():
        try:
            fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
        except OSError as exc:
            raise TinyExaoneError(f"{out.parent}: cannot create the output file ({exc.strerror})") from None
        tmp = Path(tmp_name)
        try:
            os.chmod(tmp, 0o644)
            with open(fd, "wb+") as f:
                writer = CompactWriter(f, metadata, names, needed_version(quantization))
                progress = (
                    click.progressbar(order, label="quantizing", file=sys.stderr, show_pos=True,
                                      item_show_func=lambda name: name or "")
                    if show_progress else contextlib.nullcontext(order)
                )
                with progress as tensors:
                    for name in tensors:
                        write_tensor(writer, name, report)
                writer.finish()
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, out)
        except OSError as exc:  # disk full, I/O error: no half-written file, one line
            tmp.unlink(missing_ok=True)
            raise TinyExaoneError(f"{out}: cannot write ({exc.strerror or exc})") from None
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    report.file_bytes = out.stat().st_size
    report.seconds = time.monotonic() - started
    return report


def _convert_tensor(writer: CompactWriter, entry: TensorEntry, scheme: tuple[int, int, bool] | None, quantization: dict,
                    report: ConversionReport, weights: np.ndarray | None = None) -> None:
    spec = quantization["tensors"][entry.name]
    params = math.prod(entry.shape)
    report.total_params += params
    if scheme is None:
        writer.add(spec["arrays"]["weight"], _read_float32(entry, 0, params).reshape(entry.shape))
        return
    parts, relative = _quantize_matrix(entry, *scheme, weights)
    if set(parts) != set(spec["arrays"]):
        raise RuntimeError(f"quantize() returned arrays {sorted(parts)}, expected {sorted(spec['arrays'])}")
    for key, slices in parts.items():
        writer.add_stacked(spec["arrays"][key], slices)
        report.matrix_bytes += sum(s.nbytes for s in slices)
    report.matrix_params += params
    report.relative_errors[entry.name] = relative
