r"""Adam and AdamW, the teaching versions: pure functions over pytrees.

Adam (Kingma & Ba 2015, Algorithm 1). With gradient :math:`g_t` at step :math:`t = 1, 2, \dots`::

    m_t     = b1 * m_{t-1} + (1 - b1) * g_t            # biased first moment (momentum)
    v_t     = b2 * v_{t-1} + (1 - b2) * g_t**2         # biased second moment (per-coordinate scale)
    m_hat_t = m_t / (1 - b1**t)                        # bias correction: m_0 = 0 pulls early m_t to 0
    v_hat_t = v_t / (1 - b2**t)
    theta_t = theta_{t-1} - lr_t * m_hat_t / (sqrt(v_hat_t) + eps)     # eps outside the sqrt

AdamW (Loshchilov & Hutter 2019, "Decoupled Weight Decay Regularization"). L2 regularisation adds
``lambda * theta`` to the *gradient*, so Adam then divides it by ``sqrt(v_hat)``: weights with large
gradients are barely regularised, and a weight with no gradient is pushed by ``lr * sign(theta)``.
AdamW instead applies the decay *outside* the adaptive step::

    theta_t = theta_{t-1} - lr_t * ( m_hat_t / (sqrt(v_hat_t) + eps) + lambda * theta_{t-1} )

i.e. every decayed weight shrinks by the factor ``(1 - lr_t * lambda)`` per step, independently of
its gradient history. (As in optax and PyTorch, the decay is multiplied by the full learning rate
``lr_t``, not only by the paper's schedule multiplier ``eta_t``.) A boolean ``mask`` pytree says which
leaves decay; biases, norm scales and embeddings are usually excluded.

The functions return *updates* (the signed step to add to the parameters), like optax, so
``params = jax.tree.map(jnp.add, params, updates)`` applies them. ``lr`` may be a number or a
schedule ``step -> lr``, evaluated at the step count *before* the increment (0 on the first
update), as optax's ``scale_by_learning_rate`` does. Production code uses ``optax.adamw`` (see
``lineage_jax.optim.make_optimizer``); ``tests/optim/test_optim.py`` proves these equal to it.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple, Union

import jax
import jax.numpy as jnp

PyTree = Any
LR = Union[float, Callable[[jax.Array], jax.Array]]


class AdamState(NamedTuple):
    count: jax.Array  # int32 scalar: number of updates done so far (t - 1 during update t)
    mu: PyTree        # m: first-moment estimate, like params
    nu: PyTree        # v: second-moment estimate, like params


def adamw_init(params: PyTree) -> AdamState:
    """``m_0 = 0``, ``v_0 = 0``, ``t = 0``."""
    zeros = lambda p: jnp.zeros_like(p)
    return AdamState(count=jnp.zeros([], jnp.int32),
                     mu=jax.tree.map(zeros, params),
                     nu=jax.tree.map(zeros, params))


adam_init = adamw_init


def _decay_mask(mask, params: PyTree) -> PyTree:
    """The mask as a pytree of Python bools shaped like ``params``.

    ``mask`` is None (decay everything), a pytree of bools with the structure of ``params`` or a
    prefix of it (a bool standing for a whole subtree), or a callable ``params -> such a pytree``.
    Its leaves must be static Python bools, as in ``optax.masked``.
    """
    if mask is None:
        return jax.tree.map(lambda _: True, params)
    if callable(mask):
        mask = mask(params)
    # For each mask leaf, repeat it over the params subtree it stands for.
    return jax.tree.map(lambda m, sub: jax.tree.map(lambda _: bool(m), sub), mask, params)


def adamw_update(grads: PyTree, state: AdamState, params: PyTree | None, *,
                 lr: LR, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
                 weight_decay: float = 0.0, mask=None) -> tuple[PyTree, AdamState]:
    """One AdamW step: ``(updates, new_state)``; add ``updates`` to ``params``.

    ``weight_decay=0`` gives plain Adam (``params`` may then be None).
    """
    t = state.count + 1                                          # this is update number t
    lr_t = lr(state.count) if callable(lr) else lr               # schedule at the pre-increment count
    mu = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, state.mu, grads)          # m_t
    nu = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * g**2, state.nu, grads)       # v_t
    mu_hat = jax.tree.map(lambda m: m / (1 - b1 ** t).astype(m.dtype), mu)          # m_hat_t
    nu_hat = jax.tree.map(lambda v: v / (1 - b2 ** t).astype(v.dtype), nu)          # v_hat_t
    step = jax.tree.map(lambda m, v: m / (jnp.sqrt(v) + eps), mu_hat, nu_hat)       # Adam direction
    if weight_decay:                                                                # + lambda * theta
        decays = _decay_mask(mask, params)
        step = jax.tree.map(lambda s, p, d: s + weight_decay * p if d else s, step, params, decays)
    updates = jax.tree.map(lambda s: -lr_t * s, step)                               # -lr_t * (...)
    return updates, AdamState(count=t, mu=mu, nu=nu)


def adam_update(grads: PyTree, state: AdamState, *, lr: LR, b1: float = 0.9, b2: float = 0.999,
                eps: float = 1e-8) -> tuple[PyTree, AdamState]:
    """Plain Adam (Kingma & Ba 2015): AdamW with no weight decay."""
    return adamw_update(grads, state, None, lr=lr, b1=b1, b2=b2, eps=eps, weight_decay=0.0)
