"""Write a random-weight EXAONE 4 checkpoint of a given shape (default: the real 1.2B) for testing.

    python tools/make_synthetic_checkpoint.py OUT_DIR [--like HF_DIR] [--seed N]

OUT_DIR receives config.json and model.safetensors (bf16, tensor names and shapes exactly as
the Hugging Face checkpoint of EXAONE-4.0-1.2B: tied head, 30 layers, 102,400 x 2048
embedding). With `--like HF_DIR`, config.json and the tokenizer/template/generation files are
copied from that directory instead (its weights are not needed). Tensors are generated and
written one slice at a time, so memory stays small; the 1.2B file is about 2.6 GB, so put it
in an ignored folder such as .cache/ and delete it afterwards. Matrices are N(0, 0.02^2) (the
initializer range of the real config), norm weights 1 + N(0, 0.1^2), rounded to bf16.

`write_synthetic_checkpoint(directory, config, seed)` is importable for tests with tiny shapes.
"""

from __future__ import annotations

import json
import shutil
import struct
import sys
from pathlib import Path

import numpy as np

from tinyexaone.config import parse_config
from tinyexaone.quant.synthetic import EXAONE_4_0_1_2B as SYNTHETIC_1_2B
from tinyexaone.tensors import model_tensors
from tinyexaone.tokenizer import TOKENIZER_FILES
SLICE_ELEMENTS = 1 << 22

# the real EXAONE-4.0-1.2B config.json, as the runtime's synthetic-model writer keeps it
EXAONE_4_0_1_2B = dict(SYNTHETIC_1_2B, initializer_range=0.02, torch_dtype="bfloat16")


def tensor_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    """Names and shapes of an EXAONE 4 checkpoint, in the Hugging Face file's order (the tensor table)."""
    return {name: spec.shape for name, spec in model_tensors(parse_config(config)).items()}


def _to_bf16(x: np.ndarray) -> np.ndarray:
    """float32 -> bf16 bit patterns (uint16), rounding to nearest even."""
    bits = x.astype(np.float32).view(np.uint32)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)


def write_synthetic_checkpoint(directory, config: dict, seed: int = 0) -> Path:
    """Write config.json and a bf16 model.safetensors of random weights into `directory`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    shapes = tensor_shapes(config)
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, shape in shapes.items():
        nbytes = 2 * int(np.prod(shape))
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    rng = np.random.default_rng(seed)
    with open(directory / "model.safetensors", "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        for name, shape in shapes.items():
            size = int(np.prod(shape))
            for first in range(0, size, SLICE_ELEMENTS):
                count = min(SLICE_ELEMENTS, size - first)
                values = rng.standard_normal(count, dtype=np.float32)
                values = 1.0 + 0.1 * values if len(shape) == 1 else 0.02 * values
                f.write(_to_bf16(values).tobytes())
    return directory


def main(argv: list[str]) -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--like", type=Path, help="copy config.json and tokenizer files from this HF directory")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    config = EXAONE_4_0_1_2B
    if args.like is not None:
        config = json.loads((args.like / "config.json").read_text())
    write_synthetic_checkpoint(args.out_dir, config, args.seed)
    if args.like is not None:
        for name in TOKENIZER_FILES:
            if (args.like / name).is_file():
                shutil.copyfile(args.like / name, args.out_dir / name)
    size = (args.out_dir / "model.safetensors").stat().st_size
    print(f"wrote {args.out_dir} ({size / 1e9:.2f} GB)")


if __name__ == "__main__":
    main(sys.argv[1:])
