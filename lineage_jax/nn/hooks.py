"""The seams between a model and a parallel strategy: parameters and activations described by
logical axis names, and the hooks where an explicit (``shard_map``) form puts its collectives.

A model calls ``param`` for every weight and ``constrain`` / ``hooks()`` at the points a
Megatron/ZeRO diagram marks; the identities here are the one-device (or GSPMD) program.
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Axes = tuple[str | None, ...]


def _same(x, *_):
    return x


def _expert_out(buf: jax.Array) -> jax.Array:
    """GSPMD's return reshard of MoE buffers, experts -> tokens' groups, stated at both ends:
    pinning the expert layout first pins the cotangent there too, so the backward also
    reshards by all-to-all (with the group end alone GSPMD replicated the cotangent, then sliced it)."""
    buf = nn.with_logical_constraint(buf, ("expert_group", "expert", None, "embed"))
    return nn.with_logical_constraint(buf, ("batch", None, None, "embed"))


@dataclasses.dataclass(frozen=True)
class CollectiveHooks:
    """The seams where an explicit (``shard_map``) form puts its collectives; identities by default.

    The models call these at the points a Megatron/ZeRO diagram marks, described only by
    logical axis names; whoever installs them (``collective_hooks``) decides what each does.
    Default (GSPMD or one device): every hook is the identity and ``constrain`` is Flax's
    logical constraint, so the default program is unchanged.

    ``local_shape(shape, axes)``   a parameter's global shape -> its shape on this device at rest
    ``global_shape(shape, axes)``  an activation's per-device (compute) dims -> global dims
    ``param(w, axes)``             a parameter at rest -> in compute layout (ZeRO-3: all-gather)
    ``dense_in(x, kernel_axes, in_axes)``   input of a Dense (column-parallel: Megatron f / SP gather)
    ``dense_out(y, kernel_axes, in_axes)``  output of a Dense before its bias (row-parallel: g / SP scatter)
    ``embed(table, tokens)``       token embedding lookup (vocab-parallel)
    ``positions(table, T, ids)``   the position rows this device adds: rows 0 … T-1, or rows ``ids``
                                   [B, T] (packed documents restart); SP: its sequence shard
    ``index(n, name)``             global indices of this device's n entries of logical axis ``name``
    ``constrain(x, axes)``         activation sharding constraint
    ``expert_in(buf)``             MoE buffers [G, E, C, D] from their tokens' devices to their experts'
    ``expert_out(buf)``            ... and back (expert parallel: the two all-to-alls of GShard)
    """
    local_shape: Callable = lambda shape, axes: tuple(shape)
    global_shape: Callable = lambda shape, axes: tuple(shape)
    param: Callable = _same
    dense_in: Callable = _same
    dense_out: Callable = _same
    embed: Callable = lambda table, tokens: jnp.take(table, tokens, axis=0)
    positions: Callable = lambda table, T, ids=None: table[:T] if ids is None else jnp.take(table, ids, axis=0)
    index: Callable = lambda n, name: jnp.arange(n)
    constrain: Callable = lambda x, axes: nn.with_logical_constraint(x, axes)
    expert_in: Callable = lambda buf: nn.with_logical_constraint(buf, ("expert_group", "expert", None, "embed"))
    expert_out: Callable = _expert_out


_HOOKS: contextvars.ContextVar[CollectiveHooks] = contextvars.ContextVar("collective_hooks", default=CollectiveHooks())


def hooks() -> CollectiveHooks:
    """The hooks in force (identities unless inside ``collective_hooks``)."""
    return _HOOKS.get()


@contextlib.contextmanager
def collective_hooks(**fns):
    """Install hooks (fields of ``CollectiveHooks``) while tracing a model, e.g. inside a shard_map body."""
    token = _HOOKS.set(dataclasses.replace(_HOOKS.get(), **fns))
    try:
        yield
    finally:
        _HOOKS.reset(token)


def constrain(x: jax.Array, axes: Axes) -> jax.Array:
    """The models' one hook for activation sharding: logical names only, a no-op without rules."""
    return hooks().constrain(x, axes)


def param(module: nn.Module, name: str, init, shape: Sequence[int], dtype, axes: Axes) -> jax.Array:
    """``module.param`` with logical names, stored at rest (``local_shape``), used in compute layout."""
    h = hooks()
    w = module.param(name, nn.with_logical_partitioning(init, axes), h.local_shape(tuple(shape), axes), dtype)
    return constrain(h.param(w, axes), axes)
