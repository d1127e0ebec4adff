"""One compute thread for many generations: decode steps of concurrent sequences run as one batch.

`StepScheduler(model)` owns the model's compute. Generations on other threads reach it through
`scheduler.sequence()`, a context manager yielding a `ScheduledModel`: a stand-in for the
`Model` with the same `config`, `new_cache` and `forward(ids, cache, last_only)`, so the whole
generation stack (generation.Run, chat.ChatTurn: sampling, stop strings, parsing) runs unchanged
on the caller's thread while its forward passes are queued here. The compute thread takes,
each round, every pending one-token step and the pending multi-token steps (prefill chunks,
at most generation.PREFILL_CHUNK tokens each) up to PREFILL_TOKENS prompt tokens in all (at
least one), and runs them as one forward pass: `Model.forward_batch` when all are one-token
steps, else `Model.forward_many`, so each weight is read once per round, not once per
sequence, and a long prompt delays the other sequences by one chunk at a time, never by its
whole prefill. Before a round it waits, at most `gather_s`, until every registered sequence
has a step pending (so prompts that arrive together prefill together, and a decode step does
not miss the round of another's prefill); with one sequence it never waits. A failed round is
retried one step at a time, so an error reaches only the step that caused it. `close()` stops
the thread; steps still pending, and later ones, raise `TinyExaoneError`. Numba's thread count
is per thread: the compute thread takes the one of the thread that made the scheduler.
"""

from __future__ import annotations

import contextlib
import threading
from collections import deque
from time import monotonic

import numpy as np

from .errors import TinyExaoneError

GATHER_S = 0.02  # longest wait for the other sequences' next tokens before a round runs without them
MAX_BATCH = 16  # one-token steps per round
PREFILL_TOKENS = 256  # prompt tokens per round beyond a first chunk: bounds how long a round keeps the decodes waiting


class _Step:
    """One forward pass waiting for the compute thread."""

    def __init__(self, ids: np.ndarray, cache, last_only: bool):
        self.ids, self.cache, self.last_only = ids, cache, last_only
        self.done = threading.Event()
        self.logits: np.ndarray | None = None
        self.error: BaseException | None = None

    def finish(self, logits=None, error=None) -> None:
        self.logits, self.error = logits, error
        self.done.set()


class ScheduledModel:
    """What one generation sees as its model: forward passes go through the scheduler."""

    def __init__(self, scheduler: StepScheduler, before_step=None):
        self._scheduler = scheduler
        self._before_step = before_step
        self.config = scheduler.model.config

    def new_cache(self, *args, **kwargs):
        return self._scheduler.model.new_cache(*args, **kwargs)

    def forward(self, token_ids, cache, last_only: bool = False) -> np.ndarray:
        if self._before_step is not None:
            self._before_step()
        return self._scheduler.submit(np.asarray(token_ids, dtype=np.int64), cache, last_only)


class StepScheduler:
    """See the module docstring."""

    def __init__(self, model, gather_s: float = GATHER_S, max_batch: int = MAX_BATCH):
        import numba

        self.model = model
        self.gather_s = gather_s
        self.max_batch = max_batch
        self._threads = numba.get_num_threads()
        self._cond = threading.Condition()
        self._decodes: list[_Step] = []
        self._prefills: deque[_Step] = deque()
        self._sequences = 0
        self._closed = False
        self.rounds = 0  # rounds run, and one-token steps in them (for tests and stats)
        self.batched_steps = 0
        self._thread = threading.Thread(target=self._loop, name="tinyexaone-compute", daemon=True)
        self._thread.start()

    @contextlib.contextmanager
    def sequence(self, before_step=None):
        """Register one generation for the length of the block; yields its ScheduledModel, which
        calls `before_step()` (if given) before each forward pass: an exception it raises ends
        the generation there, before the step is queued."""
        with self._cond:
            self._sequences += 1
        try:
            yield ScheduledModel(self, before_step)
        finally:
            with self._cond:
                self._sequences -= 1
                self._cond.notify_all()

    def submit(self, ids: np.ndarray, cache, last_only: bool) -> np.ndarray:
        step = _Step(ids, cache, last_only)
        with self._cond:
            if self._closed:
                raise TinyExaoneError("the model is shutting down")
            (self._decodes if len(ids) == 1 else self._prefills).append(step)
            self._cond.notify_all()
        step.done.wait()
        if step.error is not None:
            raise step.error
        return step.logits

    def close(self) -> None:
        with self._cond:
            self._closed = True
            pending = self._decodes + list(self._prefills)
            self._decodes, self._prefills = [], deque()
            self._cond.notify_all()
        for step in pending:
            step.finish(error=TinyExaoneError("the model is shutting down"))
        self._thread.join(timeout=60)

    # --- the compute thread ---------------------------------------------------------------------------

    def _next_round(self) -> tuple[list[_Step], _Step | None] | None:
        with self._cond:
            while not (self._decodes or self._prefills or self._closed):
                self._cond.wait()
            deadline = monotonic() + self.gather_s
            while (not self._closed and len(self._decodes) < self.max_batch
                   and len(self._decodes) + len(self._prefills) < self._sequences):
                left = deadline - monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            if self._closed:
                return None
            batch, self._decodes = self._decodes[: self.max_batch], self._decodes[self.max_batch :]
            prefills: list[_Step] = []
            while self._prefills and (not prefills or sum(len(s.ids) for s in prefills) + len(self._prefills[0].ids)
                                      <= PREFILL_TOKENS):
                prefills.append(self._prefills.popleft())
            return batch, prefills

    def _loop(self) -> None:
        import numba

        numba.set_num_threads(self._threads)
        while True:
            work = self._next_round()
            if work is None:
                return
            self._run_round(*work)

    def _run_round(self, batch: list[_Step], prefills: list[_Step]) -> None:
        """One forward pass for every step of the round; if it fails, each step alone, so an
        error reaches only the step that caused it."""
        steps = batch + prefills
        self.rounds += bool(batch)
        self.batched_steps += len(batch)
        if len(steps) == 1:
            self._run_one(steps[0])
            return
        try:
            if prefills:
                logits = self.model.forward_many([s.ids for s in steps], [s.cache for s in steps],
                                                 last_only=[s.last_only for s in steps])
            else:
                logits = self.model.forward_batch(np.concatenate([s.ids for s in batch]), [s.cache for s in batch])
                logits = [logits[b : b + 1] for b in range(len(batch))]
        except Exception:  # noqa: BLE001 -- find the step that failed: each alone gets its own outcome
            for step in steps:
                self._run_one(step)
            return
        for step, step_logits in zip(steps, logits):
            step.finish(step_logits)

    def _run_one(self, step: _Step) -> None:
        try:
            step.finish(self.model.forward(step.ids, step.cache, last_only=step.last_only))
        except Exception as exc:  # noqa: BLE001 -- delivered to the generation that asked
            step.finish(error=exc)
