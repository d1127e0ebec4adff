"""The EXAONE 4 forward pass (Exaone4ForCausalLM), in float32 NumPy and Numba.

`Model.forward(token_ids, cache)` returns logits [T, vocab] for T new tokens whose positions
continue after what `cache` holds; prefill and decode run the same math. It follows
transformers exactly (its `models/exaone4/modeling_exaone4.py`):

    h = E[ids]
    for each layer:
        q, k, v = h Wq^T, h Wk^T, h Wv^T            split into heads
        q, k = RMSNorm(q), RMSNorm(k)                per head (QK-norm)
        q, k = RoPE(q), RoPE(k)                      unless a full layer of a hybrid model (NoPE)
        a = softmax(q k^T / sqrt(d) + mask) v        GQA; causal, plus the window on sliding layers
        h = h + RMSNorm(a Wo^T)                      reorder-norm: post-norm inside the branch
        h = h + RMSNorm(W_down (silu(W_gate h) * W_up h))
    logits = RMSNorm(h) E^T                          (or lm_head when untied)

Several new tokens (prefill) take `_forward_hidden`: q/k/v and gate/up each from one
quantization of h, QK-norm + RoPE, attention, silu(gate) * up and the residual norms through
the Numba twins in layer_kernels.py of `rms_norm`, `rope.apply_rope` and `attention` below (the
NumPy forms the tests hold them to). One new token (decode) takes `_decode_hidden`, the same math
through the fused Numba steps of layer_kernels.py (q/k/v and gate/up in one launch each,
QK-norm + RoPE + cache write + attention straight over the cache rows in one launch for every
sequence of the step, in-place residual norms); the tests hold both paths to transformers.
`forward_batch(token_ids, caches)` decodes one token for each of several sequences in that same step: the matrices multiply all
B tokens at once (each weight byte read once per step, not once per sequence), attention runs
each sequence over its own cache, all in one launch; one-token `forward` is its B = 1 case.
`forward_many(token_ids, caches)` runs new tokens of several sequences, any number each, in one
pass: one-token sequences as in `forward_batch`, longer ones as prefills.

A Model holds no per-sequence state: each sequence owns a `KVCache` from `new_cache()` (keys and
values in float16 by default, or "f32" / "q8"; the kernels read each type in place, and prefill
attends over the new keys already rounded to it, as decoding will), so one Model can serve
several sessions. Before any kernel runs, `forward` checks the token ids, that
the cache was made for this model's shape (the kernels trust its buffers), and that no
memory-mapped weight file has shrunk since it was loaded. If a forward pass fails or is interrupted, the cache is rolled
back to where it was (or emptied when a ring buffer cannot roll back), never left half-written.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .cache import DEFAULT_CACHE_TYPE, KVCache, cache_layout, decode_slots, new_kv_cache
from .config import Exaone4Config
from .errors import TinyExaoneError
from .kernels import COMPUTE_LOCK, chunk_count
from .layer_kernels import (
    N_KEYS,
    add_rms_norm, add_rms_norm_rows, attention_prefill, decode_attention, decode_attention_serial, qk_norm_rope_rows,
    silu_mul, silu_mul_rows,
)
from .quantized import activation_buffers, matmul_fused, plan_matmuls
from .rope import cos_sin, inverse_frequencies
from .weights import LayerWeights, ModelWeights

QUERY_BLOCK = 256  # queries per attention block in prefill: bounds the score matrix's memory
ATTENTION_SERIAL_BELOW = 1 << 14  # keys x heads x head_dim of a decode step's attention (all sequences) below
# which it runs on the calling thread: at the 1.2B shape (2,048 per key) 2 threads win from 9 keys on


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """weight * x / sqrt(mean(x^2) + eps) over the last axis."""
    variance = np.mean(np.square(x), axis=-1, keepdims=True)
    return (x / np.sqrt(variance + np.float32(eps))) * weight


def attention(
    q: np.ndarray, keys: np.ndarray, values: np.ndarray, first_query_pos: int, first_key_pos: int, window: int | None
) -> np.ndarray:
    """Causal GQA attention; q [T, heads, d], keys/values [S, kv_heads, d] -> [T, heads * d].
    The readable NumPy form; prefill runs its Numba twin `layer_kernels.attention_prefill`.

    Query t sits at absolute position first_query_pos + t and key s at first_key_pos + s. A query
    at i sees keys j <= i, and with a window W only those with i - W < j.
    """
    t_len, heads, head_dim = q.shape
    kv_heads = keys.shape[1]
    group = heads // kv_heads
    scale = np.float32(head_dim**-0.5)
    keys_t = keys.transpose(1, 2, 0)  # [kv_heads, d, S]
    values_h = values.transpose(1, 0, 2)  # [kv_heads, S, d]
    key_pos = first_key_pos + np.arange(keys.shape[0])  # [S]
    out = np.empty((t_len, kv_heads, group, head_dim), np.float32)
    for start in range(0, t_len, QUERY_BLOCK):
        stop = min(start + QUERY_BLOCK, t_len)
        query_pos = first_query_pos + np.arange(start, stop)  # [B]
        visible = key_pos[None, :] <= query_pos[:, None]  # [B, S]
        if window is not None:
            visible &= key_pos[None, :] > query_pos[:, None] - window
        qb = q[start:stop].reshape(stop - start, kv_heads, group, head_dim).transpose(1, 2, 0, 3)  # [kv, g, B, d]
        scores = np.matmul(qb, keys_t[:, None]) * scale  # [kv, g, B, S]
        scores = np.where(visible, scores, np.float32(-np.inf))
        scores -= scores.max(axis=-1, keepdims=True)
        probs = np.exp(scores)
        probs /= probs.sum(axis=-1, keepdims=True)
        out[start:stop] = np.matmul(probs, values_h[:, None]).transpose(2, 0, 1, 3)  # [B, kv, g, d]
    return out.reshape(t_len, heads * head_dim)


class Model:
    """An EXAONE 4 causal language model: config, weights, `forward` and `new_cache`, nothing else.
    `tinyexaone.load` wraps one with its tokenizer for generation (chat_model.py)."""

    def __init__(self, config: Exaone4Config, weights: ModelWeights):
        self.config = config
        self.weights = weights
        self.inv_freq = inverse_frequencies(config.rope, config.head_dim)  # [head_dim/2]
        self.cache_layout = cache_layout(config)
        self.decode_matmuls = [_LayerMatmuls(plan_matmuls([layer.q_proj, layer.k_proj, layer.v_proj]),
                                             plan_matmuls([layer.o_proj]),
                                             plan_matmuls([layer.gate_proj, layer.up_proj]),
                                             plan_matmuls([layer.down_proj])) for layer in weights.layers]

    def new_cache(self, max_tokens: int | None = None, cache_type: str = DEFAULT_CACHE_TYPE) -> KVCache:
        """An empty cache for one sequence; `max_tokens` caps it below max_position_embeddings;
        `cache_type` ("f16", "f32" or "q8") is the type its keys and values are stored in."""
        return new_kv_cache(self.config, max_tokens, cache_type)

    def _token_array(self, token_ids) -> np.ndarray:
        ids = np.asarray(token_ids)
        if ids.ndim != 1 or ids.size == 0:
            raise TinyExaoneError(f"token_ids must be a non-empty 1-D sequence, got shape {ids.shape}")
        if not np.issubdtype(ids.dtype, np.integer):
            raise TinyExaoneError(f"token_ids must be integers, got {ids.dtype}")
        bad = ids[(ids < 0) | (ids >= self.config.vocab_size)]
        if bad.size:
            raise TinyExaoneError(f"token id {int(bad[0])} is outside the vocabulary [0, {self.config.vocab_size})")
        return ids.astype(np.int64)

    def _check_cache(self, cache) -> None:
        if not isinstance(cache, KVCache) or cache.layout != self.cache_layout:
            raise TinyExaoneError("the cache was not made for this model's shape; use this model's new_cache()")

    def forward(self, token_ids, cache: KVCache | None = None, last_only: bool = False) -> np.ndarray:
        """Logits [T, vocab] float32 for T new tokens ([1, vocab] for the last one if `last_only`);
        extends `cache` when one is given."""
        ids = self._token_array(token_ids)
        cache = self.new_cache() if cache is None else cache
        self._check_cache(cache)
        self.weights.check_files()
        cache.check_room(len(ids))
        if len(ids) == 1:
            return self.forward_batch(ids, [cache])
        hidden = self._rolled_back_on_failure([cache], lambda starts: self._forward_hidden(ids, cache, starts[0]))
        if last_only:
            hidden = hidden[-1:]
        return self.weights.lm_head.matmul(hidden)  # [T or 1, vocab]

    def forward_batch(self, token_ids, caches) -> np.ndarray:
        """Logits [B, vocab] for one new token of each of B sequences: token_ids[b] continues
        caches[b] (B distinct caches of one cache type). The matrices read each weight once for all
        B tokens; attention runs, in one launch per layer, each sequence over its own cache. Row b
        equals forward([token_ids[b]], caches[b]) (bit for bit with quantized weights; float BLAS
        may round a B-row product differently)."""
        ids = self._token_array(token_ids)
        caches = self._checked_caches("forward_batch", [1] * len(ids), caches)
        hidden = self._rolled_back_on_failure(caches, lambda starts: self._decode_hidden(ids, caches, starts))
        return self.weights.lm_head.matmul(hidden)  # [B, vocab]

    def forward_many(self, token_ids, caches, last_only=True) -> list[np.ndarray]:
        """Logits for the new tokens of several sequences in one pass: token_ids[i] (T_i >= 1 ids)
        continues caches[i] (distinct caches of one cache type); entry i is [1, vocab] for its last
        token when `last_only` (a bool, or one per sequence) says so, else [T_i, vocab]. The
        matrices multiply every sequence's tokens at once; one-token sequences attend as in
        `forward_batch`, longer ones as in a prefill, each over its own cache. Entry i equals forward(token_ids[i], caches[i], last_only) bit for bit
        with quantized weights (float BLAS, and AMX tiles over 16 or more tokens, may round a
        many-row product differently)."""
        segments = [self._token_array(ids) for ids in token_ids]
        caches = self._checked_caches("forward_many", [len(ids) for ids in segments], caches)
        hidden = self._rolled_back_on_failure(caches, lambda starts: self._many_hidden(segments, caches, starts))  # [N, hidden]
        ends = np.cumsum([len(ids) for ids in segments])  # [S]
        last = [last_only] * len(segments) if isinstance(last_only, bool) else list(last_only)
        wanted = [np.arange(end - 1, end) if only else np.arange(end - len(ids), end)
                  for ids, end, only in zip(segments, ends, last)]
        logits = self.weights.lm_head.matmul(hidden[np.concatenate(wanted)])  # [rows wanted, vocab]
        return np.split(logits, np.cumsum([len(rows) for rows in wanted])[:-1])

    def _checked_caches(self, caller: str, new_tokens: list[int], caches) -> list[KVCache]:
        """caches as a list, after checking that there is one distinct cache of this model per
        sequence, all of one type, each with room for its new tokens (and the weight files)."""
        caches = list(caches)
        if len(caches) != len(new_tokens) or len({id(c) for c in caches}) != len(caches):
            raise TinyExaoneError(f"{caller} needs one distinct cache per sequence: {len(new_tokens)} sequences, "
                                  f"{len({id(c) for c in caches})} distinct caches of {len(caches)}")
        for n, cache in zip(new_tokens, caches):
            self._check_cache(cache)
            cache.check_room(n)
        if len({cache.cache_type for cache in caches}) > 1:
            raise TinyExaoneError(f"{caller} needs caches of one type, got {sorted({c.cache_type for c in caches})}")
        self.weights.check_files()
        return caches

    @staticmethod
    def _rolled_back_on_failure(caches: list[KVCache], hidden_of) -> np.ndarray:
        """hidden_of(the caches' lengths); if it fails or is interrupted, every cache back to its length."""
        starts = [cache.length for cache in caches]
        try:
            return hidden_of(starts)
        except BaseException:
            for cache, start in zip(caches, starts):
                _roll_back(cache, start)
            raise

    def _decode_plan(self, caches: list[KVCache]) -> tuple[np.ndarray, np.ndarray, bool]:
        """A new token's room in every layer of each cache, for `_decode_attention`: the table
        (cache.decode_slots), score scratch [B, heads, >= keys] kept with the first cache, and
        whether the attention is small enough for the calling thread."""
        heads, d = self.config.num_attention_heads, self.config.head_dim
        slots = decode_slots(caches)  # [layers, B, TABLE_COLUMNS]
        scores = caches[0].scratch(f"scores-{len(caches)}", (len(caches), heads, int(slots[:, :, N_KEYS].max())))
        serial = int(slots[:, :, N_KEYS].sum(axis=1).max()) * heads * d < ATTENTION_SERIAL_BELOW
        return slots, scores, serial

    def _decode_attention(self, i: int, layer: LayerWeights, q, k, v, cos, sin, caches, plan, out) -> None:
        """Layer i's decode_attention for one new token of each cache: q [B, heads, d], k, v
        [B, kv_heads, d], cos, sin [B, head_dim], `plan` from `_decode_plan`; writes out [B, heads, d]."""
        slots, scores, serial = plan
        keys, values = caches[0].layers[i].keys, caches[0].layers[i].values  # their types, for every sequence's
        args = (q, k, v, layer.q_norm, layer.k_norm, cos, sin, self.config.rms_norm_eps, self.config.layer_uses_rope(i),
                keys.codes, keys.scales, values.codes, values.scales, slots[i], scores, out)
        if serial:
            decode_attention_serial(*args)
        else:
            with COMPUTE_LOCK:
                decode_attention(*args)

    def _many_hidden(self, segments: list[np.ndarray], caches: list[KVCache], starts: list[int]) -> np.ndarray:
        """The final-normed hidden states [N, hidden] of every new token of `forward_many`, the
        sequences' tokens one after another. The one-token sequences (rows `decode_rows`) share one
        decode_attention launch per layer; each longer one attends as a prefill."""
        cfg, w = self.config, self.weights
        heads, kv_heads, d, eps = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.rms_norm_eps
        lengths = [len(ids) for ids in segments]
        first_rows = np.cumsum([0] + lengths[:-1])  # [S]: each sequence's first row
        n_rows = sum(lengths)
        positions = np.concatenate([np.arange(start, start + n) for start, n in zip(starts, lengths)])  # [N]
        cos, sin = cos_sin(self.inv_freq, positions)  # [N, head_dim] each
        h = np.ascontiguousarray(w.embed_tokens.rows(np.concatenate(segments)), dtype=np.float32)  # [N, hidden]
        decoding = [s for s, n in enumerate(lengths) if n == 1]
        prefilling = [s for s, n in enumerate(lengths) if n > 1]
        decode_rows = first_rows[decoding]  # [D]
        if decoding:
            decode_caches = [caches[s] for s in decoding]
            plan = self._decode_plan(decode_caches)
            decode_cos, decode_sin = cos[decode_rows], sin[decode_rows]  # [D, head_dim] each
        for i, layer in enumerate(w.layers):
            window = cfg.sliding_window if cfg.layer_is_sliding(i) else None
            q, k, v = matmul_fused([layer.q_proj, layer.k_proj, layer.v_proj], h)  # h quantized once
            q = q.reshape(n_rows, heads, d)  # [N, heads, d]
            k = k.reshape(n_rows, kv_heads, d)  # [N, kv_heads, d]
            v = v.reshape(n_rows, kv_heads, d)
            a = np.empty((n_rows, heads, d), np.float32)  # [N, heads, d]
            if decoding:
                attended = np.empty((len(decoding), heads, d), np.float32)  # [D, heads, d]
                self._decode_attention(i, layer, q[decode_rows], k[decode_rows], v[decode_rows], decode_cos, decode_sin,
                                       decode_caches, plan, attended)
                a[decode_rows] = attended
            for s in prefilling:
                rows = slice(first_rows[s], first_rows[s] + lengths[s])
                a[rows] = self._prefill_attention(layer, q[rows], k[rows], v[rows], caches[s].layers[i], starts[s],
                                                  cos[rows], sin[rows], cfg.layer_uses_rope(i), window)
            o = layer.o_proj.matmul(a.reshape(n_rows, -1))  # [N, hidden]
            with COMPUTE_LOCK:
                add_rms_norm_rows(h, o, layer.post_attention_layernorm, eps)  # h += RMSNorm(o)
            m = self._mlp_block(layer, h)
            with COMPUTE_LOCK:
                add_rms_norm_rows(h, m, layer.post_feedforward_layernorm, eps)  # h += RMSNorm(m)
        return rms_norm(h, w.norm, eps)  # [N, hidden]

    def _forward_hidden(self, ids: np.ndarray, cache: KVCache, start: int) -> np.ndarray:
        cfg, w = self.config, self.weights
        positions = np.arange(start, start + len(ids))  # [T]
        cos, sin = cos_sin(self.inv_freq, positions)  # [T, head_dim] each
        h = np.ascontiguousarray(w.embed_tokens.rows(ids), dtype=np.float32)  # [T, hidden]
        for i, layer in enumerate(w.layers):
            window = cfg.sliding_window if cfg.layer_is_sliding(i) else None
            a = self._attention_block(layer, h, cache.layers[i], start, cos, sin, cfg.layer_uses_rope(i), window)
            with COMPUTE_LOCK:
                add_rms_norm_rows(h, a, layer.post_attention_layernorm, cfg.rms_norm_eps)  # h += RMSNorm(a)
            m = self._mlp_block(layer, h)
            with COMPUTE_LOCK:
                add_rms_norm_rows(h, m, layer.post_feedforward_layernorm, cfg.rms_norm_eps)  # h += RMSNorm(m)
        return rms_norm(h, w.norm, cfg.rms_norm_eps)  # [T, hidden]

    def _attention_block(self, layer: LayerWeights, h, layer_cache, start, cos, sin, rotate, window) -> np.ndarray:
        cfg = self.config
        t_len, d = h.shape[0], cfg.head_dim
        q, k, v = matmul_fused([layer.q_proj, layer.k_proj, layer.v_proj], h)  # h quantized once
        q = q.reshape(t_len, cfg.num_attention_heads, d)  # [T, heads, d]
        k = k.reshape(t_len, cfg.num_key_value_heads, d)  # [T, kv_heads, d]
        v = v.reshape(t_len, cfg.num_key_value_heads, d)  # [T, kv_heads, d]
        a = self._prefill_attention(layer, q, k, v, layer_cache, start, cos, sin, rotate, window)  # [T, heads, d]
        return layer.o_proj.matmul(a.reshape(t_len, -1))  # [T, hidden]

    def _prefill_attention(self, layer: LayerWeights, q, k, v, layer_cache, start, cos, sin, rotate, window) -> np.ndarray:
        """Attention [T, heads, d] of T new tokens from position `start`, q [T, heads, d] and k, v
        [T, kv_heads, d] C-contiguous (q and k are normed and rotated in place); k, v are stored."""
        cfg = self.config
        with COMPUTE_LOCK:  # QK-norm, then RoPE unless a NoPE layer (the twins: rms_norm, apply_rope)
            qk_norm_rope_rows(q, k, layer.q_norm, layer.k_norm, cos, sin, cfg.rms_norm_eps, rotate)
        keys, values, first_key_pos = layer_cache.extend(k, v)  # Rows from position first_key_pos, to start + T - 1 at least
        a = np.empty(q.shape, np.float32)  # [T, heads, d]
        with COMPUTE_LOCK:  # the Numba twin of `attention` (above), over the cache's type
            attention_prefill(q, keys.codes, keys.scales, values.codes, values.scales, start, first_key_pos, window or 0,
                              chunk_count(q.shape[0]), a)
        return a

    def _mlp_block(self, layer: LayerWeights, h) -> np.ndarray:
        gate, up = matmul_fused([layer.gate_proj, layer.up_proj], h)  # [T, intermediate] each, h quantized once
        activated = np.empty_like(gate)  # a separate output: written over its input, the loop does not vectorise
        with COMPUTE_LOCK:
            silu_mul_rows(gate, up, activated)  # the Numba twin of `silu(gate) * up`
        return layer.down_proj.matmul(activated)  # [T, hidden]

    def _decode_hidden(self, ids: np.ndarray, caches: list[KVCache], positions: list[int]) -> np.ndarray:
        """The final-normed hidden states [B, hidden] of B new tokens, token b at positions[b] of caches[b]."""
        cfg, w = self.config, self.weights
        heads, kv_heads, d, eps = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.rms_norm_eps
        batch = len(ids)
        cos, sin = cos_sin(self.inv_freq, np.asarray(positions))  # [B, head_dim] each
        h = np.ascontiguousarray(w.embed_tokens.rows(ids), dtype=np.float32)  # [B, hidden]
        # work buffers kept with the first sequence, one set per batch size: no allocation per token
        buf = caches[0].keep(f"decode-{batch}", lambda: _DecodeBuffers(cfg, batch))
        plan = self._decode_plan(caches)  # where each new token goes, what it sees
        for i, (layer, matmuls) in enumerate(zip(w.layers, self.decode_matmuls)):
            q, k, v = matmuls.qkv(h, buf.qkv, buf.hidden_inputs)  # [B, heads*d], [B, kv*d] x2
            q, k, v = q.reshape(batch, heads, d), k.reshape(batch, kv_heads, d), v.reshape(batch, kv_heads, d)
            self._decode_attention(i, layer, q, k, v, cos, sin, caches, plan, buf.attended)
            (o,) = matmuls.o(buf.attended.reshape(batch, heads * d), buf.o, buf.attended_inputs)  # [B, hidden]
            add_rms_norm(h, o, layer.post_attention_layernorm, eps)
            gate, up = matmuls.gate_up(h, buf.gate_up, buf.hidden_inputs)  # [B, intermediate] each
            silu_mul(gate, up, buf.activated)
            (down,) = matmuls.down(buf.activated, buf.down, buf.activated_inputs)  # [B, hidden]
            add_rms_norm(h, down, layer.post_feedforward_layernorm, eps)
        return rms_norm(h, w.norm, eps)  # [B, hidden]


class _LayerMatmuls(NamedTuple):
    """One layer's decode matrix products, planned once (quantized.plan_matmuls)."""
    qkv: object  # [q_proj, k_proj, v_proj]
    o: object
    gate_up: object  # [gate_proj, up_proj]
    down: object


class _DecodeBuffers:
    """Decode's work arrays for B tokens, reused by every layer and step: the products' outputs,
    attention's output, the activated MLP input, and each matrix input as the kernels read it."""

    def __init__(self, cfg: Exaone4Config, batch: int):
        heads, kv_heads, d = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        hidden, intermediate = cfg.hidden_size, cfg.intermediate_size

        def rows(width):
            return np.empty((batch, width), np.float32)

        self.qkv = (rows(heads * d), rows(kv_heads * d), rows(kv_heads * d))  # [B, heads*d], [B, kv*d] x2
        self.o, self.down = (rows(hidden),), (rows(hidden),)  # [B, hidden]
        self.gate_up = (rows(intermediate), rows(intermediate))  # [B, intermediate] each
        self.attended = np.empty((batch, heads, d), np.float32)  # [B, heads, d]
        self.activated = rows(intermediate)  # [B, intermediate]
        self.hidden_inputs = activation_buffers(batch, hidden)
        self.attended_inputs = activation_buffers(batch, heads * d)
        self.activated_inputs = activation_buffers(batch, intermediate)


def _roll_back(cache: KVCache, length: int) -> None:
    """Undo a failed or interrupted forward pass: back to `length` tokens, or empty for a ring buffer."""
    if cache.can_trim(length):
        cache.trim(length)
    else:
        cache.reset()
