"""Checkpoint reading and validation: the real 1.2B header, damaged files, and CLI error lines."""

import json
import os
import resource
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import tinyexaone
from reference_models import LAYOUTS, build_reference_model
from tinyexaone.cache import new_kv_cache
from tinyexaone.checkpoint import check_tensors, open_checkpoint
from tinyexaone.config import load_config
from tinyexaone.errors import TinyExaoneError

REAL_DIR = Path(__file__).parent / "fixtures" / "exaone-4.0-1.2b"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny")
    build_reference_model(directory, seed=2, **LAYOUTS["global_tied_llama3"])
    return directory


def copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def rewrite_header(path: Path, edit) -> None:
    """Apply `edit(header_dict)` to a safetensors file's header, keeping the data bytes."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    edit(header)
    new = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(new)) + new + raw[8 + n :])


def test_real_1_2b_header_validates_without_reading_data(tmp_path):
    """A sparse, zero-filled file with the genuine header: all 332 tensors check out, no data read."""
    header = (REAL_DIR / "model.safetensors.header.json").read_bytes()
    data_size = 2_558_782_976
    path = tmp_path / "model.safetensors"
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header)) + header)
        f.truncate(8 + len(header) + data_size)  # sparse: costs no disk
    shutil.copy(REAL_DIR / "config.json", tmp_path / "config.json")
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    config = load_config(tmp_path)
    checkpoint = open_checkpoint(tmp_path)
    check_tensors(config, checkpoint)
    assert len(checkpoint.entries) == 332
    assert all(e.dtype == "BF16" for e in checkpoint.entries.values())
    assert "lm_head.weight" not in checkpoint.entries  # tied head
    assert sum(e.nbytes for e in checkpoint.entries.values()) == data_size
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before < 50_000  # KiB: nothing was read


def test_1_2b_cache_memory():
    """1,000 cached tokens of the 1.2B shape fit in 130 MB; a new cache allocates nothing."""
    config = load_config(REAL_DIR)
    cache = new_kv_cache(config)
    assert cache.nbytes == 0 and cache.max_tokens == 65536
    kv = np.zeros((1, config.num_key_value_heads, config.head_dim), np.float32)
    for layer in cache.layers:
        layer.extend(np.zeros((999,) + kv.shape[1:], np.float32), np.zeros((999,) + kv.shape[1:], np.float32))
        layer.extend(kv, kv)
    assert cache.length == 1000
    assert cache.nbytes <= 130e6
    exact = 1000 * 30 * 2 * 8 * 64 * 4
    assert cache.nbytes < exact * 1.07


def test_missing_tensor_is_named(tiny_dir, tmp_path):
    model = copy_model(tiny_dir, tmp_path / "m")
    rewrite_header(model / "model.safetensors", lambda h: h.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(TinyExaoneError, match=r"missing tensor 'model.layers.1.mlp.up_proj.weight'"):
        tinyexaone.load(model)


def test_unexpected_tensor_is_named(tiny_dir, tmp_path):
    model = copy_model(tiny_dir, tmp_path / "m")

    def add_alias(h):
        h["model.layers.9.mlp.up_proj.weight"] = dict(h["model.norm.weight"])

    rewrite_header(model / "model.safetensors", add_alias)
    with pytest.raises(TinyExaoneError, match=r"unexpected tensor 'model.layers.9.mlp.up_proj.weight'"):
        tinyexaone.load(model)


def test_wrong_shape_is_named(tiny_dir, tmp_path):
    model = copy_model(tiny_dir, tmp_path / "m")

    def reshape(h):
        h["model.layers.0.self_attn.k_proj.weight"]["shape"] = [64, 32]  # same byte count, wrong shape

    rewrite_header(model / "model.safetensors", reshape)
    with pytest.raises(TinyExaoneError, match=r"'model.layers.0.self_attn.k_proj.weight' has shape \[64, 32\]"):
        tinyexaone.load(model)


def test_truncated_file(tiny_dir, tmp_path):
    model = copy_model(tiny_dir, tmp_path / "m")
    path = model / "model.safetensors"
    os.truncate(path, path.stat().st_size - 100)
    with pytest.raises(TinyExaoneError, match="truncated safetensors file"):
        tinyexaone.load(model)
    os.truncate(path, 5)
    with pytest.raises(TinyExaoneError, match="truncated safetensors file"):
        tinyexaone.load(model)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda h: h["model.norm.weight"].update(dtype="I64"), "unsupported dtype 'I64'"),
        (lambda h: h["model.norm.weight"].update(data_offsets=[0, 7]), "do not match its shape"),
        (lambda h: h["model.norm.weight"].update(data_offsets=[10**12, 10**12 + 256]), "truncated"),
        (lambda h: h["model.norm.weight"].update(shape=[-64]), "invalid shape"),
        (lambda h: h.update({"model.norm.weight": "garbage"}), "corrupt header entry"),
    ],
)
def test_corrupt_header_entries(tiny_dir, tmp_path, edit, message):
    model = copy_model(tiny_dir, tmp_path / "m")
    rewrite_header(model / "model.safetensors", edit)
    with pytest.raises(TinyExaoneError, match=message):
        tinyexaone.load(model)


def test_header_that_is_not_json(tiny_dir, tmp_path):
    model = copy_model(tiny_dir, tmp_path / "m")
    path = model / "model.safetensors"
    raw = bytearray(path.read_bytes())
    raw[8:12] = b"\xff\xfe{["
    path.write_bytes(bytes(raw))
    with pytest.raises(TinyExaoneError, match="corrupt safetensors header"):
        tinyexaone.load(model)


def test_missing_shard(tmp_path):
    ref = build_reference_model(tmp_path / "full", seed=4, **LAYOUTS["gqa4_odd_hidden"])
    ref.float().save_pretrained(tmp_path / "sharded", max_shard_size="30KB")
    shards = sorted((tmp_path / "sharded").glob("model-*.safetensors"))
    assert len(shards) > 1
    shards[-1].unlink()
    with pytest.raises(TinyExaoneError, match=f"shard file '{shards[-1].name}' is missing"):
        tinyexaone.load(tmp_path / "sharded")


def run_cli(*args):
    # cwd outside the checkout: the installed package must be imported, not the source folder
    return subprocess.run(
        [sys.executable, "-m", "tinyexaone", *map(str, args)], capture_output=True, text=True, cwd=REAL_DIR.anchor
    )


def test_cli_errors_are_one_line_without_traceback(tiny_dir, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    truncated = copy_model(tiny_dir, tmp_path / "truncated")
    os.truncate(truncated / "model.safetensors", 1000)
    misshaped = copy_model(tiny_dir, tmp_path / "misshaped")
    rewrite_header(
        misshaped / "model.safetensors",
        lambda h: h["model.layers.0.self_attn.k_proj.weight"].update(shape=[64, 32]),
    )
    cases = [
        (empty, "no config.json"),
        (truncated, "truncated safetensors file"),
        (misshaped, "'model.layers.0.self_attn.k_proj.weight' has shape [64, 32]"),
        (tmp_path / "does-not-exist", "no such file or directory"),
    ]
    for path, message in cases:
        result = run_cli("info", path)
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
        assert "Traceback" not in result.stderr


def test_cli_info_on_a_good_model(tiny_dir):
    result = run_cli("info", tiny_dir)
    assert result.returncode == 0, result.stderr
    assert "3 layers" in result.stdout and "tied to the embedding" in result.stdout and "llama3" in result.stdout


def test_deeply_nested_headers_and_index_are_one_error(tiny_dir, tmp_path):
    model = copy_model(tiny_dir, tmp_path / "m")
    path = model / "model.safetensors"
    nested = b"[" * 50000 + b"]" * 50000
    size = path.stat().st_size
    path.write_bytes(struct.pack("<Q", len(nested)) + nested + bytes(max(0, size - 8 - len(nested))))
    with pytest.raises(TinyExaoneError, match="not valid JSON"):
        tinyexaone.load(model)
    path.unlink()
    (model / "model.safetensors.index.json").write_text('{"weight_map": ' + "[" * 100000 + "]" * 100000 + "}")
    with pytest.raises(TinyExaoneError, match="corrupt shard index"):
        tinyexaone.load(model)
