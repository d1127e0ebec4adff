"""The one table of an EXAONE 4 model's tensors: file name, shape, and the weight field it fills.

`model_tensors(config)` lists every tensor a checkpoint of that config holds, in the order of
the Hugging Face checkpoint (embedding, the layers' tensors, final norm, then an untied head),
each as a `TensorSpec`: its Hugging Face name, shape ([out, in] for matrices), whether it is a
matrix or a norm vector, and the `LayerWeights` / `ModelWeights` field it becomes. Every
source (Hugging Face directory, compact file) and every writer (quantizer, synthetic
generators) takes names and shapes from here, and `build_weights` fills `ModelWeights` from
any source through two callables, so no other module spells a tensor name (a GGUF file's names
are these mapped by gguf-py's own name map, in gguf_source.gguf_names).
`check_tensor_shapes` names the first missing, misshaped or unexpected tensor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from .config import Exaone4Config
from .errors import TinyExaoneError
from .weights import LayerWeights, MatrixWeight, ModelWeights

EMBEDDING = "model.embed_tokens.weight"
FINAL_NORM = "model.norm.weight"
LM_HEAD = "lm_head.weight"


@dataclass(frozen=True)
class TensorSpec:
    name: str  # as in the Hugging Face checkpoint
    shape: tuple[int, ...]
    is_matrix: bool  # a 2-D linear weight; else a 1-D norm weight
    field: str  # the LayerWeights or ModelWeights field it fills
    layer: int | None  # its layer, None for embedding, final norm and head


def _layer_tensors(config: Exaone4Config) -> list[tuple[str, str, tuple[int, ...]]]:
    """(name suffix, LayerWeights field, shape) of one layer, in the checkpoint's (alphabetical) order."""
    h, d, mlp = config.hidden_size, config.head_dim, config.intermediate_size
    q_out, kv_out = config.num_attention_heads * d, config.num_key_value_heads * d
    return [
        ("mlp.down_proj.weight", "down_proj", (h, mlp)),
        ("mlp.gate_proj.weight", "gate_proj", (mlp, h)),
        ("mlp.up_proj.weight", "up_proj", (mlp, h)),
        ("post_attention_layernorm.weight", "post_attention_layernorm", (h,)),
        ("post_feedforward_layernorm.weight", "post_feedforward_layernorm", (h,)),
        ("self_attn.k_norm.weight", "k_norm", (d,)),
        ("self_attn.k_proj.weight", "k_proj", (kv_out, h)),
        ("self_attn.o_proj.weight", "o_proj", (h, q_out)),
        ("self_attn.q_norm.weight", "q_norm", (d,)),
        ("self_attn.q_proj.weight", "q_proj", (q_out, h)),
        ("self_attn.v_proj.weight", "v_proj", (kv_out, h)),
    ]


def model_tensors(config: Exaone4Config) -> dict[str, TensorSpec]:
    """Every tensor of a checkpoint of `config`, by name, in the Hugging Face checkpoint's order."""
    h, vocab = config.hidden_size, config.vocab_size
    specs = [TensorSpec(EMBEDDING, (vocab, h), True, "embed_tokens", None)]
    layer = _layer_tensors(config)
    for i in range(config.num_hidden_layers):
        specs += [TensorSpec(f"model.layers.{i}.{suffix}", shape, len(shape) == 2, field, i)
                  for suffix, field, shape in layer]
    specs.append(TensorSpec(FINAL_NORM, (h,), False, "norm", None))
    if not config.tie_word_embeddings:
        specs.append(TensorSpec(LM_HEAD, (vocab, h), True, "lm_head", None))
    return {spec.name: spec for spec in specs}


def check_tensor_shapes(config: Exaone4Config, present: dict[str, tuple[int, ...]]) -> None:
    """Raise naming the first missing, misshaped or unexpected tensor of `present` (name -> shape).
    A tied checkpoint may still carry a copy of the head; it is simply unused."""
    expected = model_tensors(config)
    for name, spec in expected.items():
        if name not in present:
            raise TinyExaoneError(f"checkpoint is missing tensor '{name}' (expected shape {list(spec.shape)})")
        if tuple(present[name]) != spec.shape:
            raise TinyExaoneError(
                f"tensor '{name}' has shape {list(present[name])}, the config implies {list(spec.shape)}")
    for name in present:
        if name not in expected and not (name == LM_HEAD and config.tie_word_embeddings):
            raise TinyExaoneError(f"checkpoint has unexpected tensor '{name:.80}'")


def build_weights(config: Exaone4Config, matrix: Callable[[TensorSpec], MatrixWeight],
                  norm: Callable[[TensorSpec], np.ndarray]) -> ModelWeights:
    """ModelWeights with each matrix from matrix(spec) and each norm vector from norm(spec)."""
    layers: list[dict] = [{} for _ in range(config.num_hidden_layers)]
    top: dict = {}
    for spec in model_tensors(config).values():
        value = matrix(spec) if spec.is_matrix else norm(spec)
        (top if spec.layer is None else layers[spec.layer])[spec.field] = value
    top.setdefault("lm_head", top["embed_tokens"])  # tied: the head is the embedding itself
    return ModelWeights(layers=[LayerWeights(**fields) for fields in layers], **top)
