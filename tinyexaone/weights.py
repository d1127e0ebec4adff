"""Model weights as the forward pass sees them.

A matrix weight is any object with `shape` ([out, in]), `matmul(x)` (x [T, in] float32 ->
x @ W^T, [T, out] float32) and `rows(ids)` (the rows W[ids] as float32, for embedding lookup).
`DenseWeight` is the float32 form; `bf16.Bf16Weight` and `quantized.QuantizedWeight` provide the
same three members. Norm weights are plain float32 vectors. `LayerWeights` and `ModelWeights`
name every tensor of an EXAONE 4 model; `weights_from_checkpoint` builds them from a validated
Hugging Face checkpoint without copying the big matrices: F32 as zero-copy float32 views, BF16
as `Bf16Weight` over the memory-mapped bits (widened on the fly); only F16 is widened up front.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .bf16 import Bf16Weight
from .checkpoint import Checkpoint
from .config import Exaone4Config


class DenseWeight:
    """A float32 matrix [out, in] used as y = x @ W^T."""

    def __init__(self, matrix: np.ndarray):
        self.matrix = matrix  # [out, in] float32
        self.shape = matrix.shape

    def matmul(self, x: np.ndarray) -> np.ndarray:
        return x @ self.matrix.T  # [T, out]

    def rows(self, ids: np.ndarray) -> np.ndarray:
        return self.matrix[ids].astype(np.float32, copy=True)  # [T, in]


MatrixWeight = Any  # DenseWeight, bf16.Bf16Weight or quantized.QuantizedWeight (duck-typed)


@dataclass
class LayerWeights:
    q_proj: MatrixWeight  # [heads * head_dim, hidden]
    k_proj: MatrixWeight  # [kv_heads * head_dim, hidden]
    v_proj: MatrixWeight  # [kv_heads * head_dim, hidden]
    o_proj: MatrixWeight  # [hidden, heads * head_dim]
    q_norm: np.ndarray  # [head_dim]
    k_norm: np.ndarray  # [head_dim]
    post_attention_layernorm: np.ndarray  # [hidden]
    gate_proj: MatrixWeight  # [intermediate, hidden]
    up_proj: MatrixWeight  # [intermediate, hidden]
    down_proj: MatrixWeight  # [hidden, intermediate]
    post_feedforward_layernorm: np.ndarray  # [hidden]


@dataclass
class ModelWeights:
    embed_tokens: MatrixWeight  # [vocab, hidden]
    layers: list[LayerWeights]
    norm: np.ndarray  # [hidden]
    lm_head: MatrixWeight  # [vocab, hidden]; the embedding itself when tied


def weights_from_checkpoint(config: Exaone4Config, checkpoint: Checkpoint) -> ModelWeights:
    """Weights from a checkpoint already checked by `check_tensors`; matrices stay memory-mapped."""

    def dense(name: str):
        if checkpoint.entries[name].dtype == "BF16":
            return Bf16Weight(checkpoint.raw(name))
        return DenseWeight(checkpoint.float32(name))

    layers = []
    for i in range(config.num_hidden_layers):
        p = f"model.layers.{i}."
        layers.append(LayerWeights(
            q_proj=dense(p + "self_attn.q_proj.weight"),
            k_proj=dense(p + "self_attn.k_proj.weight"),
            v_proj=dense(p + "self_attn.v_proj.weight"),
            o_proj=dense(p + "self_attn.o_proj.weight"),
            q_norm=checkpoint.float32(p + "self_attn.q_norm.weight"),
            k_norm=checkpoint.float32(p + "self_attn.k_norm.weight"),
            post_attention_layernorm=checkpoint.float32(p + "post_attention_layernorm.weight"),
            gate_proj=dense(p + "mlp.gate_proj.weight"),
            up_proj=dense(p + "mlp.up_proj.weight"),
            down_proj=dense(p + "mlp.down_proj.weight"),
            post_feedforward_layernorm=checkpoint.float32(p + "post_feedforward_layernorm.weight"),
        ))
    embed = dense("model.embed_tokens.weight")
    head = embed if config.tie_word_embeddings else dense("lm_head.weight")
    return ModelWeights(embed_tokens=embed, layers=layers, norm=checkpoint.float32("model.norm.weight"), lm_head=head)
