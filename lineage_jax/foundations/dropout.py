"""Inverted dropout and the key it draws from (Srivastava, Hinton, Krizhevsky, Sutskever & Salakhutdinov 2014).

The paper (§4, eq. for r_j^(l) ~ Bernoulli(p)) keeps each unit with probability p and, at test time, scales
the weights by p. *Inverted* dropout moves the scaling to training, so the test-time network is the plain one:

    train:  ỹ = m ⊙ y / p,   m_j ~ Bernoulli(p),  p = 1 − rate        E[ỹ] = y
    test:   ỹ = y

The mask is a pure function of a key: the key is a value in the train state, folded with the step number
(a new mask every step) and, inside a ``shard_map``, with the device's index on the data axis (a different
mask for every device's examples). Nothing is hidden in a global generator, so a step can be replayed.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def dropout(key: jax.Array, x: jax.Array, rate: float, deterministic: bool = False) -> jax.Array:
    """m ⊙ x / (1 − rate) with m ~ Bernoulli(1 − rate) drawn from ``key``; x itself when deterministic.
    Draws the mask as ``flax.linen.Dropout`` does (``bernoulli(key, 1 − rate, x.shape)``), so the two agree
    bit for bit given the same key."""
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"dropout rate {rate}: must be in [0, 1]")
    if deterministic or rate == 0.0:
        return x
    if rate == 1.0:
        return jnp.zeros_like(x)
    keep = 1.0 - rate
    mask = jax.random.bernoulli(key, keep, x.shape)
    return jnp.where(mask, x / keep, jnp.zeros_like(x))


def step_key(key: jax.Array, step, axis_name: str | None = None) -> jax.Array:
    """The key of one step: fold_in(key, step), then fold_in(·, device index on ``axis_name``) when given
    (call it inside ``shard_map``)."""
    key = jax.random.fold_in(key, step)
    if axis_name is not None:
        key = jax.random.fold_in(key, jax.lax.axis_index(axis_name))
    return key
