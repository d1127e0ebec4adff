"""The bounds of every checked generation option, in one table used by the API and the CLI alike.

`OPTION_BOUNDS` maps each option name (temperature, top_p, ..., max_new_tokens, context_size,
threads, logprobs, cache_type) to a `Bound`: int or float, an optional low end (open or closed) and high
end; or to a `Choice` of strings (cache_type: "f32", "f16" or "q8"). `check_option(name, value,
label)` returns the value when it is within its bound (a float option takes any finite int or
float, an int option any int, never a bool; a choice exactly one of its strings) and otherwise
raises one `TinyExaoneError` line: "invalid value for LABEL: VALUE (must be ...)", where LABEL is
the option's name in the API or its flag in the CLI. `SamplingParams`, `generation.make_options`
and the CLI's flags all check through here, so they cannot disagree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .errors import TinyExaoneError


@dataclass(frozen=True)
class Bound:
    kind: type  # int or float
    low: float | None = None
    high: float | None = None
    low_open: bool = False  # the low end itself is excluded
    tiny: float = 0.0  # a positive value below this is refused (subnormal temperatures overflow)

    def describe(self) -> str:
        if self.tiny:  # (0 or) a value from `tiny` up
            zero = "0 or " if self.low == 0 and not self.low_open else ""
            return f"{zero}{Bound(self.kind, self.tiny, self.high).describe()}"
        if self.low is None and self.high is None:
            return "any value"
        if self.low is not None and self.high is not None:
            return f"in {'(' if self.low_open else '['}{self.low}, {self.high}]"
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {self.low}"
        return f"<= {self.high}"

    def admits(self, value) -> bool:
        if isinstance(value, (bool, np.bool_)):
            return False
        kinds = (int, np.integer) if self.kind is int else (int, float, np.integer, np.floating)
        if not isinstance(value, kinds) or (self.kind is float and not math.isfinite(value)):
            return False
        too_low = self.low is not None and (value <= self.low if self.low_open else value < self.low)
        return not too_low and not (self.high is not None and value > self.high) and not 0 < value < self.tiny


@dataclass(frozen=True)
class Choice:
    values: tuple[str, ...]

    def describe(self) -> str:
        return "one of " + ", ".join(self.values)

    def admits(self, value) -> bool:
        return isinstance(value, str) and value in self.values


OPTION_BOUNDS = {
    "temperature": Bound(float, 0, tiny=1e-6),  # 0 = greedy
    "top_k": Bound(int, 0),  # 0 = off
    "top_p": Bound(float, 0, 1, low_open=True),  # 1 = off
    "min_p": Bound(float, 0, 1),  # 0 = off
    "presence_penalty": Bound(float, -2, 2),  # OpenAI's range
    "frequency_penalty": Bound(float, -2, 2),
    "repetition_penalty": Bound(float, 0, low_open=True, tiny=1e-6),  # 1 = off
    "seed": Bound(int, 0),
    "max_new_tokens": Bound(int, 1),
    "reasoning_budget": Bound(int, 0),
    "context_size": Bound(int, 1),
    "threads": Bound(int, 1),  # Numba threads (the CLI's --threads)
    "cache_type": Choice(("f32", "f16", "q8")),  # the KV cache's element type (cache.CODE_DTYPES)
    "logprobs": Bound(int, 0, 20),  # alternatives listed per token (OpenAI's top_logprobs range)
}


def check_option(name: str, value, label: str | None = None, shown: str | None = None):
    """`value` if it is within OPTION_BOUNDS[name], else a one-line TinyExaoneError naming `label`
    (default: the option's name) and showing `shown` (default: repr of the value)."""
    bound = OPTION_BOUNDS[name]
    if bound.admits(value):
        return value
    right_kind = isinstance(bound, Choice) or Bound(bound.kind).admits(value)
    kind = "" if right_kind else "an integer " if bound.kind is int else "a finite number "
    shown = repr(value)[:40] if shown is None else shown
    raise TinyExaoneError(f"invalid value for {label or name}: {shown} (must be {kind}{bound.describe()})")
