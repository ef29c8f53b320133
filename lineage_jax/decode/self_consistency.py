"""Self-consistency: sample several reasoning paths, answer with the most frequent final answer.

Wang et al. 2023 ("Self-Consistency Improves Chain of Thought Reasoning in Language Models", §2):
instead of one greedy chain of thought, sample k paths (temperature / top-k / top-p), parse each
path's final answer a_i, and return argmax_a sum_i 1[a_i = a] (the unweighted majority vote, their
best-performing aggregation alongside the probability-weighted sum). When a single sample is
right more often than any one wrong answer, the vote is right more often than a single sample.

Includes a tiny synthetic arithmetic task (``make_arithmetic_problems``) and ``extract_answer``
for "... = 19"-style completions, so a sampler can be scored end to end.
"""
from __future__ import annotations

import re
from collections import Counter
from typing import Callable, Hashable, Sequence

import numpy as np

__all__ = ["make_arithmetic_problems", "extract_answer", "majority_vote", "self_consistency"]


def make_arithmetic_problems(n: int, seed: int = 0, *, max_operand: int = 50,
                             ops: str = "+-*") -> list[tuple[str, int]]:
    """``n`` problems like ``("12+7=", 19)``: two operands in [0, max_operand], one operator from ``ops``."""
    rng = np.random.default_rng(seed)
    problems = []
    for _ in range(n):
        a, b = (int(v) for v in rng.integers(0, max_operand + 1, size=2))
        op = ops[int(rng.integers(len(ops)))]
        answer = {"+": a + b, "-": a - b, "*": a * b}[op]
        problems.append((f"{a}{op}{b}=", answer))
    return problems


_NUMBER = re.compile(r"-?\d+")


def extract_answer(text: str) -> int | None:
    """The final answer of a completion: the last integer after the last '=' (else the last
    integer in the text); None if there is none."""
    tail = text.rsplit("=", 1)[-1]
    found = _NUMBER.findall(tail) or _NUMBER.findall(text)
    return int(found[-1]) if found else None


def majority_vote(answers: Sequence[Hashable | None]) -> Hashable | None:
    """The most frequent answer; ``None`` (unparsable) answers do not vote.

    Ties go to the tied answer that appears first in ``answers`` (deterministic, and order-based
    rather than value-based, so it works for any hashable answer). Returns None if nothing voted.
    """
    votes = [a for a in answers if a is not None]
    if not votes:
        return None
    counts = Counter(votes)
    best = max(counts.values())
    return next(a for a in votes if counts[a] == best)


def self_consistency(sample_fn: Callable[[int], Hashable | None], k: int) -> Hashable | None:
    """Majority answer over ``k`` sampled paths; ``sample_fn(i)`` returns the i-th path's answer
    (it owns its randomness, e.g. ``jax.random.fold_in(key, i)``)."""
    if k < 1:
        raise ValueError(f"k={k}: must be >= 1")
    return majority_vote([sample_fn(i) for i in range(k)])
