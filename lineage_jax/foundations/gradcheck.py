"""Gradient checking: central finite differences and the relative error between two gradients.

    ∂f/∂θ_i ≈ (f(θ + h e_i) − f(θ − h e_i)) / 2h        error O(h²) + rounding O(ε_mach / h)

In float64 with h ≈ 1e-6 both terms are ≈ 1e-10 relative, so agreement to 1e-6 proves a gradient; in
float32 the rounding term alone is ≈ 1e-2, which is why these checks run in float64.
"""
from __future__ import annotations

from typing import Callable

import numpy as np


def flatten(tree) -> np.ndarray:
    """The leaves of a (nested) list/dict of arrays, in order, as one float64 vector."""
    if isinstance(tree, dict):
        return np.concatenate([flatten(tree[k]) for k in sorted(tree)]) if tree else np.zeros(0)
    if isinstance(tree, (list, tuple)):
        return np.concatenate([flatten(t) for t in tree]) if tree else np.zeros(0)
    return np.asarray(tree, dtype=np.float64).ravel()


def unflatten(vector: np.ndarray, like):
    """The inverse of ``flatten``: ``vector`` poured into the shapes of ``like``."""
    pos = [0]

    def pour(tree):
        if isinstance(tree, dict):
            return {k: pour(tree[k]) for k in sorted(tree)}
        if isinstance(tree, (list, tuple)):
            return type(tree)(pour(t) for t in tree)
        shape = np.shape(tree)
        n = int(np.prod(shape))
        out = vector[pos[0]:pos[0] + n].reshape(shape)
        pos[0] += n
        return out
    return pour(like)


def central_differences(f: Callable, params, h: float = 1e-6):
    """∂f/∂θ for every leaf of ``params`` by central differences (2 evaluations of f per parameter)."""
    theta = flatten(params)
    g = np.zeros_like(theta)
    for i in range(theta.size):
        up, down = theta.copy(), theta.copy()
        up[i] += h
        down[i] -= h
        g[i] = (float(f(unflatten(up, params))) - float(f(unflatten(down, params)))) / (2 * h)
    return unflatten(g, params)


def relative_error(a, b) -> float:
    """‖a − b‖ / max(‖a‖, ‖b‖, 1e-300) over all leaves: 0 when equal, ~1 when unrelated."""
    a, b = flatten(a), flatten(b)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(a), np.linalg.norm(b), 1e-300))
