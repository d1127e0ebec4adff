"""Rotary position embeddings as transformers computes them for EXAONE 4.

`inverse_frequencies(rope, head_dim)` gives the [head_dim/2] inverse frequencies, including the
static llama3 rescaling (high frequencies kept, low ones divided by `factor`, a smooth blend in
between). `cos_sin(inv_freq, positions)` gives the [T, head_dim] cos and sin tables: the angles
are the float32 product position * inv_freq, as in transformers, and each half of the head uses
the same 32 angles. `apply_rope(x, cos, sin)` rotates [T, heads, head_dim] in the split-half
("rotate_half", NeoX) convention: dimension j pairs with j + head_dim/2.
"""

from __future__ import annotations

import math

import numpy as np

from .config import RopeConfig


def inverse_frequencies(rope: RopeConfig, head_dim: int) -> np.ndarray:
    """[head_dim/2] float32 inverse frequencies, llama3-rescaled when configured."""
    exponents = np.arange(0, head_dim, 2, dtype=np.float32) / np.float32(head_dim)
    inv_freq = (np.float32(1.0) / (np.float32(rope.theta) ** exponents)).astype(np.float32)
    if rope.rope_type != "llama3":
        return inv_freq
    factor = np.float32(rope.factor)
    low, high = np.float32(rope.low_freq_factor), np.float32(rope.high_freq_factor)
    old_context = np.float32(rope.original_max_position_embeddings)
    low_freq_wavelen = old_context / low
    high_freq_wavelen = old_context / high
    wavelen = np.float32(2 * math.pi) / inv_freq
    scaled = np.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq).astype(np.float32)
    smooth = (old_context / wavelen - low) / (high - low)
    smoothed = (np.float32(1.0) - smooth) * scaled / factor + smooth * scaled
    is_medium = ~(wavelen < high_freq_wavelen) & ~(wavelen > low_freq_wavelen)
    return np.where(is_medium, smoothed, scaled).astype(np.float32)


def cos_sin(inv_freq: np.ndarray, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin tables, each [T, head_dim] float32, for absolute `positions` [T]."""
    angles = positions.astype(np.float32)[:, None] * inv_freq[None, :]  # [T, head_dim/2]
    angles = np.concatenate([angles, angles], axis=1)  # [T, head_dim]
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


def apply_rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """Rotate x [T, heads, head_dim] by the tables [T, head_dim]; returns a new array."""
    half = x.shape[-1] // 2
    rotated = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)  # rotate_half(x)
    return x * cos[:, None, :] + rotated * sin[:, None, :]
