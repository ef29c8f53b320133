r"""Learning-rate schedule: linear warmup then cosine decay, the teaching version.

Warmup (Goyal et al. 2017, "Accurate, Large Minibatch SGD"): Adam's second-moment estimate is
noisy for the first steps, and a large step then can wreck the initialisation; ramping the
learning rate linearly from 0 avoids that. Cosine decay (Loshchilov & Hutter 2017, SGDR,
here without restarts) then anneals smoothly from the peak to a floor::

    lr(s) = peak * s / W                                           for s <  W     (warmup)
    lr(s) = end + (peak - end) * (1 + cos(pi * min(s - W, D) / D)) / 2   for s >= W     (decay)

with ``W = warmup_steps`` and ``D = total_steps - W``: ``lr(0) = 0``, ``lr(W) = peak``,
``lr(s) = end`` for every ``s >= total_steps``. ``warmup_steps = 0`` starts at the peak.

Same values as ``optax.warmup_cosine_decay_schedule(init_value=0.0, peak_value=peak,
warmup_steps=W, decay_steps=total_steps, end_value=end)`` (which, like this, needs
``total_steps > warmup_steps``); production code uses optax (``lineage_jax.optim.make_schedule``).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def warmup_cosine(step, *, peak_lr: float, warmup_steps: int, total_steps: int,
                  end_lr: float = 0.0) -> jax.Array:
    """The learning rate at ``step`` (an int or an integer array; works under ``jit``)."""
    if not total_steps > warmup_steps >= 0:
        raise ValueError(f"warmup_cosine needs total_steps > warmup_steps >= 0, "
                         f"got total_steps={total_steps}, warmup_steps={warmup_steps}")
    s = jnp.asarray(step, jnp.float32)
    decay_steps = total_steps - warmup_steps
    warm = peak_lr * jnp.clip(s, 0, warmup_steps) / max(warmup_steps, 1)      # 0 -> peak, linearly
    t = jnp.clip(s - warmup_steps, 0, decay_steps)                             # decay steps done, held at D
    cosine = end_lr + (peak_lr - end_lr) * 0.5 * (1 + jnp.cos(jnp.pi * t / decay_steps))  # peak -> end
    return jnp.where(s < warmup_steps, warm, cosine)
