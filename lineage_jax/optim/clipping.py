r"""Gradient clipping by global norm (Pascanu, Mikolov & Bengio 2013), the teaching version.

Exploding gradients show up as rare steps whose gradient is orders of magnitude larger than
usual. Rescaling the *whole* gradient (all leaves together) when its norm passes a threshold
keeps its direction and bounds the step::

    ||g|| = sqrt( sum over every leaf and element of g**2 )
    g     <- g                      if ||g|| <  max_norm
    g     <- g * max_norm / ||g||   otherwise

Same semantics as ``optax.clip_by_global_norm`` (optax 0.2.x): the test is the strict
``norm < max_norm``, the clipped branch computes ``(g / norm) * max_norm`` in that order, and the
choice is a select, so an all-zero gradient (norm 0 < max_norm) passes through untouched
rather than producing 0/0. Production code uses optax; ``tests/optim/test_optim.py`` proves
these equal to it.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

PyTree = Any


def global_norm(tree: PyTree) -> jax.Array:
    """The L2 norm of all leaves taken together, as if flattened into one vector."""
    return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree)))


def clip_by_global_norm(grads: PyTree, max_norm: float) -> tuple[PyTree, jax.Array]:
    """``(clipped_grads, norm)``: rescale ``grads`` so its global norm is at most ``max_norm``.

    ``norm`` is the global norm *before* clipping (what training logs as ``grad_norm``).
    """
    norm = global_norm(grads)
    keep = norm < max_norm                                        # small enough: leave as is
    clipped = jax.tree.map(lambda g: jnp.where(keep, g, (g / norm.astype(g.dtype)) * max_norm), grads)
    return clipped, norm
