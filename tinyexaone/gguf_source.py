"""A GGUF file of an EXAONE 4 model (architecture `exaone4`) as a source of the one loader.

`GgufSource(path)` gives what loading.py asks of every source: `config`, `matrix(spec)`,
`norm(spec)`, `mapped_files()`, `tokenizer_loader()`, and `files` (config.json and the
tokenizer files as texts, which a compact file embeds). The file is read by gguf_file.py.

Config: `config_from_metadata` writes the config.json that llama.cpp's converter read, from the
`exaone4.*` keys: sizes, RMS epsilon and RoPE base (float32 in the file, given back at their
shortest decimal), the head tying (no `output.weight`), the sliding window and its layer
pattern (`attention.sliding_window_pattern`: one bool per layer, or an integer n; without the
window key a 64-layer file is the 32B with llama.cpp's defaults, window 4096 and pattern 4) and
llama3 RoPE, which the file holds only as the `rope_freqs` tensor of per-frequency divisors:
`llama3_from_factors` recovers factor, low/high frequency factors and original context from it
and is accepted only if `rope.inverse_frequencies` of the result gives the file's frequencies.

Tensors: names come from gguf's own map (`gguf.get_tensor_name_map`, what the converter used)
applied to the tensor table (tensors.py), so no name is spelled here; shapes are the table's
([out, in], GGUF lists ne0 = in first). How each tensor type becomes a weight:
- F32 stays a zero-copy view, F16 is widened, BF16 stays memory-mapped (`Bf16Weight`);
- Q8_0 and Q4_0 are our int8 and int4 g32 bit for bit: the same 32-element blocks of codes with
  one float16 scale, Q4_0 with the same split-half nibble order and +8 offset, so `exact_arrays`
  only moves bytes into the row-interleaved layout of quantized.py (never requantizes);
- every other type gguf-py can dequantize (`REQUANTIZED`: the K-quants, IQ4_XS, ...) is
  dequantized with `gguf.quants` and requantized to int8 g32 (`REQUANTIZE_BITS`); the relative
  error that adds (0.5% for Q4_K measured, docs/gguf.md) is logged on the `tinyexaone` logger.
Anything else, a missing, misshaped or unexpected tensor, or a file of another architecture is
one `TinyExaoneError` line.
"""

from __future__ import annotations

import json
import logging
import math
from functools import cached_property
from pathlib import Path

import gguf
import numpy as np

from .bf16 import Bf16Weight
from .config import Exaone4Config, RopeConfig, parse_config
from .errors import TinyExaoneError
from .gguf_file import GgufFile, open_gguf
from .gguf_tokenizer import tokenizer_files
from .quantized import ROWS, QuantizedWeight, quantize
from .rope import inverse_frequencies
from .safetensors_file import fail
from .tensors import EMBEDDING, LM_HEAD, TensorSpec, model_tensors
from .tokenizer import tokenizer_from_files
from .weights import DenseWeight, MatrixWeight

ARCH = gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.EXAONE4]  # "exaone4"
LLM, ATTENTION, ROPE = gguf.Keys.LLM, gguf.Keys.Attention, gguf.Keys.Rope
TYPE = gguf.GGMLQuantizationType
ROPE_FREQS = gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight"
DENSE = (TYPE.F32, TYPE.F16, TYPE.BF16)
EXACT = {TYPE.Q8_0: 8, TYPE.Q4_0: 4}  # stored exactly as our int8 / int4, group 32
REQUANTIZED = (TYPE.Q4_1, TYPE.Q5_0, TYPE.Q5_1, TYPE.Q2_K, TYPE.Q3_K, TYPE.Q4_K, TYPE.Q5_K, TYPE.Q6_K, TYPE.IQ4_NL,
               TYPE.IQ4_XS)
REQUANTIZE_BITS = 8  # Q4_K into int4 g32 would add 8.8% error, into int8 g32 0.55% (docs/gguf.md)
GROUP = 32  # ggml's block of Q8_0 / Q4_0, and our group for what comes from a GGUF
SLICE_ELEMENTS = 1 << 22  # weights dequantized at a time
SWA_32B = (64, 4096, 4)  # llama.cpp's EXAONE 4 defaults: 64 layers -> window 4096, every 4th layer full
DEFAULT_ORIGINAL_CONTEXT = 8192
logger = logging.getLogger("tinyexaone")


def is_gguf(path) -> bool:
    """Whether `path` is a regular file that starts with the GGUF magic."""
    try:
        if not Path(path).is_file():  # never opened otherwise: a FIFO would block
            return False
        with open(path, "rb") as f:
            return f.read(4) == b"GGUF"
    except OSError:
        return False


def gguf_name(name: str, n_layers: int) -> str:
    """The GGUF name of the Hugging Face tensor `name` (gguf-py's map, as llama.cpp's converter uses it)."""
    return gguf.get_tensor_name_map(gguf.MODEL_ARCH.EXAONE4, n_layers).get_name(name, try_suffixes=(".weight",))


def gguf_names(config: Exaone4Config) -> dict[str, str]:
    """Hugging Face tensor name -> GGUF tensor name, for every tensor of the table (and the head)."""
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.EXAONE4, config.num_hidden_layers)
    names = [*model_tensors(config), LM_HEAD]
    return {name: name_map.get_name(name, try_suffixes=(".weight",)) for name in names}


def _short_float(value: float) -> float:
    """A float32 read from the file at its shortest decimal (1e-05, not 9.999999747378752e-06)."""
    return float(str(np.float32(value)))


def _rounded(value: float) -> float:
    return float(f"{value:.6g}")


def llama3_from_factors(factors: np.ndarray, theta: float, head_dim: int, original_context: int | None) -> dict | None:
    """llama3 `rope_parameters` whose rescaling divides each frequency by `factors` [head_dim/2],
    or None when no llama3 scaling does.

    transformers divides frequency f by 1 / ((1 - s) / factor + s), s = clip((f / 2pi - 1/L) /
    (1/H - 1/L), 0, 1), with L, H = original context / low, high frequency factor: so the
    divisors fix `factor` (the largest) and the line s(f), which is fitted through the blended
    frequencies (or placed between the neighbours of at most one)."""
    freqs = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)  # [head_dim/2], descending
    factor = float(factors.max())
    if factor <= 1.0 or np.any(factors < 1.0 - 1e-6) or np.any(np.diff(factors) < -1e-6 * factor):
        return None
    kept = np.abs(factors - 1.0) <= 1e-6
    divided = np.abs(factors - factor) <= 1e-6 * factor
    blended = ~kept & ~divided
    s = (1.0 / factors - 1.0 / factor) / (1.0 - 1.0 / factor)  # the blend of each frequency
    if blended.sum() >= 2:
        slope, intercept = np.polyfit(freqs[blended], s[blended], 1)
    else:  # the line is free within the bounds the neighbours set: s <= 0 below, s >= 1 above
        f_low = freqs[divided].max() if divided.any() else None
        f_high = freqs[kept].min() if kept.any() else None
        if blended.any():
            f_mid, s_mid = float(freqs[blended][0]), float(s[blended][0])
            slopes = [s_mid / (f_mid - f_low)] if f_low is not None else []
            slopes += [(1 - s_mid) / (f_high - f_mid)] if f_high is not None else []
            slope = max(slopes)
            intercept = s_mid - slope * f_mid
        elif f_low is not None and f_high is not None:
            slope = 1.0 / (f_high - f_low)
            intercept = -slope * f_low
        else:  # every frequency divided
            slope, intercept = 1.0 / f_low, -1.0
    if slope <= 0 or intercept >= 0:
        return None
    spread = 1.0 / (2 * math.pi * slope)  # 1/H - 1/L
    inv_low = -intercept * spread  # 1/L
    inv_high = spread + inv_low  # 1/H
    context = original_context or max(1, round(1.0 / inv_low))
    params = {"rope_type": "llama3", "rope_theta": theta, "factor": _rounded(factor),
              "low_freq_factor": _rounded(context * inv_low), "high_freq_factor": _rounded(context * inv_high),
              "original_max_position_embeddings": context}
    rope = RopeConfig(theta=theta, rope_type="llama3", factor=params["factor"],
                      low_freq_factor=params["low_freq_factor"], high_freq_factor=params["high_freq_factor"],
                      original_max_position_embeddings=context)
    ours = inverse_frequencies(rope, head_dim).astype(np.float64)
    stored = inverse_frequencies(RopeConfig(theta=theta), head_dim).astype(np.float64) / factors
    return params if np.allclose(ours, stored, rtol=2e-5, atol=0) else None


def _rope_parameters(source: GgufFile, theta: float, head_dim: int) -> dict:
    scaling = source.string(ROPE.SCALING_TYPE.format(arch=ARCH), "none")
    if scaling != "none":
        fail(source.path, f"RoPE scaling '{scaling}' is not supported (EXAONE 4 uses llama3, stored as rope_freqs)")
    tensor = source.tensors.get(ROPE_FREQS)
    if tensor is None:
        return {"rope_type": "default", "rope_theta": theta}
    if tensor.tensor_type != TYPE.F32 or list(tensor.shape) != [head_dim // 2]:
        fail(source.path, f"tensor '{ROPE_FREQS}' must be F32 of shape [{head_dim // 2}], the file holds "
                          f"{tensor.tensor_type.name} {list(tensor.shape)}")
    factors = np.array(tensor.data, dtype=np.float64)  # [head_dim/2] divisors of the frequencies
    if not np.isfinite(factors).all() or (factors <= 0).any():
        fail(source.path, f"tensor '{ROPE_FREQS}' holds non-positive or non-finite values")
    if np.all(factors == 1.0):
        return {"rope_type": "default", "rope_theta": theta}
    context_key = ROPE.SCALING_ORIG_CTX_LEN.format(arch=ARCH)
    original = source.integer(context_key) if source.has(context_key) else None
    params = llama3_from_factors(factors, theta, head_dim, original)
    if params is None:
        fail(source.path, f"tensor '{ROPE_FREQS}' does not follow llama3 RoPE scaling, the only kind EXAONE 4 uses")
    return params


def _layer_types(source: GgufFile, n_layers: int) -> tuple[int | None, list[str]]:
    window_key = ATTENTION.SLIDING_WINDOW.format(arch=ARCH)
    pattern_key = ATTENTION.SLIDING_WINDOW_PATTERN.format(arch=ARCH)
    if source.has(window_key):
        window = source.integer(window_key)
    elif n_layers == SWA_32B[0]:
        window = SWA_32B[1]
    else:
        return None, ["full_attention"] * n_layers
    if source.is_array(pattern_key):
        sliding = source.flags(pattern_key)
        if len(sliding) != n_layers:
            fail(source.path, f"'{pattern_key}' lists {len(sliding)} layers, the model has {n_layers}")
    else:
        n = source.integer(pattern_key) if source.has(pattern_key) else SWA_32B[2]
        sliding = [n == 0 or i % n < n - 1 for i in range(n_layers)]  # llama.cpp's set_swa_pattern
    return window, ["sliding_attention" if s else "full_attention" for s in sliding]


def config_from_metadata(source: GgufFile) -> dict:
    """The config.json (a dict) of the model in `source` (module doc)."""
    def key(name: str) -> str:
        return name.format(arch=ARCH)

    architecture = source.string(gguf.Keys.General.ARCHITECTURE)
    if architecture != ARCH:
        fail(source.path, f"a GGUF of architecture '{architecture[:40]}'; tinyexaone runs only '{ARCH}' (EXAONE 4)")
    if source.integer(key(LLM.NEXTN_PREDICT_LAYERS), 0):
        fail(source.path, "multi-token-prediction layers (nextn_predict_layers) are not supported")
    hidden = source.integer(key(LLM.EMBEDDING_LENGTH))
    heads = source.integer(key(ATTENTION.HEAD_COUNT))
    head_dim = source.integer(key(ATTENTION.KEY_LENGTH), hidden // max(heads, 1))
    if source.integer(key(ATTENTION.VALUE_LENGTH), head_dim) != head_dim:
        fail(source.path, "key and value heads of different sizes are not supported")
    if source.integer(key(ROPE.DIMENSION_COUNT), head_dim) != head_dim:
        fail(source.path, "partial rotary embeddings (rope.dimension_count < head size) are not supported")
    theta = _short_float(source.number(key(ROPE.FREQ_BASE), 10000.0))
    if _short_float(source.number(key(ROPE.FREQ_BASE_SWA), theta)) != theta:
        fail(source.path, "a separate RoPE base for sliding-window layers is not supported")
    n_layers = source.integer(key(LLM.BLOCK_COUNT))
    window, layer_types = _layer_types(source, n_layers)
    embedding = source.tensors.get(gguf_name(EMBEDDING, n_layers))
    vocab = source.integer(key(LLM.VOCAB_SIZE), int(embedding.shape[-1]) if embedding is not None else 0)
    config = {
        "architectures": ["Exaone4ForCausalLM"], "model_type": "exaone4", "vocab_size": vocab,
        "hidden_size": hidden, "intermediate_size": source.integer(key(LLM.FEED_FORWARD_LENGTH)),
        "num_hidden_layers": n_layers, "num_attention_heads": heads,
        "num_key_value_heads": source.integer(key(ATTENTION.HEAD_COUNT_KV), heads), "head_dim": head_dim,
        "hidden_act": "silu", "rms_norm_eps": _short_float(source.number(key(ATTENTION.LAYERNORM_RMS_EPS))),
        "max_position_embeddings": source.integer(key(LLM.CONTEXT_LENGTH)),
        "tie_word_embeddings": gguf_name(LM_HEAD, n_layers) not in source.tensors,
        "rope_parameters": _rope_parameters(source, theta, head_dim),
        "sliding_window": window, "sliding_window_pattern": None, "layer_types": layer_types,
    }
    for name, gguf_key in (("bos_token_id", gguf.Keys.Tokenizer.BOS_ID), ("eos_token_id", gguf.Keys.Tokenizer.EOS_ID),
                           ("pad_token_id", gguf.Keys.Tokenizer.PAD_ID)):
        if source.has(gguf_key):
            config[name] = source.integer(gguf_key)
    return config



def exact_arrays(tensor: gguf.ReaderTensor) -> tuple[int, dict[str, np.ndarray]]:
    """(bits, stored arrays) of a Q8_0 or Q4_0 tensor as our int8 / int4 g32: its bytes moved into
    quantized.py's layout, row groups of 8 interleaved, rows past the end padded (code 0, scale 0).

    A Q8_0 block is a float16 scale and 32 int8 codes; a Q4_0 block a float16 scale and 16 bytes,
    byte j holding code j + 8 in its low and code j + 24 in its high nibble: the byte our int4
    layout stores for those two elements, so neither the codes nor the scales change."""
    bits = EXACT[tensor.tensor_type]
    data = tensor.data  # [N, row bytes] uint8, memory-mapped
    n_rows, n_blocks = data.shape[0], int(tensor.shape[0]) // GROUP
    code_bytes = GROUP if bits == 8 else GROUP // 2
    row_groups = -(-n_rows // ROWS)
    codes = np.empty((row_groups, n_blocks, ROWS * code_bytes), np.uint8)  # [G8, B, 8 * 32 | 8 * 16]
    scales = np.empty((row_groups, n_blocks, ROWS), np.float16)  # [G8, B, 8]
    pad_code = 0 if bits == 8 else 0x88  # code 0 (int4 codes are stored + 8)
    step = max(1, SLICE_ELEMENTS // max(1, n_blocks * GROUP) // ROWS)  # row groups at a time
    for first in range(0, row_groups, step):
        last = min(first + step, row_groups)
        rows = data[first * ROWS:last * ROWS].reshape(-1, n_blocks, 2 + code_bytes)  # [R, B, block]
        block = np.full(((last - first) * ROWS, n_blocks, 2 + code_bytes), pad_code, np.uint8)
        block[:, :, :2] = 0
        block[:len(rows)] = rows
        grouped = block.reshape(last - first, ROWS, n_blocks, 2 + code_bytes)  # [g, r, B, block]
        chunked = grouped[..., 2:].reshape(last - first, ROWS, n_blocks, -1, 4)  # [g, r, B, c, i]
        codes[first:last] = chunked.transpose(0, 2, 3, 1, 4).reshape(last - first, n_blocks, -1)
        scales[first:last] = np.ascontiguousarray(grouped[..., :2]).view(np.float16)[..., 0].transpose(0, 2, 1)
    name = "quants" if bits == 8 else "nibbles"
    return bits, {name: codes.view(np.int8) if bits == 8 else codes, "scales": scales}


def dequantized_rows(tensor: gguf.ReaderTensor, first: int, count: int) -> np.ndarray:
    """Rows [first, first + count) of a matrix tensor as float32 [count, in] (gguf-py's dequantizer)."""
    rows = tensor.data[first:first + count]
    return np.asarray(gguf.quants.dequantize(rows, tensor.tensor_type), dtype=np.float32).reshape(count, -1)


def requantized_parts(tensor: gguf.ReaderTensor, bits: int, group_size: int) -> tuple[dict[str, list], float]:
    """The matrix requantized from its dequantized values, slice by slice of whole row groups: the
    stored arrays as slices to stack, and the relative error that adds, ||W - Q(W)|| / ||W|| over
    the GGUF's own values W."""
    n_rows, n_cols = int(tensor.shape[1]), int(tensor.shape[0])
    rows_per_slice = max(1, SLICE_ELEMENTS // n_cols // ROWS) * ROWS
    parts: dict[str, list[np.ndarray]] = {}
    error_sq = weight_sq = 0.0
    for first in range(0, n_rows, rows_per_slice):
        count = min(rows_per_slice, n_rows - first)
        w = dequantized_rows(tensor, first, count)  # [count, in]
        if not np.isfinite(w).all():
            raise TinyExaoneError(f"tensor '{tensor.name}' holds NaN or infinite values")
        quantized = quantize(w, bits, group_size)
        diff = quantized.dequantize() - w
        error_sq += float(np.einsum("ij,ij->", diff, diff, dtype=np.float64))
        weight_sq += float(np.einsum("ij,ij->", w, w, dtype=np.float64))
        for key, array in quantized.arrays.items():
            parts.setdefault(key, []).append(array)
    return parts, math.sqrt(error_sq / weight_sq) if weight_sq > 0 else 0.0


def requantize(tensor: gguf.ReaderTensor, bits: int, group_size: int) -> tuple[QuantizedWeight, float]:
    """`requantized_parts` as one weight, and its added relative error."""
    parts, relative = requantized_parts(tensor, bits, group_size)
    arrays = {key: np.concatenate(slices) for key, slices in parts.items()}
    return QuantizedWeight.from_arrays(bits, group_size, (int(tensor.shape[1]), int(tensor.shape[0])), arrays), relative


class GgufSource:
    """An EXAONE 4 GGUF file: its config, weights and tokenizer, for the loader (module doc)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.gguf: GgufFile = open_gguf(self.path)
        self.config_json = config_from_metadata(self.gguf)
        try:
            self.config: Exaone4Config = parse_config(self.config_json)
        except TinyExaoneError as exc:
            fail(self.path, f"the GGUF metadata describes an invalid model ({exc})")
        self.names = gguf_names(self.config)
        self._check_tensors()
        self.requantized: dict[str, float] = {}  # tensor -> relative error its requantization added

    def _check_tensors(self) -> None:
        expected = model_tensors(self.config)
        for name, spec in expected.items():
            tensor = self.gguf.tensors.get(self.names[name])
            if tensor is None:
                fail(self.path, f"the GGUF has no tensor '{self.names[name]}' ({name}, shape {list(spec.shape)})")
            shape = tuple(int(d) for d in reversed(tensor.shape))
            if shape != spec.shape:
                fail(self.path, f"tensor '{tensor.name}' has shape {list(shape)}, the metadata implies {list(spec.shape)}")
            kind = tensor.tensor_type
            if kind not in (DENSE + tuple(EXACT) + REQUANTIZED if spec.is_matrix else DENSE):
                supported = DENSE + (tuple(EXACT) + REQUANTIZED if spec.is_matrix else ())
                fail(self.path, f"tensor '{tensor.name}' has type {kind.name}, which tinyexaone does not read "
                                f"(supported: {', '.join(t.name for t in supported)})")
        known = {self.names[name] for name in expected} | {ROPE_FREQS}
        for name in self.gguf.tensors:
            if name not in known:
                fail(self.path, f"the GGUF has an unexpected tensor '{name:.80}'")

    def tensor(self, spec: TensorSpec) -> gguf.ReaderTensor:
        return self.gguf.tensors[self.names[spec.name]]

    def matrix(self, spec: TensorSpec) -> MatrixWeight:
        tensor = self.tensor(spec)
        kind = tensor.tensor_type
        if kind == TYPE.F32:
            return DenseWeight(tensor.data)
        if kind == TYPE.F16:
            return DenseWeight(tensor.data.astype(np.float32))
        if kind == TYPE.BF16:
            return Bf16Weight(tensor.data.view(np.uint16))
        if kind in EXACT:
            bits, arrays = exact_arrays(tensor)
            return QuantizedWeight.from_arrays(bits, GROUP, spec.shape, arrays)
        try:
            weight, error = requantize(tensor, REQUANTIZE_BITS, GROUP)
        except TinyExaoneError as exc:
            fail(self.path, str(exc))
        self.requantized[tensor.name] = error
        return weight

    def norm(self, spec: TensorSpec) -> np.ndarray:
        tensor = self.tensor(spec)  # F32 (a view), F16 or BF16 (widened)
        return np.asarray(gguf.quants.dequantize(tensor.data, tensor.tensor_type), np.float32).reshape(spec.shape)

    def report_requantized(self) -> None:
        """Log, once the weights are built, which tensors were requantized and the error it added."""
        if not self.requantized:
            return
        kinds = sorted({self.gguf.tensors[name].tensor_type.name for name in self.requantized})
        worst = max(self.requantized, key=self.requantized.get)
        logger.warning(f"{self.path.name}: {len(self.requantized)} {'/'.join(kinds)} tensors requantized to "
                       f"int{REQUANTIZE_BITS} g{GROUP}, adding relative error up to {self.requantized[worst]:.4f} "
                       f"({worst}); `tinyexaone quantize` converts the file once")

    def mapped_files(self) -> list:
        return [self.gguf.mapped_file]

    @property
    def has_tokenizer(self) -> bool:
        return self.gguf.has(gguf.Keys.Tokenizer.MODEL)

    @cached_property
    def files(self) -> dict[str, str]:
        """config.json and the tokenizer files, as texts (what a compact file of this model embeds)."""
        texts = {"config.json": json.dumps(self.config_json, separators=(",", ":"))}
        return {**texts, **tokenizer_files(self.gguf)} if self.has_tokenizer else texts

    def tokenizer_loader(self):
        if not self.has_tokenizer:
            return None
        return lambda: tokenizer_from_files(self.files, f"{self.path} (GGUF metadata)")
