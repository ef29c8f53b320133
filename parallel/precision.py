"""Mixed-precision policies and functional dynamic loss scaling.

After Micikevicius et al. 2018, "Mixed Precision Training" (ICLR):

* §3.1 keeps an FP32 *master copy* of the weights: the optimizer reads and writes f32,
  only the forward/backward runs in the low-precision compute dtype.
* §3.2 *loss scaling*: activation gradients of small magnitude fall below FP16's
  smallest subnormal (2^-24 ≈ 6e-8) and flush to zero. Multiplying the loss by S
  multiplies every backpropagated gradient by S (chain rule), lifting them into range;
  the weight gradients are divided by S in f32 before the update::

      g = (1/S) · ∇_θ (S · L(θ))        # same value as ∇_θ L, computed without underflow

  If S is too large the scaled gradients overflow to inf/nan; that step's update is
  skipped and S is reduced.
* §3.3 accumulates reductions (e.g. the loss) in f32.

bfloat16 has float32's exponent range, so it needs no loss scaling (S = 1).

This module knows dtypes only; it never imports the models.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

PRECISIONS = ("fp32", "bf16", "fp16")


def _cast_floating(tree: Any, dtype) -> Any:
    """Cast the floating leaves of ``tree`` to ``dtype``; integer/bool leaves are untouched."""
    def cast(x):
        return x.astype(dtype) if jnp.issubdtype(jnp.result_type(x), jnp.floating) else x
    return jax.tree.map(cast, tree)


@dataclasses.dataclass(frozen=True)
class Policy:
    """The three dtypes of mixed precision named in one object.

    ``param_dtype``: how parameters are stored (the f32 master weights of §3.1); the
    optimizer state lives in this dtype too, so moments and updates are always f32.
    ``compute_dtype``: what the forward and backward pass run in.
    ``output_dtype``: what results (logits, loss, gradients) are handed back in.
    """
    param_dtype: Any
    compute_dtype: Any
    output_dtype: Any

    def cast_to_param(self, tree: Any) -> Any:
        return _cast_floating(tree, self.param_dtype)

    def cast_to_compute(self, tree: Any) -> Any:
        return _cast_floating(tree, self.compute_dtype)

    def cast_to_output(self, tree: Any) -> Any:
        return _cast_floating(tree, self.output_dtype)


_POLICIES = {
    "fp32": Policy(jnp.float32, jnp.float32, jnp.float32),
    "bf16": Policy(jnp.float32, jnp.bfloat16, jnp.float32),
    "fp16": Policy(jnp.float32, jnp.float16, jnp.float32),
}


def policy_for(name: str) -> Policy:
    """``fp32`` | ``bf16`` | ``fp16`` -> Policy (params and output f32 in all three)."""
    if name not in _POLICIES:
        raise ValueError(f"unknown precision {name!r}; allowed: {', '.join(PRECISIONS)}")
    return _POLICIES[name]


# ----------------------------------------------------------------------------- loss scaling

@struct.dataclass
class LossScale:
    """Loss-scale state, a pytree that rides along in the train state.

    ``scale``: f32 scalar S. ``good_steps``: int32 finite steps since the last change of S.
    ``skipped``: int32 total overflowed (skipped) updates, for metrics.
    ``dynamic`` (static, not a leaf): False for a fixed scale, which ``adjust`` never moves.

    Design: there is no ``None`` case. fp32/bf16 use ``static_loss_scale(1.0)``; multiplying
    and dividing by exactly 1.0 is bitwise the identity, so one train step serves all policies.
    """
    scale: jax.Array
    good_steps: jax.Array
    skipped: jax.Array
    dynamic: bool = struct.field(pytree_node=False, default=True)


def _state(scale: float, dynamic: bool) -> LossScale:
    return LossScale(jnp.asarray(scale, jnp.float32), jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32),
                     dynamic=dynamic)


def loss_scale_init(init_scale: float = 2.0 ** 15) -> LossScale:
    """A dynamic loss scale starting at ``init_scale`` (2^15, as in the paper's 8 .. 32K range)."""
    return _state(init_scale, dynamic=True)


def static_loss_scale(scale: float = 1.0) -> LossScale:
    """A fixed loss scale; 1.0 is the no-op used for fp32 and bf16."""
    return _state(scale, dynamic=False)


def loss_scale_for(precision: str, init_scale: float = 2.0 ** 15) -> LossScale:
    """Dynamic scaling for fp16, the static no-op scale for fp32 and bf16."""
    policy_for(precision)   # validates the name
    return loss_scale_init(init_scale) if precision == "fp16" else static_loss_scale(1.0)


def scale_loss(loss: jax.Array, ls: LossScale) -> jax.Array:
    """S · L, formed in f32 (§3.3); differentiate this instead of L."""
    return loss.astype(jnp.float32) * ls.scale


def unscale(grads: Any, ls: LossScale) -> Any:
    """g / S for every floating leaf, in f32: the master-weight gradients of §3.1."""
    inv = 1.0 / ls.scale
    return jax.tree.map(lambda g: g.astype(jnp.float32) * inv
                        if jnp.issubdtype(g.dtype, jnp.floating) else g, grads)


def all_finite(tree: Any) -> jax.Array:
    """A bool scalar: True iff no leaf holds an inf or nan (True for an empty tree)."""
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def adjust(ls: LossScale, finite: jax.Array, *, period: int = 2000, factor: float = 2.0,
           min_scale: float = 1.0) -> LossScale:
    """One step of the dynamic loss-scale schedule; pure and jit-able.

    finite:     good_steps += 1; when it reaches ``period``: S *= factor, good_steps = 0
                (growth is dropped if S · factor would overflow f32).
    overflowed: S = max(S / factor, min_scale), good_steps = 0, skipped += 1.

    §3.2 gives the back-off-and-skip rule; the periodic growth is the dynamic schedule of
    NVIDIA Apex (and PyTorch's GradScaler): probe a larger S after ``period`` clean steps.
    ``jmp``'s dynamic scale keeps the same two branches as an immutable object without a
    skip counter; here the state is a plain pytree and ``skipped`` is counted for metrics.
    A static ``LossScale`` does the same bookkeeping but its S never moves.
    """
    finite = jnp.asarray(finite, bool)
    good = ls.good_steps + 1
    grow = good >= period
    grown = ls.scale * factor
    grown = jnp.where(grow & jnp.isfinite(grown), grown, ls.scale)
    shrunk = jnp.maximum(ls.scale / factor, jnp.float32(min_scale))
    scale = jnp.where(finite, grown, shrunk) if ls.dynamic else ls.scale
    return LossScale(scale=scale.astype(jnp.float32),
                     good_steps=jnp.where(finite & ~grow, good, 0).astype(jnp.int32),
                     skipped=(ls.skipped + jnp.where(finite, 0, 1)).astype(jnp.int32),
                     dynamic=ls.dynamic)


def select_update(finite: jax.Array, new_tree: Any, old_tree: Any) -> Any:
    """``new_tree`` where the step was finite, else ``old_tree`` bitwise: the skipped update."""
    return jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_tree, old_tree)
