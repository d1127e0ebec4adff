"""Conversion of an EXAONE 4 GGUF file into one compact file: `tinyexaone quantize FILE.gguf OUT`.

`convert_gguf(src, out, bits=, group_size=, embedding_bits=, force=)` opens SRC as the loader
does (gguf_source.py: config, tokenizer and every tensor checked) and plans each matrix:
- a quantized GGUF tensor keeps its own precision unless the flag for its part was given
  (`bits`/`group_size` for the layers, `embedding_bits` for the embedding and lm_head): Q8_0
  becomes int8 g32 and Q4_0 int4 g32 with their codes and scales unchanged (exact), every other
  quantized type int8 g32 requantized from its values;
- an F32/F16/BF16 tensor, or any tensor whose part was given a flag, follows convert.py's rule
  with the flags (defaults int4 g32 layers, int8 g128 embedding); such a tensor is stored exactly
  when it is Q8_0 planned int8 g32 or Q4_0 planned int4 g32, and is requantized otherwise.
Norms stay float32. The file embeds config.json and the tokenizer files rebuilt from the metadata.
The report's relative errors are what the conversion adds to the GGUF's own weights (0 for the
exact tensors); writing (temporary file, rename, clean-up on errors and signals) is convert.py's.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np

from tinyexaone.compact import CompactWriter
from tinyexaone.errors import TinyExaoneError
from tinyexaone.gguf_source import EXACT, GROUP, REQUANTIZE_BITS, TYPE, GgufSource, exact_arrays, is_gguf, \
    requantized_parts
from tinyexaone.tensors import model_tensors

from .convert import HEAD_NAMES, ConversionReport, _plan, _quantization_record, write_compact

DENSE_TYPES = (TYPE.F32, TYPE.F16, TYPE.BF16)


def _check_paths(src: Path, out: Path, force: bool) -> None:
    if not src.exists():
        raise TinyExaoneError(f"{src}: no such file or directory")
    if not is_gguf(src):
        raise TinyExaoneError(f"{src}: not a GGUF file")
    if out.is_dir():
        raise TinyExaoneError(f"{out}: is a directory (OUT must be a file path)")
    if out.exists() and not force:
        raise TinyExaoneError(f"{out}: already exists (use --force to overwrite it)")
    if out.exists() and out.samefile(src):
        raise TinyExaoneError(f"{out}: is the source GGUF file (or a link to it); choose another OUT")
    if not out.parent.is_dir():
        raise TinyExaoneError(f"{out.parent}: no such directory for OUT")


def gguf_plan(source: GgufSource, bits: int | None, group_size: int | None,
              embedding_bits: int | None) -> dict[str, tuple[int, int, bool] | None]:
    """Model tensor -> (bits, group size, affine), None for the float32 norms (module doc)."""
    rule = _plan(source.config, bits or 4, group_size or GROUP, embedding_bits or 8)
    plan = {}
    for name, scheme in rule.items():
        kind = source.tensor(model_tensors(source.config)[name]).tensor_type
        flagged = embedding_bits is not None if name in HEAD_NAMES else bits is not None or group_size is not None
        if scheme is None or flagged or kind in DENSE_TYPES:
            plan[name] = scheme
        else:
            plan[name] = (EXACT.get(kind, REQUANTIZE_BITS), GROUP, False)
    return plan


def convert_gguf(src, out, *, bits: int | None = None, group_size: int | None = None,
                 embedding_bits: int | None = None, force: bool = False, show_progress: bool = True) -> ConversionReport:
    """Convert the GGUF file `src` into the compact file `out`; see the module docstring."""
    started = time.monotonic()
    src, out = Path(src), Path(out)
    if bits not in (None, 4, 8) or embedding_bits not in (None, 4, 8) or group_size not in (None, 32, 64, 128):
        raise TinyExaoneError(f"unsupported scheme: bits {bits}, embedding bits {embedding_bits}, group size {group_size}")
    _check_paths(src, out, force)
    source = GgufSource(src)
    specs = model_tensors(source.config)
    plan = gguf_plan(source, bits, group_size, embedding_bits)
    layer_scheme = next(scheme for name, scheme in plan.items() if scheme and name not in HEAD_NAMES)
    head_scheme = next(scheme for name, scheme in plan.items() if name in HEAD_NAMES)
    quantization = _quantization_record(plan, {name: spec.shape for name, spec in specs.items()}, layer_scheme[0],
                                        layer_scheme[1], head_scheme[0])
    metadata = dict(source.files)
    metadata["quantization"] = json.dumps(quantization, separators=(",", ":"))
    order = sorted(plan, key=lambda name: source.tensor(specs[name]).data_offset)  # the file front to back

    def write_tensor(writer: CompactWriter, name: str, report: ConversionReport) -> None:
        spec, scheme = specs[name], plan[name]
        tensor = source.tensor(spec)
        stored = quantization["tensors"][name]["arrays"]
        report.total_params += math.prod(spec.shape)
        if scheme is None:
            writer.add(stored["weight"], source.norm(spec))
            return
        if EXACT.get(tensor.tensor_type) == scheme[0] and scheme[1] == GROUP:
            parts, relative = {key: [array] for key, array in exact_arrays(tensor)[1].items()}, 0.0
        else:
            try:
                parts, relative = requantized_parts(tensor, *scheme[:2])
            except TinyExaoneError as exc:
                raise TinyExaoneError(f"{src}: {exc}") from None
        for key, slices in parts.items():
            writer.add_stacked(stored[key], slices)
            report.matrix_bytes += sum(int(np.asarray(s).nbytes) for s in slices)
        report.matrix_params += math.prod(spec.shape)
        report.relative_errors[name] = relative

    return write_compact(out, metadata, quantization, order, write_tensor, started, show_progress)
