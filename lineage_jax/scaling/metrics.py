"""Metrics of a multi-token answer, the nonlinear one and its smooth relatives (Schaeffer, Miranda &
Koyejo 2023, "Are Emergent Abilities of Large Language Models a Mirage?").

Exact match scores an L-token answer 1 only if every token is right: if each is right with
probability p, it is ~p^L, which stays near 0 until p is near 1 and then rises steeply: an
"emergent" jump (Wei et al. 2022) made by the metric. Per-token accuracy, token edit distance and
the answer's per-token log-likelihood move with p itself, smoothly.
"""
from __future__ import annotations

import numpy as np


def exact_match(pred, target) -> np.ndarray:
    """[B] 1.0 where the whole predicted answer [B, L] equals the target."""
    return np.all(np.asarray(pred) == np.asarray(target), axis=-1).astype(float)


def token_accuracy(pred, target) -> np.ndarray:
    """[B] fraction of the answer's positions predicted right."""
    return np.mean(np.asarray(pred) == np.asarray(target), axis=-1)


def edit_distance(a, b) -> int:
    """Levenshtein distance between two token sequences (insertions, deletions, substitutions)."""
    a, b = list(a), list(b)
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


def token_edit_distance(pred, target) -> np.ndarray:
    """[B] edit distance of each predicted answer from its target (Schaeffer et al.'s linear metric)."""
    return np.array([edit_distance(p, t) for p, t in zip(np.asarray(pred), np.asarray(target))], float)


def answer_log_likelihood(logits, target) -> np.ndarray:
    """[B] mean over the answer's tokens of log p(target token | the right prefix), teacher-forced;
    ``logits`` [B, L, V] are the predictions of the L answer tokens."""
    logits = np.asarray(logits, np.float64)
    m = logits.max(-1, keepdims=True)
    logp = logits - m - np.log(np.exp(logits - m).sum(-1, keepdims=True))
    return np.take_along_axis(logp, np.asarray(target)[..., None], -1)[..., 0].mean(-1)


def independent_exact_match(per_position_accuracy) -> float:
    """Exact match if positions erred independently: the product of per-position accuracies (p^L)."""
    return float(np.prod(per_position_accuracy))
