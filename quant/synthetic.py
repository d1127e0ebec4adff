"""Synthetic compact files of any EXAONE 4 shape, written directly (no float checkpoint first).

`write_synthetic_compact(out, config, bits, group_size, embedding_bits, seed, affine)` writes a
valid compact file (same plan, quantization record and writer as `convert.py`; with `affine`
the layer matrices whose input size allows it are int4k, and an int6 head int6k) whose quantized matrices hold random
codes and float16 scales around 0.01 (int4k: `benchmarks.random_affine_scales`), and whose norm weights are
1 + N(0, 0.1^2). It streams row slices, so memory stays near one slice even for the real 1.2B
shape (an 800 MB file), and it writes under a temporary name that is renamed when complete and
synced to disk (so the kernel's writeback of 800 MB of dirty pages does not run during the
benchmark that follows).
Meant for speed measurements (`tinyexaone bench`), not for quality.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np

from tinyexaone.affine_fit import SUPER_BLOCK
from tinyexaone.benchmarks import random_affine_scales
from tinyexaone.compact import CompactWriter, needed_version
from tinyexaone.config import parse_config
from tinyexaone.quantized import expected_arrays
from tinyexaone.tensors import model_tensors

from .convert import HEAD_NAMES, _plan, _quantization_record

SLICE_BYTES = 16 << 20

EXAONE_4_0_1_2B = {
    "architectures": ["Exaone4ForCausalLM"], "model_type": "exaone4",
    "bos_token_id": 1, "eos_token_id": 361, "pad_token_id": 0,
    "head_dim": 64, "hidden_act": "silu", "hidden_size": 2048, "intermediate_size": 4096,
    "layer_types": ["full_attention"] * 30, "max_position_embeddings": 65536,
    "num_attention_heads": 32, "num_hidden_layers": 30, "num_key_value_heads": 8, "rms_norm_eps": 1e-05,
    "rope_scaling": {"factor": 16.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "rope_theta": 1000000.0, "sliding_window": None, "sliding_window_pattern": None,
    "tie_word_embeddings": True, "vocab_size": 102400,
}


def _random_array(rng: np.random.Generator, name: str, dtype: np.dtype, shape: tuple[int, ...], affine: bool):
    """Row slices of one stored array: random codes, or float16 scales in [0.005, 0.015) (int4k's bytes)."""
    row_bytes = max(1, int(np.prod(shape[1:])) * dtype.itemsize)
    rows = max(1, SLICE_BYTES // row_bytes)
    for first in range(0, shape[0], rows):
        slice_shape = (min(rows, shape[0] - first),) + tuple(shape[1:])
        if name == "scales" and affine:
            yield random_affine_scales(rng, slice_shape)
        elif name == "scales":
            yield (0.005 + 0.01 * rng.random(slice_shape, np.float32)).astype(dtype)
        else:
            yield rng.integers(0, 256, slice_shape, np.uint8).view(dtype)


def write_synthetic_compact(out, config: dict, bits: int = 4, group_size: int = 32, embedding_bits: int = 8,
                            seed: int = 0, affine: bool = False) -> Path:
    """Write a random-weight compact file of `config`'s shape to `out`; returns its path."""
    out = Path(out)
    parsed = parse_config(config)
    plan = _plan(parsed, bits, group_size, embedding_bits)
    if affine:
        specs = model_tensors(parsed)
        for name, scheme in plan.items():
            if scheme and name not in HEAD_NAMES and specs[name].shape[1] % SUPER_BLOCK == 0:
                plan[name] = (4, 32, True)
            elif scheme and scheme[0] == 6 and specs[name].shape[1] % SUPER_BLOCK == 0:
                plan[name] = (6, 32, True)  # an int6 head becomes int6k
    shapes = {name: spec.shape for name, spec in model_tensors(parsed).items()}
    quantization = _quantization_record(plan, shapes, bits, group_size, embedding_bits)
    metadata = {"config.json": json.dumps(config, separators=(",", ":")),
                "quantization": json.dumps(quantization, separators=(",", ":"))}
    names = [a for spec in quantization["tensors"].values() for a in spec["arrays"].values()]
    rng = np.random.default_rng(seed)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    tmp = Path(tmp_name)
    try:
        os.chmod(tmp, 0o644)
        with open(fd, "wb+") as f:
            writer = CompactWriter(f, metadata, names, needed_version(quantization))
            for name, scheme in plan.items():
                spec = quantization["tensors"][name]
                if scheme is None:  # a norm weight
                    writer.add(spec["arrays"]["weight"], 1 + 0.1 * rng.standard_normal(shapes[name]).astype(np.float32))
                    continue
                tensor_bits, group, tensor_affine = scheme
                for key, (dtype, shape) in expected_arrays(tensor_bits, group, shapes[name], affine=tensor_affine).items():
                    writer.add_stacked(spec["arrays"][key], list(_random_array(rng, key, dtype, shape, tensor_affine)))
            writer.finish()
            f.flush()
            os.fsync(f.fileno())  # on disk before it is timed: no writeback competes with the benchmark
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out
