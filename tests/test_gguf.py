"""GGUF files as models: written from the demo model and from transformers models with gguf-py's
GGUFWriter (tests/gguf_models.py, as llama.cpp's converter writes them) and loaded by tinyexaone.

- BF16, F32, Q8_0 and Q4_0 GGUFs of the demo model give the Hugging Face demo model's logits within
  that format's error; BF16 stays memory-mapped.
- Q8_0 and Q4_0 are our int8 and int4 g32 of the very same codes: every stored array equals what
  `quantized._pack` makes of the codes and scales gguf-py's block layout holds, the dequantized
  matrices equal gguf-py's dequantizer's bit for bit, and the whole model's logits equal those of a
  model built from those arrays exactly.
- Config from the metadata against transformers: llama3 RoPE recovered from `rope_freqs`, default
  RoPE, the sliding window with its per-layer pattern (NoPE on global layers) and an untied head.
- K-quants (random valid blocks: the demo model's widths are not multiples of 256) requantized
  to int8 g32, against transformers running the dequantized weights, and the added error logged.
"""

import logging

import gguf
import numpy as np
import pytest

import tinyexaone
from gguf_models import TYPE, encode, gguf_from_hf, hf_tensors, random_blocks, write_gguf
from reference_models import LAYOUTS, build_reference_model, reference_logits
from tinyexaone.bf16 import Bf16Weight
from tinyexaone.gguf_source import GgufSource, llama3_from_factors
from tinyexaone.model import Model
from tinyexaone.quantized import QuantizedWeight, _pack
from tinyexaone.tensors import build_weights

TEXT = "Hello there, how are you today? 안녕하세요, 반갑습니다. ¿Qué tal? print(x + 1) 🙂"
# bounds on the logits against the Hugging Face demo model (float32 cache). Measured with this
# test's text: BF16/F32 rel L2 0 (the same bits), Q8_0 0.021 (cosine 0.9998), Q4_0 0.26
# (cosine 0.970); our own int8 / int4 files of the demo model are of the same order.
BOUNDS = {TYPE.BF16: (1e-6, 1 - 1e-9), TYPE.F32: (1e-6, 1 - 1e-9), TYPE.Q8_0: (0.05, 0.999), TYPE.Q4_0: (0.4, 0.95)}


def cosine(a, b):
    a, b = a.astype(np.float64), b.astype(np.float64)  # float32 sums round identical arrays below 1
    return float((a * b).sum() / np.linalg.norm(a) / np.linalg.norm(b))


def logits(model, ids):
    return model.forward(ids, model.new_cache(cache_type="f32"))


@pytest.fixture(scope="module")
def demo_reference(demo):
    model = tinyexaone.load(demo)
    ids = model.tokenizer.encode(TEXT)
    return ids, logits(model, ids)


@pytest.fixture(scope="module")
def demo_gguf(demo, tmp_path_factory):
    folder = tmp_path_factory.mktemp("gguf")
    return {kind: gguf_from_hf(demo, folder / f"demo-{kind.name}.gguf", kind) for kind in BOUNDS}


@pytest.mark.parametrize("kind", list(BOUNDS), ids=lambda k: k.name)
def test_demo_gguf_gives_the_hf_models_logits_within_its_format(kind, demo_gguf, demo_reference):
    ids, want = demo_reference
    model = tinyexaone.load(demo_gguf[kind])
    assert model.tokenizer.encode(TEXT) == ids
    got = logits(model, ids)
    rel_bound, cos_bound = BOUNDS[kind]
    rel = np.linalg.norm(got - want) / np.linalg.norm(want)
    assert rel <= rel_bound and cosine(got, want) >= cos_bound, (rel, cosine(got, want))


def source_specs(source):
    from tinyexaone.tensors import model_tensors

    return list(model_tensors(source.config).values())


def test_bf16_stays_memory_mapped(demo_gguf):
    source = GgufSource(demo_gguf[TYPE.BF16])
    for spec in source_specs(source):
        if spec.is_matrix:
            weight = source.matrix(spec)
            assert isinstance(weight, Bf16Weight) and np.shares_memory(weight.bits, source.gguf.reader.data)


def codes_and_scales(tensor):
    """(codes int16 [N, K], scales float16 [N, K / 32]) read from a Q8_0 / Q4_0 tensor by ggml's block layout."""
    rows = tensor.data.shape[0]
    block_bytes = gguf.GGML_QUANT_SIZES[tensor.tensor_type][1]
    blocks = np.array(tensor.data).reshape(rows, -1, block_bytes)  # [N, B, block]
    scales = blocks[:, :, :2].copy().view(np.float16)[..., 0]  # [N, B]
    if tensor.tensor_type == TYPE.Q8_0:
        codes = blocks[:, :, 2:].view(np.int8).astype(np.int16)  # [N, B, 32]
    else:
        packed = blocks[:, :, 2:]  # [N, B, 16]: element j low nibble, j + 16 high, both + 8
        codes = np.concatenate([packed & 15, packed >> 4], axis=2).astype(np.int16) - 8
    return codes.reshape(rows, -1), scales


@pytest.mark.parametrize("kind", [TYPE.Q8_0, TYPE.Q4_0], ids=lambda k: k.name)
def test_q8_0_and_q4_0_are_our_int8_and_int4_of_the_same_codes(kind, demo_gguf, demo_reference):
    source = GgufSource(demo_gguf[kind])
    bits = 8 if kind == TYPE.Q8_0 else 4
    ours = {}
    for spec in source_specs(source):
        if not spec.is_matrix:
            continue
        tensor = source.tensor(spec)
        weight = source.matrix(spec)
        codes, scales = codes_and_scales(tensor)
        same_codes = QuantizedWeight(bits, 32, spec.shape, _pack(codes, bits, scales))
        assert isinstance(weight, QuantizedWeight) and (weight.bits, weight.group_size) == (bits, 32)
        for name, array in same_codes.arrays.items():
            assert np.array_equal(weight.arrays[name].view(np.uint8), array.view(np.uint8)), (spec.name, name)
        expected = gguf.quants.dequantize(np.array(tensor.data), kind).reshape(spec.shape)
        assert np.array_equal(weight.dequantize(), expected), spec.name  # llama.cpp's own dequantizer
        ours[spec.name] = same_codes
    assert source.requantized == {}
    model = Model(source.config, build_weights(source.config, lambda s: ours[s.name], source.norm))
    ids = demo_reference[0]
    assert np.array_equal(logits(tinyexaone.load(demo_gguf[kind]), ids), logits(model, ids))


@pytest.mark.parametrize("layout", ["global_tied_llama3", "hybrid_lllg_untied", "gqa4_odd_hidden"])
def test_config_from_metadata_against_transformers(layout, tmp_path):
    """llama3 RoPE from rope_freqs (all three bands), the sliding window and its layer pattern with
    NoPE on global layers and an untied head, default RoPE: the F32 GGUF runs as transformers."""
    overrides = dict(LAYOUTS[layout])
    overrides.pop("drop_layer_types", None)
    reference = build_reference_model(tmp_path / "hf", seed=3, **overrides)
    path = gguf_from_hf(tmp_path / "hf", tmp_path / "model.gguf", TYPE.F32, tokenizer=False)
    model = tinyexaone.load(path).model
    hf_config = reference.config
    assert model.config.layer_types == tuple(hf_config.layer_types)
    assert model.config.sliding_window == overrides["sliding_window"]
    assert model.config.tie_word_embeddings == overrides["tie_word_embeddings"]
    ids = np.random.default_rng(5).integers(0, overrides["vocab_size"], 30)
    want = reference_logits(reference, ids)
    got = logits(model, ids)
    assert np.linalg.norm(got - want) / np.linalg.norm(want) < 5e-5


def test_llama3_parameters_are_recovered_from_the_factors():
    from gguf_models import rope_factors

    for theta, head_dim, context, low, high, factor in [(1e6, 64, 8192, 1.0, 4.0, 16.0), (1e4, 32, 2048, 1.0, 4.0, 16.0),
                                                        (5e5, 128, 8192, 1.0, 4.0, 8.0), (1e4, 16, 64, 1.0, 4.0, 8.0),
                                                        (1e4, 16, 64, 2.0, 3.0, 4.0)]:
        config = {"head_dim": head_dim, "rope_parameters": {
            "rope_type": "llama3", "rope_theta": theta, "factor": factor, "low_freq_factor": low,
            "high_freq_factor": high, "original_max_position_embeddings": context}}
        factors = np.array(rope_factors(config), np.float32).astype(np.float64)
        params = llama3_from_factors(factors, theta, head_dim, None)
        assert params is not None and params["factor"] == factor
        if low == 1.0:  # the original context is fixed by the factors only up to a scale: L = context / low
            assert (params["low_freq_factor"], params["high_freq_factor"]) == (low, high)
            assert params["original_max_position_embeddings"] == context
    flat = np.ones(32)
    flat[5:] = 3.0
    flat[10] = 0.5  # not monotone, below one: no llama3 rescaling gives it
    assert llama3_from_factors(flat, 1e4, 64, None) is None


KQUANT_CONFIG = dict(vocab_size=300, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, head_dim=64, tie_word_embeddings=False,
                     sliding_window=None, sliding_window_pattern=None, layer_types=["full_attention"] * 2,
                     max_position_embeddings=512,
                     rope_parameters={"rope_type": "llama3", "rope_theta": 1e6, "factor": 16.0, "low_freq_factor": 1.0,
                                      "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})
KQUANT_TYPES = [TYPE.Q4_K, TYPE.Q5_K, TYPE.Q6_K, TYPE.IQ4_XS, TYPE.Q2_K, TYPE.Q3_K]


def test_k_quants_are_requantized_to_int8_against_transformers(tmp_path, caplog):
    """Every matrix random valid K-quant data (a different type each): transformers runs the
    gguf-py dequantized weights, tinyexaone their int8 g32 requantization."""
    import torch

    reference = build_reference_model(tmp_path / "hf", seed=4, **KQUANT_CONFIG)
    config = reference.config.to_dict()
    rng = np.random.default_rng(0)
    tensors, state = {}, {}
    for n, (name, value) in enumerate(hf_tensors(tmp_path / "hf").items()):
        if value.ndim == 1:
            tensors[name] = encode(value, TYPE.F32)
            continue
        kind = KQUANT_TYPES[n % len(KQUANT_TYPES)]
        data = random_blocks(kind, *value.shape, rng, scale=0.02 if "embed" in name or "lm_head" in name else 0.004)
        tensors[name] = (kind, data)
        state[name] = torch.from_numpy(gguf.quants.dequantize(data, kind).reshape(value.shape).astype(np.float64))
    reference.load_state_dict(state, strict=False)
    path = write_gguf(tmp_path / "k.gguf", {**config, "layer_types": KQUANT_CONFIG["layer_types"]}, tensors)
    with caplog.at_level(logging.WARNING, logger="tinyexaone"):
        model = tinyexaone.load(path).model
    assert "requantized to int8 g32, adding relative error up to 0.00" in caplog.text
    for weight in model.weights.layer_matrices():
        assert isinstance(weight, QuantizedWeight) and (weight.bits, weight.group_size) == (8, 32)
    ids = rng.integers(0, KQUANT_CONFIG["vocab_size"], 24)
    want = reference_logits(reference, ids)
    got = logits(model, ids)
    rel = np.linalg.norm(got - want) / np.linalg.norm(want)
    assert rel < 0.01 and cosine(got, want) > 0.9999, rel  # measured: rel L2 0.0012, cosine 0.999999
