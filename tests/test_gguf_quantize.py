"""`tinyexaone quantize FILE.gguf OUT`: GGUF files into compact files.

Q8_0 / Q4_0 GGUFs become compact files whose every stored array is what loading the GGUF gives
(their codes copied, error 0) and whose logits equal the GGUF's exactly; a BF16 GGUF of the demo
model gives the very file `quantize` makes of the Hugging Face directory; K-quants are requantized
(int8 g32 by default, int4 with `--bits 4`) with the added error reported; the command line
prints what it did and refuses an existing OUT or OUT = SRC.
"""

import numpy as np
import pytest

import tinyexaone
from cli_models import cli
from gguf_models import TYPE, encode, gguf_from_hf, random_blocks, write_gguf
from test_gguf import KQUANT_CONFIG, KQUANT_TYPES
from tinyexaone.compact import open_compact
from tinyexaone.gguf_source import GgufSource
from tinyexaone.quant.convert import array_name, convert
from tinyexaone.quant.gguf_convert import convert_gguf
from tinyexaone.tensors import model_tensors

IDS = [1, 40, 20, 290, 33, 120, 7, 15, 260]


def stored_arrays(path):
    compact = open_compact(path)
    return {name: np.array(compact.array(name)) for name in compact.entries if not name.startswith("__padding__")}


@pytest.mark.parametrize("kind", [TYPE.Q8_0, TYPE.Q4_0], ids=lambda k: k.name)
def test_q8_0_and_q4_0_are_copied_exactly(kind, demo, tmp_path):
    path = gguf_from_hf(demo, tmp_path / "m.gguf", kind)
    report = convert_gguf(path, tmp_path / "m.tx", show_progress=False)
    assert set(report.relative_errors.values()) == {0.0}
    source = GgufSource(path)
    arrays = stored_arrays(tmp_path / "m.tx")
    record = open_compact(tmp_path / "m.tx").quantization["tensors"]
    bits = 8 if kind == TYPE.Q8_0 else 4
    for spec in model_tensors(source.config).values():
        if spec.is_matrix:
            assert (record[spec.name]["scheme"], record[spec.name]["group_size"]) == (f"int{bits}", 32)
            for key, array in source.matrix(spec).arrays.items():
                assert np.array_equal(arrays[array_name(spec.name, key)], array), (spec.name, key)
    direct, compact = tinyexaone.load(path), tinyexaone.load(tmp_path / "m.tx")
    assert np.array_equal(direct.forward(IDS, direct.new_cache(cache_type="f32")),
                          compact.forward(IDS, compact.new_cache(cache_type="f32")))
    assert compact.tokenizer.encode("안녕 hello") == direct.tokenizer.encode("안녕 hello")
    assert compact.tokenizer.chat_template_source == direct.tokenizer.chat_template_source


def test_bf16_gguf_gives_the_file_of_the_hf_directory(demo, tmp_path):
    path = gguf_from_hf(demo, tmp_path / "m.gguf", TYPE.BF16)
    convert_gguf(path, tmp_path / "from-gguf.tx", show_progress=False)
    convert(demo, tmp_path / "from-hf.tx", show_progress=False)
    from_gguf, from_hf = stored_arrays(tmp_path / "from-gguf.tx"), stored_arrays(tmp_path / "from-hf.tx")
    assert from_gguf.keys() == from_hf.keys()
    for name in from_hf:
        assert np.array_equal(from_gguf[name], from_hf[name]), name


@pytest.fixture(scope="module")
def kquant_gguf(tmp_path_factory):
    from reference_models import build_reference_model

    folder = tmp_path_factory.mktemp("kq")
    reference = build_reference_model(folder / "hf", seed=4, **KQUANT_CONFIG)
    rng = np.random.default_rng(1)
    tensors = {}
    for n, (name, param) in enumerate(reference.state_dict().items()):
        value = param.numpy().astype(np.float32)
        kind = KQUANT_TYPES[n % len(KQUANT_TYPES)]
        tensors[name] = encode(value, TYPE.F32) if value.ndim == 1 else (kind, random_blocks(kind, *value.shape, rng))
    return write_gguf(folder / "k.gguf", {**reference.config.to_dict(), "layer_types": KQUANT_CONFIG["layer_types"]},
                      tensors)


def test_k_quants_are_requantized_with_the_error_reported(kquant_gguf, tmp_path):
    report = convert_gguf(kquant_gguf, tmp_path / "k8.tx", show_progress=False)
    assert all(0 < error < 0.01 for error in report.relative_errors.values())  # measured 0.0048 at most
    schemes = {spec["scheme"] for spec in open_compact(tmp_path / "k8.tx").quantization["tensors"].values()}
    assert schemes == {"int8", "float32"}
    report = convert_gguf(kquant_gguf, tmp_path / "k4.tx", bits=4, show_progress=False)
    tensors = open_compact(tmp_path / "k4.tx").quantization["tensors"]
    assert tensors["model.layers.0.mlp.up_proj.weight"]["scheme"] == "int4"
    assert tensors["model.embed_tokens.weight"]["scheme"] == "int8"  # no --embedding-bits: the file's own kept
    assert max(report.relative_errors.values()) > 0.05  # int4 of K-quant values: ~0.09
    direct = tinyexaone.load(kquant_gguf)
    compact = tinyexaone.load(tmp_path / "k8.tx")
    assert np.array_equal(direct.forward(IDS, direct.new_cache(cache_type="f32")),
                          compact.forward(IDS, compact.new_cache(cache_type="f32")))


def test_command_line(demo, tmp_path):
    path = gguf_from_hf(demo, tmp_path / "m.gguf", TYPE.Q4_0)
    done = cli("quantize", path, tmp_path / "m.tx", cwd=tmp_path)
    out = done.stdout.decode()
    assert done.returncode == 0, done.stderr
    assert "29 of 29 matrices copied exactly" in out and "worst relative error 0.0000" in out
    again = cli("quantize", path, tmp_path / "m.tx", cwd=tmp_path)
    assert again.returncode == 2 and b"already exists" in again.stderr
    same = cli("quantize", path, path, "--force", cwd=tmp_path)
    assert same.returncode == 2 and b"is the source GGUF file" in same.stderr
    greedy = ["--prompt", "Hello", "--max-tokens", "4", "--temperature", "0"]
    from_compact = cli("generate", "--model", tmp_path / "m.tx", *greedy, cwd=tmp_path)
    from_gguf = cli("generate", "--model", path, *greedy, cwd=tmp_path)
    assert from_compact.returncode == from_gguf.returncode == 0, from_gguf.stderr
    assert from_compact.stdout == from_gguf.stdout and from_gguf.stdout.strip()  # the same model, greedy
