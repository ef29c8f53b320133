"""Scoring a model on checked problems: greedy accuracy, self-consistency and pass@k.

``solve`` turns problems into completions through ``sample.sample`` in fixed-size chunks (one compile per
chunk shape); the rest are pure functions of the completions and the verifier (``arith.check``):

    accuracy      fraction of problems whose (first) completion's tagged answer is right
    vote_correct  self-consistency (Wang et al. 2023): the majority answer over k samples, unparsable ones not voting
    pass_at_k     Chen et al. 2021's unbiased estimator 1 − C(n−c, k) / C(n, k) from n samples with c correct
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import jax
import numpy as np

from lineage_jax.decode.self_consistency import majority_vote
from lineage_jax.reasoning import arith, sample


def solve(apply: Callable, params, problems: Sequence[arith.Problem], *, window: int, max_new: int, key: jax.Array,
          samples: int = 1, greedy: bool = True, temperature: float = 1.0, chunk: int = 256) -> list[list[str]]:
    """``samples`` completions per problem (greedy: one), decoded at most ``chunk`` prompts at a time."""
    prompts = [p.prompt for p in problems for _ in range(samples)]
    chunk = min(chunk, 1 << max(len(prompts) - 1, 1).bit_length())   # a power of two: few shapes, little padding
    out = []
    for start in range(0, len(prompts), chunk):
        part = prompts[start:start + chunk]
        padded = part + [part[-1]] * (chunk - len(part))       # one shape, one compile
        tokens, lengths = arith.encode_prompts(padded, window)
        key, sub = jax.random.split(key)
        res = sample.sample(apply, params, tokens, lengths, sub, max_new=max_new, end_id=arith.VOCAB.end_id,
                            temperature=temperature, greedy=greedy)
        out += sample.completions(arith.VOCAB, res, lengths)[:len(part)]
    return [out[i * samples:(i + 1) * samples] for i in range(len(problems))]


def correct(problems: Sequence[arith.Problem], completions: Sequence[Sequence[str]]) -> np.ndarray:
    """[N, k] bool: whether each sampled completion's tagged answer is right."""
    return np.array([[arith.check(p, c)["correct"] for c in cs] for p, cs in zip(problems, completions)])


def vote_correct(problems: Sequence[arith.Problem], completions: Sequence[Sequence[str]]) -> np.ndarray:
    """[N] bool: whether the majority answer over each problem's samples is right (self-consistency)."""
    return np.array([majority_vote([arith.parse_answer(c) for c in cs]) == p.answer
                     for p, cs in zip(problems, completions)])


def pass_at_k(n: int, c: int, k: int) -> float:
    """The probability that at least one of k samples drawn without replacement from n (c correct) is correct."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    return 1.0 if n - c < k else 1.0 - math.comb(n - c, k) / math.comb(n, k)


def by_size(problems: Sequence[arith.Problem], values: np.ndarray) -> dict[int, float]:
    """Mean of ``values`` [N] per problem size (digits or steps)."""
    sizes = np.array([p.size for p in problems])
    return {int(s): float(np.mean(values[sizes == s])) for s in sorted(set(sizes.tolist()))}
