"""Batch normalisation written out (Ioffe & Szegedy 2015, Alg. 1 and Alg. 2), its running statistics in both
libraries' conventions, and its cross-replica form.

Alg. 1, over the examples (and, for images, the spatial positions) of a mini-batch, per channel:

    μ_B = mean(x)     σ²_B = mean((x − μ_B)²)     x̂ = (x − μ_B) / √(σ²_B + ε)     y = γ x̂ + β

Alg. 2 replaces μ_B, σ²_B at inference by population estimates; both libraries keep exponential moving
averages, with *opposite* conventions for the momentum and different variances:

    flax   r ← m·r + (1 − m)·s,  s = the batch's biased σ²_B          (flax.linen.BatchNorm, m = 0.99 default)
    torch  r ← (1 − m)·r + m·s,  s = the unbiased n/(n − 1)·σ²_B      (torch.nn.BatchNorm*d, m = 0.1 default)

so flax momentum 0.9 is torch momentum 0.1, the running means agree, and the running variances differ by
the n/(n − 1) factor unless it is applied. Cross-replica BN (as in large-batch data parallelism, e.g.
``SyncBatchNorm``): each device averages its shard, then ``pmean`` over the data axis makes the moments
those of the global batch — exact for equal shard sizes.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

CONVENTIONS = ("flax", "torch")


def moments(x: jax.Array, axes: Sequence[int], axis_name: str | None = None) -> tuple[jax.Array, jax.Array]:
    """(μ_B, biased σ²_B) over ``axes``; with ``axis_name`` (inside shard_map/pmap) over every device's shard
    too: μ = pmean(mean x), σ² = pmean(mean (x − μ)²), two passes as in Alg. 1."""
    axes = tuple(axes)
    mean = x.mean(axes)
    if axis_name is not None:
        mean = jax.lax.pmean(mean, axis_name)
    var = ((x - _expand(mean, x, axes)) ** 2).mean(axes)
    if axis_name is not None:
        var = jax.lax.pmean(var, axis_name)
    return mean, var


def _expand(stat: jax.Array, x: jax.Array, axes) -> jax.Array:
    return jnp.expand_dims(stat, tuple(a % x.ndim for a in axes))


def normalize(x, mean, var, gamma, beta, axes: Sequence[int], eps: float = 1e-5) -> jax.Array:
    """y = γ (x − μ) / √(σ² + ε) + β, the statistics broadcast back over ``axes``."""
    mean, var = _expand(mean, x, axes), _expand(var, x, axes)
    return gamma * (x - mean) * jax.lax.rsqrt(var + eps) + beta


def train(x, gamma, beta, axes: Sequence[int], eps: float = 1e-5, axis_name: str | None = None):
    """Alg. 1 in training: (y, μ_B, σ²_B) with the batch's own statistics."""
    mean, var = moments(x, axes, axis_name)
    return normalize(x, mean, var, gamma, beta, axes, eps), mean, var


def update_running(running_mean, running_var, mean, var, n: int, momentum: float, convention: str = "flax"):
    """One step of the moving averages, ``n`` = examples per statistic (batch × spatial positions)."""
    if convention == "flax":
        return momentum * running_mean + (1 - momentum) * mean, momentum * running_var + (1 - momentum) * var
    if convention == "torch":
        unbiased = var * n / max(n - 1, 1)
        return (1 - momentum) * running_mean + momentum * mean, (1 - momentum) * running_var + momentum * unbiased
    raise ValueError(f"convention {convention!r}: unknown; allowed: {', '.join(CONVENTIONS)}")
