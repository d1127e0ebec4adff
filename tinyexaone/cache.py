"""Key/value caches: growable for full-attention layers, a ring buffer for sliding layers.

Each layer cache stores float32 keys and values as [capacity, kv_heads, head_dim] and counts
`length`, the number of tokens seen (the next absolute position). `extend(k_new, v_new)` stores
T new tokens and returns the keys and values the new queries attend over, as contiguous arrays
[S, kv_heads, head_dim] whose first row is absolute position `length_before + T - S`.

- `GrowableCache` (full layers) grows in steps of at least 256 positions (an eighth of the
  capacity once that is larger), never to `max_position_embeddings` up front, and returns views
  of its buffers. `trim(n)` forgets every position from n on.
- `RingCache` (sliding layers) holds only the last `window` positions, so its memory never
  exceeds `window` rows (it grows to that like the growable cache). For a multi-token prefill it returns the held positions followed by all new ones
  (the caller masks by the window), then keeps the newest `window`. `trim(n)` is possible only
  while every position a query at n would see (n - window < j < n) is still held; otherwise it
  raises `TinyExaoneError` and the caller must reset and re-prefill.

`KVCache` bundles one cache per layer, enforces `max_tokens` (the model's
`max_position_embeddings` or a smaller context size), and reports `length` and `nbytes`;
`new_kv_cache(config)` builds the right kind of cache for every layer and allocates nothing.
"""

from __future__ import annotations

import numpy as np

from .config import Exaone4Config
from .errors import ContextOverflowError, TinyExaoneError
from .options import check_option

GROW_STEP = 256


def _grown(buffer: np.ndarray, capacity: int, keep: int) -> np.ndarray:
    """A copy of `buffer` with `capacity` rows, the first `keep` rows preserved."""
    grown = np.empty((capacity,) + buffer.shape[1:], np.float32)
    grown[:keep] = buffer[:keep]
    return grown


def _next_capacity(capacity: int, needed: int, limit: int | None = None) -> int:
    """Grow by at least GROW_STEP (or an eighth of the capacity), in whole steps, at most `limit`."""
    step = max(GROW_STEP, capacity // 8 // GROW_STEP * GROW_STEP)
    grown = max(capacity + step, -(-needed // GROW_STEP) * GROW_STEP)
    return grown if limit is None else min(limit, grown)


class GrowableCache:
    def __init__(self, kv_heads: int, head_dim: int):
        self.length = 0
        self.keys = np.empty((0, kv_heads, head_dim), np.float32)  # [capacity, kv_heads, head_dim]
        self.values = np.empty((0, kv_heads, head_dim), np.float32)  # [capacity, kv_heads, head_dim]

    @property
    def nbytes(self) -> int:
        return self.keys.nbytes + self.values.nbytes

    def extend(self, k_new: np.ndarray, v_new: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Append k_new, v_new [T, kv_heads, head_dim]; return all keys and values [length, ...]."""
        end = self.length + k_new.shape[0]
        if end > self.keys.shape[0]:
            capacity = _next_capacity(self.keys.shape[0], end)
            self.keys = _grown(self.keys, capacity, self.length)
            self.values = _grown(self.values, capacity, self.length)
        self.keys[self.length : end] = k_new
        self.values[self.length : end] = v_new
        self.length = end
        return self.keys[:end], self.values[:end]

    def append_slot(self) -> int:
        """Make room for one more position; return the row it goes in (decode writes it)."""
        if self.length == self.keys.shape[0]:
            capacity = _next_capacity(self.keys.shape[0], self.length + 1)
            self.keys = _grown(self.keys, capacity, self.length)
            self.values = _grown(self.values, capacity, self.length)
        self.length += 1
        return self.length - 1

    def visible(self) -> tuple[int, int, int]:
        """(first position, count, row modulo) of the keys the newest position attends to."""
        return 0, self.length, self.keys.shape[0]

    def can_trim(self, n: int) -> bool:
        return 0 <= n <= self.length

    def trim(self, n: int) -> None:
        if not self.can_trim(n):
            raise TinyExaoneError(f"cannot trim a cache of {self.length} tokens to {n}")
        self.length = n


class RingCache:
    """Position p lives in slot p % window; the buffers grow like GrowableCache up to `window` rows."""

    def __init__(self, kv_heads: int, head_dim: int, window: int):
        self.window = window
        self.length = 0
        self.keys = np.empty((0, kv_heads, head_dim), np.float32)  # [capacity <= window, kv_heads, head_dim]
        self.values = np.empty((0, kv_heads, head_dim), np.float32)

    @property
    def nbytes(self) -> int:
        return self.keys.nbytes + self.values.nbytes

    @property
    def first_held(self) -> int:
        """Absolute position of the oldest token still held."""
        return max(0, self.length - self.window)

    def _held_in_order(self, buffer: np.ndarray) -> np.ndarray:
        slots = np.arange(self.first_held, self.length) % self.window
        return buffer[slots]  # [held, kv_heads, head_dim]

    def extend(self, k_new: np.ndarray, v_new: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Store k_new, v_new [T, ...]; return held + new keys/values in temporal order."""
        t = k_new.shape[0]
        keys = np.concatenate([self._held_in_order(self.keys), k_new])  # [held + T, kv_heads, head_dim]
        values = np.concatenate([self._held_in_order(self.values), v_new])
        needed = min(self.length + t, self.window)
        if needed > self.keys.shape[0]:  # no slot has wrapped yet, so rows [0, length) are positions
            capacity = _next_capacity(self.keys.shape[0], needed, limit=self.window)
            self.keys = _grown(self.keys, capacity, self.length)
            self.values = _grown(self.values, capacity, self.length)
        keep = min(t, self.window)
        slots = np.arange(self.length + t - keep, self.length + t) % self.window
        self.keys[slots] = k_new[t - keep :]
        self.values[slots] = v_new[t - keep :]
        self.length += t
        return keys, values

    def append_slot(self) -> int:
        """Make room for one more position; return the row it goes in (decode writes it)."""
        needed = min(self.length + 1, self.window)
        if needed > self.keys.shape[0]:
            capacity = _next_capacity(self.keys.shape[0], needed, limit=self.window)
            self.keys = _grown(self.keys, capacity, self.length)
            self.values = _grown(self.values, capacity, self.length)
        self.length += 1
        return (self.length - 1) % self.window

    def visible(self) -> tuple[int, int, int]:
        """(first position, count, row modulo) of the keys the newest position attends to: the
        window i - W < j <= i is exactly what the ring holds."""
        return self.first_held, self.length - self.first_held, self.window

    def can_trim(self, n: int) -> bool:
        return 0 <= n <= self.length and max(0, n - (self.window - 1)) >= self.first_held

    def trim(self, n: int) -> None:
        if not self.can_trim(n):
            raise TinyExaoneError(
                f"sliding-window cache holds positions {self.first_held}..{self.length - 1} and cannot roll back "
                f"to {n}: reset the cache and prefill again"
            )
        self.length = n


class KVCache:
    """One cache per layer, for one sequence; not shared between threads."""

    def __init__(self, layers: list, max_tokens: int, layout: tuple):
        self.layers = layers
        self.max_tokens = max_tokens
        self.layout = layout  # cache_layout() of the config it was made for
        self._scratch: dict[str, np.ndarray] = {}

    @property
    def length(self) -> int:
        return self.layers[0].length if self.layers else 0

    @property
    def nbytes(self) -> int:
        return sum(layer.nbytes for layer in self.layers)

    def check_room(self, new_tokens: int) -> None:
        if self.length + new_tokens > self.max_tokens:
            raise ContextOverflowError(
                f"context is full: {self.length} cached + {new_tokens} new tokens exceed the limit of "
                f"{self.max_tokens} tokens", self.length + new_tokens, self.max_tokens)

    def can_trim(self, n: int) -> bool:
        return all(layer.can_trim(n) for layer in self.layers)

    def trim(self, n: int) -> None:
        """Roll back to the first n tokens (raises if a sliding layer no longer holds them)."""
        for layer in self.layers:
            if not layer.can_trim(n):
                layer.trim(n)  # raises with the reason
        for layer in self.layers:
            layer.trim(n)

    def reset(self) -> None:
        for layer in self.layers:
            layer.length = 0

    def scratch(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """A float32 work buffer of at least `shape`, kept with this sequence so that decoding
        allocates nothing per token (and sequences on other threads never share one)."""
        buffer = self._scratch.get(name)
        if buffer is None or any(have < need for have, need in zip(buffer.shape, shape)):
            buffer = self._scratch[name] = np.empty(
                tuple(max(need, 2 * have) for have, need in zip(buffer.shape, shape)) if buffer is not None else shape,
                np.float32)
        return buffer


def cache_layout(config: Exaone4Config) -> tuple:
    """What a cache's buffers depend on: per layer (window or None, kv_heads, head_dim)."""
    return tuple((config.sliding_window if config.layer_is_sliding(i) else None, config.num_key_value_heads,
                  config.head_dim) for i in range(config.num_hidden_layers))


def new_kv_cache(config: Exaone4Config, max_tokens: int | None = None) -> KVCache:
    """An empty cache for one sequence: a ring per sliding layer, a growable cache per full layer."""
    if max_tokens is not None:
        check_option("context_size", max_tokens, label="the cache size")
    limit = config.max_position_embeddings if max_tokens is None else min(max_tokens, config.max_position_embeddings)
    layers = [
        RingCache(config.num_key_value_heads, config.head_dim, config.sliding_window)
        if config.layer_is_sliding(i)
        else GrowableCache(config.num_key_value_heads, config.head_dim)
        for i in range(config.num_hidden_layers)
    ]
    return KVCache(layers, limit, cache_layout(config))
