"""Model weights as the forward pass sees them: the `MatrixWeight` protocol and the weight tables.

A matrix weight W [out, in] is any object with the five members of `MatrixWeight`: `shape`,
`nbytes` (the bytes it keeps, which decode reads once per token), `matmul(x)` (x [T, in]
float32 -> x @ W^T [T, out] float32), `rows(ids)` (W[ids] as float32, the embedding lookup) and
`dequantize()` (all of W as float32). `DenseWeight` is the float32 form; `bf16.Bf16Weight` and
`quantized.QuantizedWeight` are the others, and the tests hold each to the protocol. Norm
weights are plain float32 vectors. `LayerWeights` and `ModelWeights` hold one model's weights;
which file tensor fills which field is said once, in tensors.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class MatrixWeight(Protocol):
    shape: tuple[int, int]  # [out, in]
    nbytes: int

    def matmul(self, x: np.ndarray) -> np.ndarray: ...  # [T, in] -> [T, out]

    def rows(self, ids: np.ndarray) -> np.ndarray: ...  # [len(ids), in]

    def dequantize(self) -> np.ndarray: ...  # [out, in]


class DenseWeight:
    """A float32 matrix [out, in] used as y = x @ W^T."""

    def __init__(self, matrix: np.ndarray):
        self.matrix = matrix  # [out, in] float32
        self.shape = matrix.shape
        self.nbytes = matrix.nbytes

    def matmul(self, x: np.ndarray) -> np.ndarray:
        return x @ self.matrix.T  # [T, out]

    def rows(self, ids: np.ndarray) -> np.ndarray:
        return self.matrix[ids].astype(np.float32, copy=True)  # [T, in]

    def dequantize(self) -> np.ndarray:
        return np.array(self.matrix, dtype=np.float32)  # [out, in], a copy


MATRIX_FIELDS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")  # of LayerWeights


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
    mapped_files: list = field(default_factory=list)  # safetensors_file.MappedFile of memory-mapped weights

    def check_files(self) -> None:
        """Raise if a memory-mapped file shrank since it was loaded (its pages would kill the process)."""
        for mapped in self.mapped_files:
            mapped.check()

    def layer_matrices(self) -> list[MatrixWeight]:
        """Every matrix of every layer (the head and embedding not included)."""
        return [getattr(layer, field) for layer in self.layers for field in MATRIX_FIELDS]

