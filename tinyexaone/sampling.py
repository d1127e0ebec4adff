"""Choosing the next token from a logits vector.

Every filter is a pure function from a logits vector [vocab] to a new one (rejected tokens get
-inf), so each can be tested on hand-made numbers. `Sampler` chains them in this order:

    repetition penalty (prompt + generated ids) -> presence / frequency penalties (generated ids)
    -> greedy argmax if temperature == 0, else: temperature -> top-k -> top-p -> min-p -> draw

Penalties follow the usual definitions: repetition divides a positive logit by the penalty and
multiplies a negative one (CTRL / transformers); presence subtracts a constant from every token
already generated, frequency subtracts its count times the penalty (OpenAI). The draw uses one
`numpy.random.Generator` per generation, seeded from `seed`, so the same seed, prompt and
settings give the same tokens. `SamplingParams` checks its values against options.py's bounds.
`token_logprobs(logits, token, n)` reports one step's log-probabilities: the log-softmax of the
logits it is given (the caller passes them after any grammar mask and before this chain), for the
chosen token and the n most likely ones. Defaults follow the EXAONE 4.0 model card: temperature 0.5 and
top-p 0.95 without reasoning (the card asks for < 0.6), temperature 0.6 and top-p 0.95 with it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import TinyExaoneError
from .options import check_option

NEGLIGIBLE = 40.0  # log-probability gap below the best token at which a token cannot be drawn
NON_REASONING_DEFAULTS = {"temperature": 0.5, "top_p": 0.95}
REASONING_DEFAULTS = {"temperature": 0.6, "top_p": 0.95}


def apply_repetition_penalty(logits: np.ndarray, context_ids, penalty: float) -> np.ndarray:
    """Make every token in context_ids less likely: positive logits / penalty, negative * penalty."""
    out = np.array(logits, dtype=np.float64)  # [vocab]
    if penalty == 1.0 or len(context_ids) == 0:
        return out
    seen = np.unique(np.asarray(context_ids, dtype=np.int64))
    values = out[seen]
    out[seen] = np.where(values > 0, values / penalty, values * penalty)
    return out


def apply_presence_frequency_penalty(logits: np.ndarray, generated_ids, presence: float,
                                     frequency: float) -> np.ndarray:
    """logit -= presence * [token was generated] + frequency * (times it was generated)."""
    out = np.array(logits, dtype=np.float64)  # [vocab]
    if (presence == 0.0 and frequency == 0.0) or len(generated_ids) == 0:
        return out
    ids, counts = np.unique(np.asarray(generated_ids, dtype=np.int64), return_counts=True)
    out[ids] -= frequency * counts + presence
    return out


def apply_temperature(logits: np.ndarray, temperature: float) -> np.ndarray:
    return np.asarray(logits, dtype=np.float64) / temperature


def top_k_filter(logits: np.ndarray, k: int) -> np.ndarray:
    """Keep the k largest logits (and any tied with the k-th); k == 0 keeps all."""
    out = np.array(logits, dtype=np.float64)
    if k <= 0 or k >= out.shape[0]:
        return out
    kth = np.partition(out, out.shape[0] - k)[out.shape[0] - k]
    out[out < kth] = -np.inf
    return out


def softmax(logits: np.ndarray) -> np.ndarray:
    """Probabilities [vocab] in float64; -inf logits get probability 0."""
    shifted = np.asarray(logits, dtype=np.float64) - np.max(logits)
    weights = np.exp(shifted)
    return weights / weights.sum()


def top_p_filter(logits: np.ndarray, p: float) -> np.ndarray:
    """Keep the smallest set of most likely tokens whose probabilities add up to at least p."""
    out = np.array(logits, dtype=np.float64)
    if p >= 1.0:
        return out
    probs = softmax(out)
    vocab = probs.shape[0]
    k = 64  # sort only the k most likely tokens, growing k until they hold mass p (a full sort is slow)
    while True:
        k = min(k, vocab)
        top = np.argpartition(-probs, k - 1)[:k] if k < vocab else np.arange(vocab)
        top = top[np.argsort(-probs[top], kind="stable")]  # most likely first
        if k == vocab or probs[top].sum() >= p:
            break
        k *= 4
    mass_before = np.cumsum(probs[top]) - probs[top]  # probability of the tokens ranked above each one
    keep = top[mass_before < p]  # the first token always has mass_before 0 < p
    filtered = np.full_like(out, -np.inf)
    filtered[keep] = out[keep]
    return filtered


def min_p_filter(logits: np.ndarray, min_p: float) -> np.ndarray:
    """Drop tokens whose probability is below min_p times the top token's probability."""
    out = np.array(logits, dtype=np.float64)
    if min_p <= 0.0:
        return out
    probs = softmax(out)
    out[probs < min_p * probs.max()] = -np.inf
    return out


def draw(logits: np.ndarray, rng: np.random.Generator) -> int:
    """One token drawn from softmax(logits) using one uniform number from rng."""
    candidates = np.flatnonzero(np.isfinite(logits))  # ids that filters left
    return int(candidates[_draw_index(np.asarray(logits, dtype=np.float64)[candidates], rng)])


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = NON_REASONING_DEFAULTS["temperature"]  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = NON_REASONING_DEFAULTS["top_p"]  # 1 = off
    min_p: float = 0.0  # 0 = off
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0  # 1 = off
    seed: int | None = None  # None = fresh entropy each generation

    def __post_init__(self):
        for name in ("temperature", "top_k", "top_p", "min_p", "presence_penalty", "frequency_penalty",
                     "repetition_penalty", "seed"):
            if not (name == "seed" and self.seed is None):
                check_option(name, getattr(self, name))


def _nucleus(weights: np.ndarray, p: float) -> np.ndarray:
    """Ids of the smallest most-likely set of unnormalised `weights` holding mass >= p (top_p_filter's rule)."""
    vocab = weights.shape[0]
    total = weights.sum()
    k = 64  # sort only the k most likely, growing k until they hold mass p (a full sort is slow)
    while True:
        k = min(k, vocab)
        top = np.argpartition(-weights, k - 1)[:k] if k < vocab else np.arange(vocab)
        top = top[np.argsort(-weights[top], kind="stable")]  # most likely first
        if k == vocab or weights[top].sum() >= p * total:
            break
        k *= 4
    mass_before = (np.cumsum(weights[top]) - weights[top]) / total
    return top[mass_before < p]


def usable_logits(logits: np.ndarray) -> np.ndarray:
    """The logits with NaN as -inf; TinyExaoneError when no token is left (a damaged model or config
    computes NaN or infinities, and sampling must not crash on them). A +inf token wins outright."""
    logits = np.asarray(logits)
    if np.isfinite(logits).all():
        return logits
    scores = np.where(np.isnan(logits), -np.inf, logits)
    if np.isposinf(scores).any():
        return np.where(np.isposinf(scores), 0.0, -np.inf)
    if not np.isfinite(scores).any():
        raise TinyExaoneError("the model computed no usable logits (all NaN or infinite): its weights or config "
                              "are damaged")
    return scores


class Sampler:
    """Applies SamplingParams to successive logits vectors of one generation.

    `next_token` gives the token of the filter chain in the module docstring (penalties,
    temperature, top-k, top-p, min-p, `draw`), but after the penalties it works only on the
    candidates within e^-40 of the best token instead of building a new full-vocabulary vector
    per filter (the others' total probability is below what a float64 draw can resolve).
    """

    def __init__(self, params: SamplingParams):
        self.params = params
        self.rng = np.random.default_rng(params.seed)

    def next_token(self, logits: np.ndarray, prompt_ids, generated_ids) -> int:
        p = self.params
        scores = usable_logits(logits)
        if p.repetition_penalty != 1.0:
            scores = apply_repetition_penalty(scores, [*prompt_ids, *generated_ids], p.repetition_penalty)
        scores = apply_presence_frequency_penalty(scores, generated_ids, p.presence_penalty, p.frequency_penalty)
        if p.temperature == 0:
            return int(np.argmax(scores))
        # Tokens more than NEGLIGIBLE below the best (after temperature) have probability
        # < e^-40 relative to it: below float64 resolution of the draw, so only the rest is kept.
        ids = np.flatnonzero(scores >= scores.max() - NEGLIGIBLE * p.temperature)  # candidate ids
        scaled = apply_temperature(np.asarray(scores)[ids], p.temperature)  # [candidates] float64
        weights = np.exp(scaled - scaled.max())  # unnormalised probabilities
        if 0 < p.top_k < len(ids):
            kth = np.partition(weights, len(ids) - p.top_k)[len(ids) - p.top_k]
            weights[weights < kth] = 0.0
        keep = _nucleus(weights, p.top_p) if p.top_p < 1.0 else np.flatnonzero(weights)
        if p.min_p > 0.0:
            keep = keep[weights[keep] >= p.min_p * weights[keep].max()]
        keep = np.sort(keep)  # `draw` walks the survivors in id order
        return int(ids[keep[_draw_index(scaled[keep], self.rng)]])


def token_logprobs(logits: np.ndarray, token: int, top_n: int) -> dict:
    """{"id": token, "logprob": float, "top": [(id, logprob), ...]} from the log-softmax of `logits`
    [vocab] in float64: the chosen token's log-probability and the `top_n` most likely tokens,
    highest first; tokens that cannot be drawn (-inf, e.g. masked) are never listed."""
    scores = np.asarray(usable_logits(logits), dtype=np.float64)  # [vocab]
    best = scores.max()
    log_total = best + np.log(np.exp(scores - best).sum())
    top = []
    if top_n > 0:
        count = min(top_n, scores.shape[0])
        ids = np.argpartition(-scores, count - 1)[:count] if count < scores.shape[0] else np.arange(count)
        ids = ids[np.isfinite(scores[ids])]
        ids = ids[np.lexsort((ids, -scores[ids]))]  # most likely first (equal ones by id)
        top = [(int(i), float(scores[i] - log_total)) for i in ids]
    return {"id": int(token), "logprob": float(scores[token] - log_total), "top": top}


def _draw_index(candidate_logits: np.ndarray, rng: np.random.Generator) -> int:
    cumulative = np.cumsum(softmax(candidate_logits))
    index = int(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right"))
    return min(index, len(candidate_logits) - 1)
