"""Key/value caches: growable for full-attention layers, a ring buffer for sliding layers.

Each layer cache stores keys and values as `Rows` of its cache type and counts `length`, the
number of tokens seen (the next absolute position). The types (`CODE_DTYPES`): "f16", the
default, float16 kept as its uint16 bits; "f32", float32; "q8", int8 codes with one float32
scale per row (per token and KV head, one head_dim vector: scale = max|x| / 127, code =
rint(x * 127 / max|x|), see `kernels.quantize_rows_numpy`), laid out as the attention kernels
read them (`Rows`: keys key-transposed, values head-major), in place, in every type.
`extend(k_new, v_new)` stores T new float32 tokens [T, kv_heads, head_dim] and returns the keys
and values the new queries attend over, as `Rows` with contiguous buffers, and the absolute
position of their index 0 (the new tokens already in the cache's type, so prefill sees what
decoding will).

- `GrowableCache` (full layers) grows in steps of at least 256 positions (an eighth of the
  capacity once that is larger), never to `max_position_embeddings` up front, and returns views
  of its buffers. `trim(n)` forgets every position from n on.
- `RingCache` (sliding layers) holds only the last `window` positions, so its memory never
  exceeds `window` rows (it grows to that like the growable cache). For a multi-token prefill
  it returns the held positions followed by all new ones (the caller masks by the window), then
  keeps the newest `window`. `trim(n)` is possible only while every position a query at n would
  see (n - window < j < n) is still held; otherwise it raises `TinyExaoneError` and the caller
  must reset and re-prefill.

`KVCache` bundles one cache per layer, enforces `max_tokens` (the model's
`max_position_embeddings` or a smaller context size), and reports `length`, `cache_type` and
`nbytes` (the real bytes of every buffer); `new_kv_cache(config, max_tokens, cache_type)` builds
the right kind of cache for every layer and allocates nothing. `decode_slots(caches)` makes
room for one decode token in each of several caches and tells the batched decode kernel where
(`layer_kernels.decode_attention`).
"""

from __future__ import annotations

from functools import cached_property

import numpy as np

from .config import Exaone4Config
from .errors import ContextOverflowError, TinyExaoneError
from .layer_kernels import TABLE_COLUMNS, decode_rows_numpy, encode_rows_numpy, key_layout, value_layout
from .options import check_option

GROW_STEP = 256
DEFAULT_CACHE_TYPE = "f16"
CODE_DTYPES = {"f32": np.float32, "f16": np.uint16, "q8": np.int8}  # cache type -> dtype of its stored codes


class Rows:
    """Keys or values of cached positions in a cache type, in the layouts the attention kernels
    read (layer_kernels.py): keys as codes [kv_heads, head_dim, n] (key-transposed: one row per
    dimension over the positions), values as codes [kv_heads, n, head_dim]; "q8" adds scales
    [kv_heads, n] float32 (None otherwise); position p of head g holds codes * scale. Codes are
    of CODE_DTYPES[type]. `rows[index]` selects positions (views for slices), `rows[index] =
    other` writes them, `decoded()` gives float32 [n, kv_heads, head_dim], positions first."""

    def __init__(self, codes: np.ndarray, scales: np.ndarray | None, keys: bool):
        self.codes = codes  # keys [kv_heads, head_dim, n], values [kv_heads, n, head_dim]
        self.scales = scales  # [kv_heads, n] or None
        self.keys = keys
        self._axis = 2 if keys else 1  # the codes' position axis

    @classmethod
    def empty(cls, cache_type: str, n: int, kv_heads: int, head_dim: int, keys: bool) -> Rows:
        shape = (kv_heads, head_dim, n) if keys else (kv_heads, n, head_dim)
        return cls(np.empty(shape, CODE_DTYPES[cache_type]),
                   np.empty((kv_heads, n), np.float32) if cache_type == "q8" else None, keys)

    @classmethod
    def encode(cls, x: np.ndarray, cache_type: str, keys: bool) -> Rows:
        """float32 x [T, kv_heads, head_dim] in `cache_type` (what the decode kernel stores, bit for bit)."""
        rows = encode_rows_numpy(x, CODE_DTYPES[cache_type])  # codes [T, kv_heads, head_dim], scales [T, kv_heads]
        return cls(*(key_layout if keys else value_layout)(*rows), keys)

    @cached_property
    def addresses(self) -> tuple[int, int]:
        """The data addresses of codes and scales (0 where there are none), for a kernel that
        reaches several sequences' buffers in one call (layer_kernels.decode_attention)."""
        return self.codes.ctypes.data, 0 if self.scales is None else self.scales.ctypes.data

    @property
    def heads_and_dim(self) -> tuple[int, int]:
        kv_heads, a, b = self.codes.shape
        return (kv_heads, a) if self.keys else (kv_heads, b)

    def __len__(self) -> int:
        return self.codes.shape[self._axis]

    def __getitem__(self, index) -> Rows:
        return Rows(self.codes[(slice(None),) * self._axis + (index,)],
                    None if self.scales is None else self.scales[:, index], self.keys)

    def __setitem__(self, index, rows: Rows) -> None:
        self.codes[(slice(None),) * self._axis + (index,)] = rows.codes
        if self.scales is not None:
            self.scales[:, index] = rows.scales

    @property
    def nbytes(self) -> int:
        return self.codes.nbytes + (0 if self.scales is None else self.scales.nbytes)

    def decoded(self) -> np.ndarray:
        """The float32 values [n, kv_heads, head_dim] (for tests and NumPy twins; the kernels read codes)."""
        codes = self.codes.transpose(2, 0, 1) if self.keys else self.codes.transpose(1, 0, 2)  # [n, kv_heads, head_dim]
        return decode_rows_numpy(codes, None if self.scales is None else self.scales.T)


def _grown(rows: Rows, cache_type: str, capacity: int, keep: int) -> Rows:
    """A copy of `rows` with `capacity` rows, the first `keep` rows preserved."""
    grown = Rows.empty(cache_type, capacity, *rows.heads_and_dim, rows.keys)
    grown[:keep] = rows[:keep]
    return grown


def _next_capacity(capacity: int, needed: int, limit: int | None = None) -> int:
    """Grow by at least GROW_STEP (or an eighth of the capacity), in whole steps, at most `limit`."""
    step = max(GROW_STEP, capacity // 8 // GROW_STEP * GROW_STEP)
    grown = max(capacity + step, -(-needed // GROW_STEP) * GROW_STEP)
    return grown if limit is None else min(limit, grown)


class _LayerCache:
    """What both layer caches share: the cache type, `length`, the key and value `Rows` of
    `capacity` positions, their bytes and their growth."""

    def __init__(self, cache_type: str, kv_heads: int, head_dim: int):
        self.cache_type = cache_type
        self.length = 0
        self.keys = Rows.empty(cache_type, 0, kv_heads, head_dim, keys=True)  # [kv_heads, head_dim, capacity]
        self.values = Rows.empty(cache_type, 0, kv_heads, head_dim, keys=False)  # [kv_heads, capacity, head_dim]

    @property
    def nbytes(self) -> int:
        return self.keys.nbytes + self.values.nbytes

    def _grow(self, capacity: int) -> None:
        """Reallocate both buffers to `capacity` rows, keeping rows [0, length) (not yet wrapped)."""
        self.keys = _grown(self.keys, self.cache_type, capacity, self.length)
        self.values = _grown(self.values, self.cache_type, capacity, self.length)


class GrowableCache(_LayerCache):
    def extend(self, k_new: np.ndarray, v_new: np.ndarray) -> tuple[Rows, Rows, int]:
        """Append k_new, v_new [T, kv_heads, head_dim]; return the buffers (positions 0 .. length - 1
        at their own indices, then unused capacity) and 0, the position of index 0."""
        end = self.length + k_new.shape[0]
        if end > len(self.keys):
            self._grow(_next_capacity(len(self.keys), end))
        self.keys[self.length : end] = Rows.encode(k_new, self.cache_type, keys=True)
        self.values[self.length : end] = Rows.encode(v_new, self.cache_type, keys=False)
        self.length = end
        return self.keys, self.values, 0

    def append_slot(self) -> int:
        """Make room for one more position; return the row it goes in (decode writes it)."""
        if self.length == len(self.keys):
            self._grow(_next_capacity(len(self.keys), self.length + 1))
        self.length += 1
        return self.length - 1

    def visible(self) -> tuple[int, int, int]:
        """(first position, count, row modulo) of the keys the newest position attends to."""
        return 0, self.length, len(self.keys)

    def can_trim(self, n: int) -> bool:
        return 0 <= n <= self.length

    def trim(self, n: int) -> None:
        if not self.can_trim(n):
            raise TinyExaoneError(f"cannot trim a cache of {self.length} tokens to {n}")
        self.length = n


class RingCache(_LayerCache):
    """Position p lives in slot p % window; the buffers grow like GrowableCache up to `window` rows."""

    def __init__(self, cache_type: str, kv_heads: int, head_dim: int, window: int):
        super().__init__(cache_type, kv_heads, head_dim)  # capacity <= window
        self.window = window

    @property
    def first_held(self) -> int:
        """Absolute position of the oldest token still held."""
        return max(0, self.length - self.window)

    def _held_then(self, held: Rows, new: Rows) -> Rows:
        """The held positions in temporal order, then `new`: held + T positions."""
        slots = np.arange(self.first_held, self.length) % self.window
        joined = Rows.empty(self.cache_type, len(slots) + len(new), *new.heads_and_dim, new.keys)
        joined[: len(slots)] = held[slots]
        joined[len(slots) :] = new
        return joined

    def _make_room(self, needed: int) -> None:
        if needed > len(self.keys):  # no slot has wrapped yet, so rows [0, length) are positions
            self._grow(_next_capacity(len(self.keys), needed, limit=self.window))

    def extend(self, k_new: np.ndarray, v_new: np.ndarray) -> tuple[Rows, Rows, int]:
        """Store k_new, v_new [T, ...]; return held + new keys and values in temporal order, and
        the position of the first."""
        t, first = k_new.shape[0], self.first_held
        keys = self._held_then(self.keys, Rows.encode(k_new, self.cache_type, keys=True))  # held + T positions
        values = self._held_then(self.values, Rows.encode(v_new, self.cache_type, keys=False))
        self._make_room(min(self.length + t, self.window))
        keep = min(t, self.window)
        slots = np.arange(self.length + t - keep, self.length + t) % self.window
        self.keys[slots] = keys[len(keys) - keep :]
        self.values[slots] = values[len(values) - keep :]
        self.length += t
        return keys, values, first

    def append_slot(self) -> int:
        """Make room for one more position; return the row it goes in (decode writes it)."""
        self._make_room(min(self.length + 1, self.window))
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

    def __init__(self, layers: list, max_tokens: int, layout: tuple, cache_type: str):
        self.layers = layers
        self.max_tokens = max_tokens
        self.layout = layout  # cache_layout() of the config it was made for
        self.cache_type = cache_type  # the type of every layer's rows (any type suits any model)
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

    def keep(self, name: str, make):
        """The object stored under `name` with this sequence, made by `make()` the first time
        (decode's work buffers for one batch size)."""
        kept = self._scratch.get(name)
        if kept is None:
            kept = self._scratch[name] = make()
        return kept

    def scratch(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """A float32 work buffer of at least `shape`, kept with this sequence so that decoding
        allocates nothing per token (and sequences on other threads never share one)."""
        buffer = self._scratch.get(name)
        if buffer is None or any(have < need for have, need in zip(buffer.shape, shape)):
            buffer = self._scratch[name] = np.empty(
                tuple(max(need, 2 * have) for have, need in zip(buffer.shape, shape)) if buffer is not None else shape,
                np.float32)
        return buffer


def decode_slots(caches: list[KVCache]) -> np.ndarray:
    """Make room for one new token in every layer of each cache (all of one cache type) and
    return where it goes: int64 [layers, B, TABLE_COLUMNS], row [i, b] the table row of
    layer_kernels.decode_attention for layer i of caches[b] (its buffers' addresses and
    capacity, the new token's slot, and the positions it attends to). The lengths have grown by
    one; the addresses hold until a buffer next grows."""
    rows = []
    for i in range(len(caches[0].layers)):
        for cache in caches:
            layer = cache.layers[i]
            slot = layer.append_slot()
            rows.append((*layer.keys.addresses, *layer.values.addresses, len(layer.keys), slot, *layer.visible()))
    return np.array(rows, np.int64).reshape(len(caches[0].layers), len(caches), TABLE_COLUMNS)


def cache_layout(config: Exaone4Config) -> tuple:
    """What a cache's buffers depend on: per layer (window or None, kv_heads, head_dim)."""
    return tuple((config.sliding_window if config.layer_is_sliding(i) else None, config.num_key_value_heads,
                  config.head_dim) for i in range(config.num_hidden_layers))


def new_kv_cache(config: Exaone4Config, max_tokens: int | None = None,
                 cache_type: str = DEFAULT_CACHE_TYPE) -> KVCache:
    """An empty cache for one sequence of `cache_type` rows: a ring per sliding layer, a growable
    cache per full layer."""
    if max_tokens is not None:
        check_option("context_size", max_tokens, label="the cache size")
    check_option("cache_type", cache_type)
    limit = config.max_position_embeddings if max_tokens is None else min(max_tokens, config.max_position_embeddings)
    kv_heads, head_dim = config.num_key_value_heads, config.head_dim
    layers = [
        RingCache(cache_type, kv_heads, head_dim, config.sliding_window)
        if config.layer_is_sliding(i)
        else GrowableCache(cache_type, kv_heads, head_dim)
        for i in range(config.num_hidden_layers)
    ]
    return KVCache(layers, limit, cache_layout(config), cache_type)
