"""The rules of the sampling arguments, in one place: the CLI, the decode API and ``filters.sample``
all check through ``check``, so they accept and refuse the same values with the same message."""
from __future__ import annotations

import math
import numbers
from typing import Any, Callable

from lineage_jax.config.errors import UserError

__all__ = ["SamplingError", "check", "STRATEGIES"]

STRATEGIES = ("greedy", "sample", "beam")


class SamplingError(UserError, ValueError):
    """A sampling argument outside its rule, in one line: ``name=value: rule``."""

    def __init__(self, name: str, value: Any, rule: str):
        self.name, self.value, self.rule = name, value, rule
        super().__init__(f"{name}={value}: {rule}")

    def as_flag(self) -> str:
        """The same message with the argument spelled as its CLI flag (``top_p`` -> ``--top-p``)."""
        return f"--{self.name.replace('_', '-')}={self.value}: {self.rule}"


def _real(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def _int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _at_least_1(v) -> bool:
    return _int(v) and v >= 1


_AT_LEAST_1 = (_at_least_1, int, "must be at least 1")

# name -> (accepts, normalise, rule stated to the user)
RULES: dict[str, tuple[Callable[[Any], bool], Callable, str]] = {
    "temperature": (lambda v: _real(v) and v >= 0, float, "must be >= 0 and finite (0 = greedy)"),
    "top_k": (lambda v: _int(v) and v >= 0, int, "must be an integer >= 0 (0 = off)"),
    "top_p": (lambda v: _real(v) and 0 < v <= 1, float, "must be in (0, 1] (1 = off)"),
    "max_new_tokens": _AT_LEAST_1,
    "num_beams": _AT_LEAST_1,
    "num_samples": _AT_LEAST_1,
    "batch_size": _AT_LEAST_1,
    "block_size": _AT_LEAST_1,
    "gamma": (_at_least_1, int, "must be at least 1 (draft tokens proposed per target call)"),
    "strategy": (lambda v: v in STRATEGIES, str, f"allowed: {', '.join(STRATEGIES)}"),
    # ids >= vocab_limit are never drawn (a model.vocab_size padded past the tokenizer's); None = no limit
    "vocab_limit": (lambda v: v is None or _at_least_1(v), lambda v: None if v is None else int(v),
                    "must be None or an integer >= 1 (the tokenizer's vocabulary size)"),
}


def check(**values) -> dict:
    """Each named argument against its rule -> the values normalised (Python float / int / str).

    Raises ``SamplingError`` naming the first argument that breaks its rule.
    """
    out = {}
    for name, v in values.items():
        accepts, normalise, rule = RULES[name]
        if not accepts(v):
            raise SamplingError(name, v, rule)
        out[name] = normalise(v)
    return out
