"""Compact files holding int4k or int6 tensors (format version 3): written, read back, refused when inconsistent.

A synthetic file of a small shape whose input sizes are multiples of 256 (`quant/synthetic.py`
with affine=True: random nibbles, 6-bit codes and float16 d / dmin) is checked for its version,
its per-tensor records and arrays (independently of tinyexaone, from docs/format.md), its
kernels against the dequantized weights, and for one-line errors where an int4k tensor sits in a
version 2 file or its arrays have another shape. The same for a file whose embedding (the tied
head) is int6. Files without int4k or int6 stay version 2 (test_compact_file.py).
"""

import json

import numpy as np
import pytest
from test_compact_file import TINY, assert_one_line_error, rewrite_header, split

import tinyexaone
from tinyexaone.compact import open_compact
from tinyexaone.quant.synthetic import write_synthetic_compact

SHAPE = dict(TINY, hidden_size=256, intermediate_size=512, num_attention_heads=4, num_key_value_heads=2, head_dim=64)


@pytest.fixture(scope="module")
def int4k_file(tmp_path_factory):
    return write_synthetic_compact(tmp_path_factory.mktemp("int4k") / "k.tx", SHAPE, 4, 32, 8, seed=3, affine=True)


@pytest.fixture
def damaged(tmp_path):
    """write(raw) -> path of a file holding `raw`."""
    def write(raw: bytes):
        path = tmp_path / "damaged.tx"
        path.write_bytes(raw)
        return path
    return write


def test_an_int4k_file_is_version_3_with_the_documented_arrays(int4k_file):
    n, header = split(int4k_file.read_bytes())
    meta = header["__metadata__"]
    assert meta["format_version"] == "3"
    tensors = json.loads(meta["quantization"])["tensors"]
    down = tensors["model.layers.1.mlp.down_proj.weight"]
    assert (down["scheme"], down["group_size"], down["shape"]) == ("int4k", 32, [256, 512])
    assert header[down["arrays"]["nibbles"]]["dtype"] == "U8" and header[down["arrays"]["nibbles"]]["shape"] == [32, 16, 128]
    assert header[down["arrays"]["scales"]]["dtype"] == "U8" and header[down["arrays"]["scales"]]["shape"] == [32, 2, 128]
    assert tensors["model.embed_tokens.weight"]["scheme"] == "int8"  # the embedding keeps its own scheme
    assert open_compact(int4k_file).format_version == 3


def assert_kernel_matches_weights(weight, n_tokens: int, seed: int) -> None:
    """The weight's kernel product equals x times its dequantized matrix, up to activation rounding."""
    x = np.random.default_rng(seed).standard_normal((n_tokens, weight.shape[1])).astype(np.float32)
    exact = x @ weight.dequantize().T
    assert np.abs(weight.matmul(x) - exact).max() <= 0.02 * np.abs(exact).max()


def assert_forward_is_finite(model) -> None:
    logits = model.forward(np.arange(1, 9))
    assert logits.shape == (8, SHAPE["vocab_size"]) and np.isfinite(logits).all()


def test_int4k_tensors_load_and_their_kernels_match_their_weights(int4k_file):
    model = tinyexaone.load(int4k_file).model
    for weight in (model.weights.layers[0].q_proj, model.weights.layers[1].down_proj):
        assert weight.scheme == "int4k"
        assert_kernel_matches_weights(weight, 5, seed=0)
    assert_forward_is_finite(model)


def test_int4k_in_a_version_2_file_is_a_clear_error(int4k_file, damaged):
    def downgrade(header):
        header["__metadata__"]["format_version"] = "2"
    assert_one_line_error(damaged(rewrite_header(int4k_file.read_bytes(), downgrade)), "int4k", "format version 2")


def test_int4k_arrays_of_another_shape_are_a_clear_error(int4k_file, damaged):
    def swap(header):  # the scales of a 512-wide matrix under a 256-wide one: sizes consistent, shape wrong
        tensors = json.loads(header["__metadata__"]["quantization"])["tensors"]
        q, down = tensors["model.layers.0.self_attn.q_proj.weight"], tensors["model.layers.0.mlp.down_proj.weight"]
        q["arrays"]["scales"], down["arrays"]["scales"] = down["arrays"]["scales"], q["arrays"]["scales"]
        header["__metadata__"]["quantization"] = json.dumps({"bits": 4, "group_size": 32, "embedding_bits": 8,
                                                             "tensors": tensors}, separators=(",", ":"))
    assert_one_line_error(damaged(rewrite_header(int4k_file.read_bytes(), swap)), "inconsistent quantized arrays",
                          "has shape")


@pytest.fixture(scope="module")
def int6_file(tmp_path_factory):
    return write_synthetic_compact(tmp_path_factory.mktemp("int6") / "e6.tx", SHAPE, 4, 32, 6, seed=4)


def test_an_int6_embedding_is_version_3_with_the_documented_arrays(int6_file):
    n, header = split(int6_file.read_bytes())
    assert header["__metadata__"]["format_version"] == "3"
    tensors = json.loads(header["__metadata__"]["quantization"])["tensors"]
    embedding = tensors["model.embed_tokens.weight"]
    rows = -(-SHAPE["vocab_size"] // 8)
    assert (embedding["scheme"], embedding["group_size"]) == ("int6", 32)
    assert set(embedding["arrays"]) == {"codes", "scales"}
    assert header[embedding["arrays"]["codes"]]["dtype"] == "U8" and header[embedding["arrays"]["codes"]]["shape"] == [rows, 8, 192]
    assert header[embedding["arrays"]["scales"]]["dtype"] == "F16" and header[embedding["arrays"]["scales"]]["shape"] == [rows, 8, 8]
    assert tensors["model.layers.0.mlp.down_proj.weight"]["scheme"] == "int4"


def test_an_int6_head_loads_and_its_kernels_and_lookups_match_its_weights(int6_file):
    model = tinyexaone.load(int6_file).model
    head = model.weights.embed_tokens
    assert head.scheme == "int6"
    dense = head.dequantize()  # [V, hidden]
    ids = np.array([5, 0, SHAPE["vocab_size"] - 1, 5])
    np.testing.assert_array_equal(head.rows(ids), dense[ids])
    assert_kernel_matches_weights(head, 3, seed=1)
    assert_forward_is_finite(model)


def test_int6_in_a_version_2_file_is_a_clear_error(int6_file, damaged):
    def downgrade(header):
        header["__metadata__"]["format_version"] = "2"
    assert_one_line_error(damaged(rewrite_header(int6_file.read_bytes(), downgrade)), "int6", "format version 2")


def test_int6_arrays_of_another_shape_are_a_clear_error(int6_file, damaged):
    def swap(header):  # the embedding's codes renamed as int4 nibbles: one byte count, another shape
        tensors = json.loads(header["__metadata__"]["quantization"])["tensors"]
        tensors["model.embed_tokens.weight"]["scheme"] = "int4"
        header["__metadata__"]["quantization"] = json.dumps({"bits": 4, "group_size": 32, "embedding_bits": 6,
                                                             "tensors": tensors}, separators=(",", ":"))
    assert_one_line_error(damaged(rewrite_header(int6_file.read_bytes(), swap)), "inconsistent quantized arrays",
                          "needs arrays")


def test_an_int6k_head_is_version_3_loads_and_matches_its_weights(tmp_path):
    path = write_synthetic_compact(tmp_path / "e6k.tx", SHAPE, 4, 32, 6, seed=6, affine=True)
    n, header = split(path.read_bytes())
    assert header["__metadata__"]["format_version"] == "3"
    embedding = json.loads(header["__metadata__"]["quantization"])["tensors"]["model.embed_tokens.weight"]
    rows = -(-SHAPE["vocab_size"] // 8)
    assert (embedding["scheme"], embedding["group_size"]) == ("int6k", 32)
    assert header[embedding["arrays"]["codes"]]["shape"] == [rows, 8, 192]
    assert header[embedding["arrays"]["scales"]]["dtype"] == "U8" and header[embedding["arrays"]["scales"]]["shape"] == [rows, 1, 144]
    model = tinyexaone.load(path).model
    head = model.weights.embed_tokens
    assert head.scheme == "int6k"
    dense = head.dequantize()
    np.testing.assert_array_equal(head.rows(np.array([3, 0, 3])), dense[[3, 0, 3]])
    assert_kernel_matches_weights(head, 4, seed=2)
    assert_forward_is_finite(model)
