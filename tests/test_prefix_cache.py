"""The prefix cache pool: longest token prefix wins, a cache is never handed to two requests,
conversations that share only a short start keep their own caches, and eviction is least
recently used by count and by bytes."""

import numpy as np

import tinyexaone
from tinyexaone.prefix_cache import PrefixCachePool

from test_forward_batch import DEMO


def filled(model, ids):
    cache = model.new_cache()
    model.forward(ids, cache)
    return cache


def test_longest_prefix_is_taken_and_held_exclusively():
    model = tinyexaone.load(DEMO).model
    pool = PrefixCachePool(model.new_cache, max_bytes=1 << 30)
    rng = np.random.default_rng()
    a, b = list(rng.integers(0, 100, 20)), list(rng.integers(100, 200, 20))
    pool.put(filled(model, a), a)
    pool.put(filled(model, b), b)
    cache, ids = pool.take(b[:15] + [7, 8])
    assert ids == b and cache.length == 20 and len(pool) == 1
    again, again_ids = pool.take(b + [1])  # b's cache is out: a fresh one, not the same object
    assert again is not cache and again_ids == [] and again.length == 0
    other, other_ids = pool.take(a[:5] + b)  # shares 5 of a's 20: not worth cutting a's cache short
    assert other_ids == [] and len(pool) == 1
    taken, taken_ids = pool.take(a[:10] + [3])  # half of a: taken
    assert taken_ids == a


def test_eviction_by_count_and_bytes_least_recent_first():
    model = tinyexaone.load(DEMO).model
    pool = PrefixCachePool(model.new_cache, max_bytes=1 << 30, max_entries=2)
    seqs = [[i] * 5 for i in range(1, 4)]
    for s in seqs:
        pool.put(filled(model, s), s)
    assert len(pool) == 2 and pool.take(seqs[0])[1] == [] and pool.take(seqs[2])[1] == seqs[2]
    one = filled(model, seqs[1])
    small = PrefixCachePool(model.new_cache, max_bytes=one.nbytes)
    small.put(one, seqs[1])
    small.put(filled(model, seqs[0]), seqs[0])
    assert len(small) == 1 and small.take(seqs[0])[1] == seqs[0]
    small.put(model.new_cache(), [])  # an empty cache, or one whose ids do not match it, is not kept
    small.put(filled(model, seqs[2]), seqs[2][:3])
    assert len(small) == 0
