"""KV caches of recent requests, kept so that a resent conversation prefills only its new tokens.

Chat clients resend the whole conversation every turn, and EXAONE's template re-renders earlier
turns (it drops old reasoning, for one), so reuse is matched by tokens, not by messages.
`PrefixCachePool(new_cache, max_bytes, max_entries)` holds idle caches with the token ids each
holds. `take(prompt_ids)` removes and returns the idle cache sharing the longest token prefix
with the prompt, with its ids (the generation's Decoder keeps that prefix and trims the rest),
or a fresh cache and [] when none shares at least half of what it holds: a conversation that
shares only a system prompt with another does not take (and cut short) the other's cache, so
clients that alternate keep their own; a taken cache belongs to one generation until
`put(cache, ids)` returns it. Idle caches are evicted least recently used first while the pool
holds more than `max_entries` caches or more than `max_bytes` of keys and values (each cache's
real `nbytes`); a cache larger than `max_bytes` on its own is not kept. Thread-safe.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from .generation import common_prefix_length


class PrefixCachePool:
    """See the module docstring."""

    def __init__(self, new_cache, max_bytes: int, max_entries: int = 16):
        self._new_cache = new_cache
        self.max_bytes = max_bytes
        self.max_entries = max_entries
        self._lock = threading.Lock()
        self._idle: OrderedDict[int, tuple[object, list[int]]] = OrderedDict()  # id(cache) -> (cache, ids), oldest first

    def take(self, prompt_ids) -> tuple[object, list[int]]:
        """The idle cache with the longest common token prefix with prompt_ids (taken out of the
        pool), and the ids it holds; a new cache and [] when no idle cache shares half its ids."""
        with self._lock:
            best, best_length = None, 0
            for key, (_, ids) in self._idle.items():
                length = common_prefix_length(ids, prompt_ids)
                if length > best_length and 2 * length >= len(ids):
                    best, best_length = key, length
            if best is not None:
                return self._idle.pop(best)
        return self._new_cache(), []

    def put(self, cache, ids) -> None:
        """Return a cache (holding exactly `ids`) to the pool as its most recently used entry."""
        ids = list(ids)
        if cache.length != len(ids) or not ids or cache.nbytes > self.max_bytes:
            return
        with self._lock:
            self._idle[id(cache)] = (cache, ids)
            while len(self._idle) > self.max_entries or self._idle_bytes() > self.max_bytes:
                self._idle.popitem(last=False)

    def _idle_bytes(self) -> int:
        return sum(cache.nbytes for cache, _ in self._idle.values())

    @property
    def nbytes(self) -> int:
        with self._lock:
            return self._idle_bytes()

    def __len__(self) -> int:
        with self._lock:
            return len(self._idle)

    def clear(self) -> None:
        with self._lock:
            self._idle.clear()
