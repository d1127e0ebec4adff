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
from numba import njit

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


BUCKETS = 1024  # bins of log-probability over the NEGLIGIBLE range, for the top-k and top-p cuts


@njit(nogil=True, cache=True)
def _cut_bucket(amounts, target):
    """The first bin at which the running total of amounts [BUCKETS] reaches target (or BUCKETS),
    and the total of the bins before it."""
    running = 0.0
    for c in range(amounts.shape[0]):
        if running + amounts[c] >= target:
            return c, running
        running += amounts[c]
    return amounts.shape[0], running


@njit(nogil=True, cache=True)
def _in_bucket(weights, bins, c):
    """Indices of the surviving candidates in bin c, most likely first, ties in id order."""
    members = np.flatnonzero((bins == c) & (weights > 0.0))
    return members[np.argsort(-weights[members], kind="mergesort")]


@njit(nogil=True, cache=True)
def _sample(ids, scaled, weights, top_k, top_p, min_p, u):
    """The token drawn by the chain of the module docstring from the candidates ids [m]
    (ascending), their logits after temperature scaled [m] and weights [m] = exp(scaled -
    max(scaled)) (overwritten: 0 = filtered out); u is the uniform number in [0, 1) of the draw.
    Candidates are binned by log-probability (BUCKETS bins over [-NEGLIGIBLE, 0]); a top-k or
    top-p cut falls in one bin, and only that bin is sorted."""
    top = scaled.max()
    bins = np.minimum((top - scaled) * (BUCKETS / NEGLIGIBLE), BUCKETS - 1).astype(np.int64)  # [m], 0 = best
    if 0 < top_k < ids.shape[0]:  # keep the k largest and any tied with the k-th
        counts = np.zeros(BUCKETS)
        for j in range(ids.shape[0]):
            counts[bins[j]] += 1.0
        c, above = _cut_bucket(counts, top_k)
        members = _in_bucket(weights, bins, c)
        kth = weights[members[top_k - int(above) - 1]]
        for j in range(ids.shape[0]):
            if bins[j] > c or (bins[j] == c and weights[j] < kth):
                weights[j] = 0.0
    if top_p < 1.0:  # the smallest most-likely set with mass >= top_p
        masses = np.zeros(BUCKETS)
        for j in range(ids.shape[0]):
            masses[bins[j]] += weights[j]
        target = top_p * masses.sum()
        c, mass = _cut_bucket(masses, target)
        if c < BUCKETS:
            for j in _in_bucket(weights, bins, c):
                if mass < target:
                    mass += weights[j]
                else:
                    weights[j] = 0.0
            for j in range(ids.shape[0]):
                if bins[j] > c:
                    weights[j] = 0.0
    if min_p > 0.0:
        cut = min_p * weights.max()
        for j in range(ids.shape[0]):
            if weights[j] < cut:
                weights[j] = 0.0
    threshold = u * weights.sum()  # the draw walks the survivors in id order
    running, last = 0.0, 0
    for j in range(ids.shape[0]):
        if weights[j] > 0.0:
            running += weights[j]
            last = j
            if running > threshold:
                return ids[j]
    return ids[last]


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
    temperature, top-k, top-p, min-p, `draw`, with the same one uniform number per draw), but
    after the penalties one Numba kernel (`_sample`, which releases the GIL) does the rest in
    linear time: only the tokens within e^-40 of the best one are candidates (the others' total
    probability is below what a float64 draw can resolve), top-k and top-p find their cut by
    quickselect instead of sorting (tokens tied at a cut are taken in id order), and no
    full-vocabulary vector is built per filter. The filter functions above are its NumPy twin.
    """

    def __init__(self, params: SamplingParams):
        self.params = params
        self.rng = np.random.default_rng(params.seed)

    def next_token(self, logits: np.ndarray, prompt_ids, generated_ids) -> int:
        p = self.params
        scores = usable_logits(logits)
        if p.repetition_penalty != 1.0:
            scores = apply_repetition_penalty(scores, [*prompt_ids, *generated_ids], p.repetition_penalty)
        if p.presence_penalty != 0.0 or p.frequency_penalty != 0.0:  # (else no float64 copy of the vocabulary)
            scores = apply_presence_frequency_penalty(scores, generated_ids, p.presence_penalty, p.frequency_penalty)
        if p.temperature == 0:
            return int(np.argmax(scores))
        # below NEGLIGIBLE under the best, a token's probability is under e^-40 of the best one's
        ids = np.flatnonzero(scores >= scores.max() - NEGLIGIBLE * p.temperature)  # candidate ids, ascending
        scaled = apply_temperature(np.asarray(scores)[ids], p.temperature)  # [m] float64
        weights = np.exp(scaled - scaled.max())  # [m] unnormalised probabilities (NumPy's vector exp)
        return int(_sample(ids, scaled, weights, p.top_k, p.top_p, p.min_p, self.rng.random()))


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
