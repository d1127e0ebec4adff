"""llama.cpp's own files: `convert_hf_to_gguf.py` and `llama-quantize` output loaded by tinyexaone.

Runs only where a built llama.cpp checkout is named by the LLAMA_CPP_DIR environment variable
(its convert_hf_to_gguf.py and build/bin/llama-quantize); skipped otherwise. Tiny transformers
models with the real EXAONE 4.0 tokenizer (the converter recognizes its pre-tokenizer only by the
ids it gives) are converted to BF16 and quantized to Q8_0, Q4_0, Q4_K_M, Q5_K_M, Q6_K and IQ4_XS.
Each file's logits are compared with transformers running that file's own weights (dequantized by
gguf-py), the BF16 file's with the original model; the converter's hybrid layout (sliding window
and its layer pattern) with transformers; the converter's tokenizer with the Hugging Face one.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest

import tinyexaone
from conftest import FIXTURE
from reference_models import build_reference_model, reference_logits
from test_gguf_tokenizer import TEXTS
from tinyexaone.gguf_source import GgufSource
from tinyexaone.tensors import model_tensors

LLAMA_CPP = Path(os.environ.get("LLAMA_CPP_DIR", "/nonexistent"))
CONVERTER = LLAMA_CPP / "convert_hf_to_gguf.py"
QUANTIZER = LLAMA_CPP / "build" / "bin" / "llama-quantize"
pytestmark = pytest.mark.skipif(not (CONVERTER.is_file() and QUANTIZER.is_file()),
                                reason="set LLAMA_CPP_DIR to a built llama.cpp checkout")
ROPE = {"rope_type": "llama3", "rope_theta": 1e6, "factor": 16.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192}
SHAPE = dict(vocab_size=102400, hidden_size=256, intermediate_size=512, num_attention_heads=4, num_key_value_heads=2,
             head_dim=64, max_position_embeddings=16384, rope_parameters=ROPE)
GLOBAL = dict(SHAPE, num_hidden_layers=2, tie_word_embeddings=True, sliding_window=None, sliding_window_pattern=None,
              layer_types=["full_attention"] * 2)
HYBRID = dict(SHAPE, num_hidden_layers=4, tie_word_embeddings=False, sliding_window=5, sliding_window_pattern="LLLG",
              layer_types=["sliding_attention"] * 3 + ["full_attention"])
QUANTS = ["Q8_0", "Q4_0", "Q4_K_M", "Q5_K_M", "Q6_K", "IQ4_XS"]
# rel L2 of the logits against transformers on the file's own weights, measured on this random
# model: Q8_0 0.0145 and Q4_0 0.0207 (the codes exact: the int8 activations of the integer kernels,
# and Q4_0's Q6_K embedding requantized), Q4_K_M 0.0253, Q5_K_M 0.0264, Q6_K 0.0259, IQ4_XS 0.0268
# (requantized to int8 g32); a wrong code or scale layout gives about 1
MAX_REL = 0.04


def hf_model(directory: Path, layout: dict):
    model = build_reference_model(directory, seed=2, dtype="bfloat16", **layout)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"):
        shutil.copyfile(FIXTURE / name, directory / name)
    return model


def convert(directory: Path, out: Path, outtype: str) -> Path:
    done = subprocess.run([sys.executable, str(CONVERTER), str(directory), "--outfile", str(out), "--outtype", outtype],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return out


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("llama_cpp")
    reference = hf_model(folder / "hf", GLOBAL)
    made = {"BF16": convert(folder / "hf", folder / "m-BF16.gguf", "bf16")}
    f32 = convert(folder / "hf", folder / "m-F32.gguf", "f32")
    for quant in QUANTS:
        out = folder / f"m-{quant}.gguf"
        done = subprocess.run([str(QUANTIZER), str(f32), str(out), quant], capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        made[quant] = out
    return reference, made


def own_weights_reference(reference, path: Path):
    """The transformers model with every weight replaced by the GGUF's own (dequantized) values."""
    import copy

    import torch

    reference = copy.deepcopy(reference)
    source = GgufSource(path)
    state = {}
    for name, spec in model_tensors(source.config).items():
        tensor = source.tensor(spec)
        values = gguf.quants.dequantize(np.array(tensor.data), tensor.tensor_type).reshape(spec.shape)
        state[name] = torch.from_numpy(values.astype(np.float64))
    reference.load_state_dict(state, strict=False)
    return reference


def test_bf16_file_is_the_hf_model(files):
    reference, made = files
    ids = np.random.default_rng(1).integers(0, 102400, 20)
    got = tinyexaone.load(made["BF16"]).forward(ids, tinyexaone.load(made["BF16"]).new_cache(cache_type="f32"))
    want = reference_logits(reference, ids)
    assert np.linalg.norm(got - want) / np.linalg.norm(want) < 5e-5


@pytest.mark.parametrize("quant", QUANTS)
def test_quantized_files_against_transformers_on_their_own_weights(quant, files):
    reference, made = files
    model = tinyexaone.load(made[quant])
    ids = np.random.default_rng(2).integers(0, 102400, 20)
    want = reference_logits(own_weights_reference(reference, made[quant]), ids)
    got = model.forward(ids, model.new_cache(cache_type="f32"))
    assert np.linalg.norm(got - want) / np.linalg.norm(want) < MAX_REL


def test_converter_tokenizer_gives_the_hf_ids(files, reference):
    _, made = files
    tokenizer = tinyexaone.load(made["Q8_0"]).tokenizer
    for text in TEXTS:
        assert tokenizer.encode(text) == reference.encode(text)
    assert tokenizer.chat_template_source == (FIXTURE / "chat_template.jinja").read_text()


def test_converter_hybrid_layout_against_transformers(tmp_path):
    reference = hf_model(tmp_path / "hf", HYBRID)
    model = tinyexaone.load(convert(tmp_path / "hf", tmp_path / "hybrid.gguf", "f32"))
    assert model.model.config.layer_types == tuple(HYBRID["layer_types"]) and model.model.config.sliding_window == 5
    ids = np.random.default_rng(3).integers(0, 102400, 24)
    want = reference_logits(reference, ids)
    got = model.forward(ids, model.new_cache(cache_type="f32"))
    assert np.linalg.norm(got - want) / np.linalg.norm(want) < 5e-5
