"""Models for the CLI tests: the shipped demo model when it is present, else a tiny random one.

`shipped_model()` is models/exaone4-demo of the checkout when it holds a config.json (None
before it is trained). `build_tiny_chat_model(dir)` writes, without torch, a Hugging Face
directory with seeded random float32 weights (2 layers, hidden 32) and the real EXAONE 4.0
tokenizer files and chat template from tests/fixtures, so the CLI can load and run it in
milliseconds per token; its replies are random text. `cli(*args, cwd, input=None)` runs
`python -m tinyexaone` from outside the checkout, as CI runs the installed package.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "fixtures" / "exaone-4.0-1.2b"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json",
                   "chat_template.jinja")
TINY_SHAPE = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=8, max_position_embeddings=2048)


def shipped_model() -> Path | None:
    path = ROOT / "models" / "exaone4-demo"
    return path if (path / "config.json").is_file() and (path / "tokenizer.json").is_file() else None


def build_tiny_chat_model(directory: Path, seed: int = 0) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = json.loads((FIXTURE / "config.json").read_text())
    config.update(TINY_SHAPE, layer_types=["full_attention"] * TINY_SHAPE["num_hidden_layers"], torch_dtype="float32")
    config["rope_scaling"]["original_max_position_embeddings"] = 256
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    for name in TOKENIZER_FILES:
        shutil.copyfile(FIXTURE / name, directory / name)
    rng = np.random.default_rng(seed)
    h, d, vocab = config["hidden_size"], config["head_dim"], config["vocab_size"]
    q_out, kv_out, mlp = config["num_attention_heads"] * d, config["num_key_value_heads"] * d, config["intermediate_size"]

    def matrix(rows, cols):
        return (0.3 * rng.standard_normal((rows, cols))).astype(np.float32)

    def norm(size):
        return (1.0 + 0.2 * rng.standard_normal(size)).astype(np.float32)

    tensors = {"model.embed_tokens.weight": matrix(vocab, h), "model.norm.weight": norm(h)}
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        tensors.update({
            p + "self_attn.q_proj.weight": matrix(q_out, h), p + "self_attn.k_proj.weight": matrix(kv_out, h),
            p + "self_attn.v_proj.weight": matrix(kv_out, h), p + "self_attn.o_proj.weight": matrix(h, q_out),
            p + "self_attn.q_norm.weight": norm(d), p + "self_attn.k_norm.weight": norm(d),
            p + "post_attention_layernorm.weight": norm(h), p + "post_feedforward_layernorm.weight": norm(h),
            p + "mlp.gate_proj.weight": matrix(mlp, h), p + "mlp.up_proj.weight": matrix(mlp, h),
            p + "mlp.down_proj.weight": matrix(h, mlp),
        })
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    return directory


def cli_env(home: Path) -> dict:
    """The environment for a CLI subprocess: no colours forced, HOME (readline history) in a temp dir."""
    env = dict(os.environ)
    env.pop("NO_COLOR", None)
    env.update(HOME=str(home), XDG_STATE_HOME=str(home / "state"), PYTHONIOENCODING="utf-8", TERM="xterm")
    return env


def cli(*args, cwd: Path, input: bytes | None = None, env: dict | None = None, timeout: float = 120):
    """Run `python -m tinyexaone ARGS` with cwd outside the checkout; returns CompletedProcess (bytes)."""
    return subprocess.run([sys.executable, "-m", "tinyexaone", *map(str, args)], input=input, capture_output=True,
                          cwd=cwd, env=env or cli_env(Path(cwd)), timeout=timeout)
