"""GGUF files for the tests, written with gguf-py's `GGUFWriter` as llama.cpp's converter writes them.

`write_gguf(out, config, tensors, tokenizer_dir=None)` writes a GGUF of architecture `exaone4`
from a Hugging Face config.json dict and `tensors` (Hugging Face name -> (GGML type, data)):
the metadata keys of `convert_hf_to_gguf.py`'s `TextModel` / `Exaone4Model` (sizes, RMS epsilon,
RoPE base, head size, vocabulary size, sliding window and per-layer pattern, the `rope_freqs`
tensor of llama3 RoPE computed by the converter's own formula), tensor names from gguf-py's
name map, and, from `tokenizer_dir`, the tokenizer as the converter stores it: the token list and
types of its `get_vocab_base` (transformers' AutoTokenizer; added tokens as their text, CONTROL
when special, USER_DEFINED otherwise) and gguf-py's `SpecialVocab` (merges, special ids, chat
template). `gguf_from_hf(hf_dir, out, kind)` converts a saved Hugging Face model, its matrices
encoded by `gguf.quants.quantize` (BF16, F16, F32, Q8_0, Q4_0; norms stay F32, as the converter
keeps 1-D tensors; `gguf_tensors` gives what it writes, for tests to alter). `random_blocks(kind, rows, cols, rng)` makes valid random K-quant data
(random bytes with sane float16 block scales) for types gguf-py can only dequantize.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import gguf
import numpy as np

TYPE = gguf.GGMLQuantizationType
# byte offsets of the float16 super-block scales (d, dmin) inside one block of each K-quant type
SCALE_OFFSETS = {TYPE.Q2_K: (80, 82), TYPE.Q3_K: (108,), TYPE.Q4_K: (0, 2), TYPE.Q5_K: (0, 2), TYPE.Q6_K: (208,),
                 TYPE.IQ4_XS: (0,)}


def rope_factors(config: dict) -> list[float] | None:
    """The converter's `generate_extra_tensors` for llama3 RoPE (Exaone4Model), in float32 as it runs."""
    params = config.get("rope_parameters") or config.get("rope_scaling") or {}
    if str(params.get("rope_type", "")).lower() != "llama3":
        return None
    base = params.get("rope_theta", 10_000.0)
    dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    freqs = 1.0 / (base ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
    factor = params.get("factor", 16.0)
    low, high = params.get("low_freq_factor", 1.0), params.get("high_freq_factor", 4.0)
    old_context = params.get("original_max_position_embeddings", 8192)
    low_wavelen, high_wavelen = old_context / low, old_context / high
    factors = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < high_wavelen:
            factors.append(1)
        elif wavelen > low_wavelen:
            factors.append(factor)
        else:
            smooth = (old_context / wavelen - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return factors


def llama_vocab(tokenizer_dir: Path, vocab_size: int) -> tuple[list[str], list[int]]:
    """Tokens and token types as the converter's `get_vocab_base` makes them."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    reverse = {i: token for token, i in tokenizer.vocab.items()}
    added = tokenizer.get_added_vocab()
    decoder = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in reverse:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
            continue
        token = reverse[i]
        if token in added:
            if not decoder[i].normalized:
                token = tokenizer.decode(tokenizer.encode(token, add_special_tokens=False))
            looks_special = token.startswith("<|") and token.endswith("|>")
            types.append(gguf.TokenType.CONTROL if decoder[i].special or looks_special else gguf.TokenType.USER_DEFINED)
        else:
            types.append(gguf.TokenType.NORMAL)
        tokens.append(token)
    return tokens, types


def write_gguf(out: Path, config: dict, tensors: dict, tokenizer_dir: Path | None = None,
               pre_tokenizer: str = "exaone4", arch: str = "exaone4") -> Path:
    """Write the GGUF file `out` (module doc); `tensors` maps Hugging Face names to (GGML type, data),
    or GGUF names (used as they are) to such pairs."""
    n_layers = config["num_hidden_layers"]
    writer = gguf.GGUFWriter(str(out), arch)
    writer.add_block_count(n_layers)
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(config["num_attention_heads"])
    writer.add_head_count_kv(config["num_key_value_heads"])
    params = config.get("rope_parameters") or {}
    writer.add_rope_freq_base(params.get("rope_theta", config.get("rope_theta", 10000.0)))
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    if config.get("head_dim") is not None:
        writer.add_key_length(config["head_dim"])
        writer.add_value_length(config["head_dim"])
    writer.add_vocab_size(config["vocab_size"])
    if config.get("sliding_window") is not None:
        writer.add_sliding_window(config["sliding_window"])
        writer.add_sliding_window_pattern([kind == "sliding_attention" for kind in config["layer_types"]])
    if tokenizer_dir is not None:
        tokens, types = llama_vocab(tokenizer_dir, config["vocab_size"])
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(pre_tokenizer)
        writer.add_token_list(tokens)
        writer.add_token_types(types)
        gguf.SpecialVocab(tokenizer_dir, load_merges=True).add_to_gguf(writer, quiet=True)
    factors = rope_factors(config)
    if factors is not None:
        writer.add_tensor(gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight", np.array(factors, np.float32))
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.EXAONE4, n_layers)
    for name, (kind, data) in tensors.items():
        gguf_name = name_map.get_name(name, try_suffixes=(".weight",)) or name
        raw_dtype = None if kind in (TYPE.F32, TYPE.F16) else kind
        writer.add_tensor(gguf_name, data, raw_dtype=raw_dtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def encode(matrix: np.ndarray, kind) -> tuple:
    """(kind, data) of a float32 matrix in a GGML type gguf-py can encode."""
    matrix = np.ascontiguousarray(matrix, dtype=np.float32)
    if kind == TYPE.F32:
        return kind, matrix
    if kind == TYPE.F16:
        return kind, matrix.astype(np.float16)
    return kind, gguf.quants.quantize(matrix, kind)


def hf_tensors(hf_dir: Path) -> dict[str, np.ndarray]:
    """A saved Hugging Face model's tensors as float32 (torch reads the BF16 ones)."""
    from safetensors.torch import load_file

    return {name: t.float().numpy() for name, t in load_file(str(Path(hf_dir) / "model.safetensors")).items()}


def gguf_tensors(hf_dir: Path, kind) -> tuple[dict, dict]:
    """(config.json dict, tensors for `write_gguf`) of the Hugging Face model in `hf_dir`, its
    matrices encoded as `kind`, the norms F32; a tied head is left out, as the converter does."""
    config = json.loads((Path(hf_dir) / "config.json").read_text())
    tensors = {}
    for name, value in hf_tensors(hf_dir).items():
        if name == "lm_head.weight" and config.get("tie_word_embeddings"):
            continue
        tensors[name] = encode(value, kind if value.ndim == 2 else TYPE.F32)
    return config, tensors


def gguf_from_hf(hf_dir: Path, out: Path, kind, tokenizer: bool = True, **options) -> Path:
    """The GGUF of the Hugging Face model in `hf_dir` (`gguf_tensors`); `options` go to `write_gguf`."""
    config, tensors = gguf_tensors(hf_dir, kind)
    return write_gguf(out, config, tensors, hf_dir if tokenizer else None, **options)


def random_blocks(kind, rows: int, cols: int, rng, scale: float = 0.004) -> np.ndarray:
    """Random valid `kind` data for a [rows, cols] matrix: random bytes, float16 scales set to ~`scale`."""
    block, block_bytes = gguf.GGML_QUANT_SIZES[kind]
    data = rng.integers(0, 256, (rows, cols // block, block_bytes), dtype=np.uint8)
    for offset in SCALE_OFFSETS[kind]:
        scales = (scale * rng.uniform(0.5, 1.5, (rows, cols // block))).astype(np.float16)
        data[:, :, offset:offset + 2] = scales.view(np.uint8).reshape(rows, cols // block, 2)
    return data.reshape(rows, -1)
