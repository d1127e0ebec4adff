"""Bad GGUF files: each is one `TinyExaoneError` line (and exit 2 with one `error:` line from the
command line), never a traceback or a hang: another architecture, truncated files, hostile counts,
unsupported tensor types, missing / misshaped / unexpected tensors, a tokenizer that cannot be
rebuilt; and a fuzz of random byte mutations (reduced count in CI, 500 with `pytest -m slow`)."""

import struct
import time

import gguf
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tinyexaone
from cli_models import cli, shipped_model
from gguf_models import TYPE, gguf_tensors, write_gguf
from tinyexaone.errors import TinyExaoneError


@pytest.fixture(scope="module")
def parts(demo):
    return gguf_tensors(demo, TYPE.Q8_0)


@pytest.fixture(scope="module")
def good(demo, parts, tmp_path_factory):
    config, tensors = parts
    return write_gguf(tmp_path_factory.mktemp("good") / "good.gguf", config, tensors, demo).read_bytes()


def load_error(path, *fragments):
    """The one-line message of loading `path` (weights and tokenizer), checked to name the file and `fragments`."""
    with pytest.raises(TinyExaoneError) as caught:
        model = tinyexaone.load(path)
        model.tokenizer.encode("hi")
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"{path}: "), message
    for fragment in fragments:
        assert fragment in message.removeprefix(f"{path}: "), message
    return message


def test_another_architecture(demo, parts, tmp_path):
    config, tensors = parts
    path = write_gguf(tmp_path / "llama.gguf", config, tensors, demo, arch="llama")
    load_error(path, "architecture 'llama'", "only 'exaone4'")


@pytest.mark.parametrize("fraction", [0.0, 0.00001, 0.001, 0.01, 0.03, 0.2, 0.6, 0.999])
def test_truncated_files(good, tmp_path, fraction):
    path = tmp_path / "cut.gguf"
    path.write_bytes(good[:int(len(good) * fraction)])
    load_error(path, "truncated" if fraction else "not a model")


def header(n_tensors: int, n_keys: int, version: int = 3) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", version, n_tensors, n_keys)


def key(name: str, value_type: int) -> bytes:
    return struct.pack("<Q", len(name)) + name.encode() + struct.pack("<I", value_type)


@pytest.mark.parametrize("raw, fragment", [
    (header(0, 1 << 40), "metadata count"),
    (header(1 << 40, 1), "tensor count"),
    (header(0, 1) + key("a", 9) + struct.pack("<IQ", 0, 1 << 40), "item count"),  # an array of 2^40 uint8
    (header(0, 1) + key("a", 9) + struct.pack("<IQ", 8, 1 << 23), "item count"),  # 8 M strings in a few bytes
    (header(0, 1) + key("a", 8) + struct.pack("<Q", 1 << 62), "length"),
    (header(0, 1) + key("a", 9) + struct.pack("<IQ", 9, 2) + struct.pack("<IQ", 0, 0) * 2, "array of arrays"),
    (header(0, 1) + key("a", 99), "unknown value type"),
    (header(0, 0, version=1), "version 1"),
    (b"GGUF" + struct.pack(">IQQ", 3, 0, 0), "big-endian"),
    (header(1, 0) + struct.pack("<Q", 1) + b"t" + struct.pack("<I", 9), "axes"),
    (header(1, 0) + struct.pack("<Q", 1) + b"t" + struct.pack("<IQQIQ", 2, 33, 2, 8, 0), "not whole blocks"),
    (header(1, 0) + struct.pack("<Q", 1) + b"t" + struct.pack("<IQQIQ", 2, 32, 2, 8, 0), "outside the file"),
    (header(1, 0) + struct.pack("<Q", 1) + b"t" + struct.pack("<IQQIQ", 2, 32, 2, 77, 0), "unknown tensor type"),
])
def test_hostile_headers_fail_fast(raw, fragment, tmp_path):
    path = tmp_path / "hostile.gguf"
    path.write_bytes(raw + bytes(64))
    started = time.monotonic()
    load_error(path, fragment)
    assert time.monotonic() - started < 5


def test_unsupported_tensor_types(demo, parts, tmp_path):
    config, tensors = parts
    matrix = "model.layers.1.mlp.up_proj.weight"
    as_int8 = dict(tensors, **{matrix: (TYPE.I8, np.zeros((576, 192), np.int8))})
    load_error(write_gguf(tmp_path / "i8.gguf", config, as_int8, demo), "type I8", "does not read", "Q4_K")
    norm = "model.layers.0.post_attention_layernorm.weight"
    quantized_norm = dict(tensors, **{norm: (TYPE.Q8_0, gguf.quants.quantize(np.ones(192, np.float32), TYPE.Q8_0))})
    load_error(write_gguf(tmp_path / "qnorm.gguf", config, quantized_norm, demo), "type Q8_0", "supported: F32, F16, BF16")


def test_missing_misshaped_and_unexpected_tensors(demo, parts, tmp_path):
    config, tensors = parts
    missing = {name: value for name, value in tensors.items() if name != "model.layers.2.self_attn.k_proj.weight"}
    load_error(write_gguf(tmp_path / "missing.gguf", config, missing, demo), "no tensor 'blk.2.attn_k.weight'")
    bigger = dict(config, intermediate_size=608)
    load_error(write_gguf(tmp_path / "shape.gguf", bigger, tensors, demo), "has shape", "metadata implies")
    extra = dict(tensors, **{"blk.9.attn_q.weight": (TYPE.F32, np.zeros((4, 4), np.float32))})
    load_error(write_gguf(tmp_path / "extra.gguf", config, extra, demo), "unexpected tensor 'blk.9.attn_q.weight'")


def test_tokenizer_that_cannot_be_rebuilt_names_the_file(demo, parts, tmp_path):
    config, tensors = parts
    path = write_gguf(tmp_path / "qwen.gguf", config, tensors, demo, pre_tokenizer="qwen2")
    load_error(path, "tokenizer in the GGUF metadata cannot be rebuilt", "'qwen2'")


def test_command_line_errors_are_one_line(demo, parts, tmp_path, good):
    config, tensors = parts
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(good[:len(good) // 2])
    llama = write_gguf(tmp_path / "llama.gguf", config, tensors, demo, arch="llama")
    for path in (cut, llama):
        for args in (["generate", "--model", path, "--prompt", "hi"], ["quantize", path, tmp_path / "out.tx"]):
            done = cli(*args, cwd=tmp_path)
            stderr = done.stderr.decode()
            assert done.returncode == 2 and stderr.startswith("error: ") and stderr.count("\n") == 1, stderr
    assert not (tmp_path / "out.tx").exists()


MUTATIONS = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10**6), st.integers(1, 255)),  # mostly inside the header
    st.tuples(st.just("truncate"), st.integers(0, 10**9), st.just(0)),
    st.tuples(st.just("insert"), st.integers(0, 10**6), st.integers(0, 255)),
)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A small valid GGUF: the demo model's shape without its vocabulary."""
    from gguf_models import gguf_from_hf

    return gguf_from_hf(shipped_model(), tmp_path_factory.mktemp("small") / "small.gguf", TYPE.Q4_0,
                        tokenizer=False).read_bytes()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mutation=MUTATIONS)
def test_random_mutations_load_or_fail_in_one_line(demo, small, tmp_path, mutation):
    kind, where, value = mutation
    header_end = min(len(small), 20000)
    if kind == "flip":
        i = where % header_end
        raw = small[:i] + bytes([small[i] ^ value]) + small[i + 1:]
    elif kind == "truncate":
        raw = small[:where % len(small)]
    else:
        i = where % header_end
        raw = small[:i] + bytes([value]) + small[i:]
    path = tmp_path / "mutated.gguf"
    path.write_bytes(raw)
    try:
        model = tinyexaone.load(path)
        model.forward([1, 2, 3], model.new_cache())
    except TinyExaoneError as exc:
        assert "\n" not in str(exc)


@pytest.mark.slow
@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mutation=MUTATIONS)
def test_random_mutations_load_or_fail_in_one_line_slow(demo, small, tmp_path, mutation):
    test_random_mutations_load_or_fail_in_one_line.hypothesis.inner_test(demo, small, tmp_path, mutation)
