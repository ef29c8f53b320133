"""The explicit form's named operators: every byte that crosses devices, written out.

Each runs inside ``jax.shard_map``; the communicating ones are ``jax.custom_vjp`` operators
whose forward and backward collectives are exactly those the paper draws. Costs are per
device, for an array of V bytes (its full, unsharded size) over an axis of n devices (ring):

    all-gather, reduce-scatter:  V·(n−1)/n        all-reduce:  2V·(n−1)/n

================================  =======================  ========================  =============
operator                          forward                  backward                  paper
================================  =======================  ========================  =============
``megatron_f``                    identity                 all-reduce                Megatron f
``megatron_g``                    all-reduce               identity                  Megatron g
``sp_gather``                     all-gather (sequence)    reduce-scatter            Korthikanti g
``sp_scatter``                    reduce-scatter (seq.)    all-gather                Korthikanti ḡ
``zero3_gather``                  all-gather (parameter)   reduce-scatter (grad)     ZeRO-3 / FSDP
``dp_mean_grads``                 all-reduce (gradient)    —                         data parallel
``vocab_parallel_embed``          g: all-reduce [B,T,D]    none                      Megatron §3
``vocab_parallel_cross_entropy``  3 all-reduces [B,T]      none                      Megatron §3
``expert_dispatch``               all-to-all (to experts)  all-to-all (back)         GShard §2.3
``expert_return``                 all-to-all (back)        all-to-all (to experts)   GShard §2.3
================================  =======================  ========================  =============

All-to-all over n devices, per device, for a buffer of V bytes held by that device: it keeps
1/n and sends V·(n−1)/n (and receives as much).

``check_vma`` (jax 0.10). With ``shard_map(check_vma=True)`` JAX types each value as varying
or invariant across each mesh axis and transposes by type: ``psum`` to a free cast, and the
implicit cast of an invariant value used with a varying one to a ``psum``. So Megatron's f
and g, and the data-parallel gradient sum, are already implicit in the types. With
``check_vma=False`` JAX knows no types: ``psum`` transposes to ``psum`` (gradients n times
too large), and ``shard_map``'s own transpose divides replicated outputs' cotangents by n and
psums replicated inputs' cotangents. We therefore use the explicit form: ``check_vma=False``
and ``jax.grad`` taken *inside* the ``shard_map`` body, so JAX inserts nothing and every
collective in the compiled step is one written here. The custom-VJP operators also hold under
``check_vma=True`` (their ``pcast(.., to="varying")`` moves no bytes and is a no-op when
``check_vma=False``); ``dp_mean_grads`` does not: there the gradient arrives already summed.

Each operator runs under a ``jax.named_scope`` of its own name, so its collectives carry it in
the compiled HLO's ``op_name`` metadata (``.../megatron_f/psum``, backward
``.../transpose(jvp(megatron_f))/psum``) and in profiles.

Never imports lineage_jax.
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jax import lax
from jax.flatten_util import ravel_pytree

Axis = str | tuple[str, ...]


def _scoped(op):
    """``op`` under a named scope of its own name: forward and backward ops are labelled by it."""
    return jax.named_scope(op.__name__)(op)


def _vary(x, axis: Axis):
    """Cast a device-invariant value to device-varying: a type change, no bytes moved."""
    return lax.pcast(x, axis, to="varying")


# --- Megatron-LM tensor parallelism (Shoeybi et al. 2019, §3, Fig. 3) -----------------------

@partial(jax.custom_vjp, nondiff_argnums=(1,))
def megatron_f(x, axis: Axis):
    """Megatron's f (§3, Fig. 3a/b): identity forward, all-reduce backward.

    At the input of a column-parallel block (``X · W[D, F_n]``): each device's slice of the
    block adds a partial dX, summed in the backward pass. Cost: 0 forward, 2·V_x·(n−1)/n back.
    """
    return _vary(x, axis)


def _f_fwd(x, axis):
    return _vary(x, axis), None


def _f_bwd(axis, _, dy):
    return (lax.psum(dy, axis),)


megatron_f.defvjp(_f_fwd, _f_bwd)
megatron_f = _scoped(megatron_f)


@partial(jax.custom_vjp, nondiff_argnums=(1,))
def megatron_g(x, axis: Axis):
    """Megatron's g (§3, Fig. 3a/b): all-reduce forward, identity backward.

    At the output of a row-parallel block (``Y[.., F_n] · W[F_n, D]``), summing the partial
    products. Cost: 2·V_y·(n−1)/n forward, 0 backward.
    """
    return lax.psum(x, axis)


def _g_fwd(x, axis):
    return lax.psum(x, axis), None


def _g_bwd(axis, _, dy):
    return (_vary(dy, axis),)


megatron_g.defvjp(_g_fwd, _g_bwd)
megatron_g = _scoped(megatron_g)


# --- Megatron sequence parallelism (Korthikanti et al. 2022, §4.2.2) -------------------------

@partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def sp_gather(x, axis: Axis, dim: int):
    """Korthikanti's g (§4.2.2): all-gather the sequence shards forward, reduce-scatter back.

    Replaces f at a column-parallel block's input: X[B, T_n, D] → X[B, T, D].
    Cost: V·(n−1)/n forward and V·(n−1)/n backward, V the gathered [B, T, D] bytes —
    together the 2V·(n−1)/n of the all-reduce it replaces.
    """
    return lax.all_gather(x, axis, axis=dim, tiled=True)


def _spg_fwd(x, axis, dim):
    return lax.all_gather(x, axis, axis=dim, tiled=True), None


def _spg_bwd(axis, dim, _, dy):
    return (lax.psum_scatter(dy, axis, scatter_dimension=dim, tiled=True),)


sp_gather.defvjp(_spg_fwd, _spg_bwd)
sp_gather = _scoped(sp_gather)


@partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def sp_scatter(x, axis: Axis, dim: int):
    """Korthikanti's ḡ (§4.2.2): reduce-scatter to sequence shards forward, all-gather back.

    Replaces g at a row-parallel block's output: partial Y[B, T, D] → summed Y[B, T_n, D].
    Cost: V·(n−1)/n forward and V·(n−1)/n backward, V the full [B, T, D] bytes.
    """
    return lax.psum_scatter(x, axis, scatter_dimension=dim, tiled=True)


def _sps_fwd(x, axis, dim):
    return lax.psum_scatter(x, axis, scatter_dimension=dim, tiled=True), None


def _sps_bwd(axis, dim, _, dy):
    return (lax.all_gather(dy, axis, axis=dim, tiled=True),)


sp_scatter.defvjp(_sps_fwd, _sps_bwd)
sp_scatter = _scoped(sp_scatter)


# --- ZeRO-3 / FSDP (Rajbhandari et al. 2020, §5.3) --------------------------------------------

@partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def zero3_gather(w_shard, axis: Axis, dim: int = 0):
    """ZeRO-3 (§5.3): all-gather a layer's parameter where it runs; reduce-scatter its gradient.

    The full parameter lives only while its layer runs; each device keeps only its gradient
    shard, already summed over the devices' batches. Cost per parameter of Ψ bytes:
    Ψ·(n−1)/n forward, Ψ·(n−1)/n backward for the gradient, and Ψ·(n−1)/n more when the
    backward pass gathers anew — 3Ψ·(n−1)/n in all against data parallel's 2Ψ·(n−1)/n.
    Gathering anew is ZeRO-3's choice; in JAX wrap the layer in ``jax.checkpoint``, else
    autodiff keeps every layer's gathered parameter alive until the backward pass.
    """
    return lax.all_gather(w_shard, axis, axis=dim, tiled=True)


def _z3_fwd(w_shard, axis, dim):
    return lax.all_gather(w_shard, axis, axis=dim, tiled=True), None


def _z3_bwd(axis, dim, _, dw):
    return (lax.psum_scatter(dw, axis, scatter_dimension=dim, tiled=True),)


zero3_gather.defvjp(_z3_fwd, _z3_bwd)
zero3_gather = _scoped(zero3_gather)


# --- Data parallel -------------------------------------------------------------------------

@_scoped
def dp_mean_grads(grads, axes: Axis, flat: bool = True):
    """Data parallel: the mean of every device's gradient, an all-reduce over the data axes.

    ``flat=True`` concatenates the tree into one vector and all-reduces it once (one bucket,
    as PyTorch DDP buckets), so the gradient traffic is the parameter bytes Ψ exactly once:
    2Ψ·(n−1)/n per device. Leaves are promoted to one dtype for the trip. ``flat=False``
    issues one all-reduce per leaf (XLA may combine them). Explicit form (``check_vma=False``)
    only: with ``check_vma=True`` JAX has already summed a replicated parameter's gradient.
    """
    if not flat:
        return jax.tree.map(lambda g: lax.pmean(g, axes), grads)
    vec, unravel = ravel_pytree(grads)
    return unravel(lax.pmean(vec, axes))


# --- Vocab-parallel embedding and cross-entropy (Megatron §3) ---------------------------------

# --- GShard expert parallelism (Lepikhin et al. 2021, §2.3) ---------------------------------

@_scoped
def expert_dispatch(buf, axis: Axis):
    """Send each expert's rows to the device holding that expert (GShard's first AllToAll).

    ``buf`` [G, E, C, D]: this device's G token groups, already laid out per expert (E experts,
    C capacity slots). Expert e lives on device e // (E/n) of ``axis``. The all-to-all splits E
    into n chunks, sends chunk j to device j and stacks what arrives along the group axis:
    [n·G, E/n, C, D], every group of the axis for this device's experts. Its transpose (the
    backward pass) is the reverse all-to-all, ``expert_return``'s forward. Sends G·E·C·D·(n−1)/n.
    """
    return lax.all_to_all(buf, axis, split_axis=1, concat_axis=0, tiled=True)


@_scoped
def expert_return(buf, axis: Axis):
    """The inverse of ``expert_dispatch``: [n·G, E/n, C, D] expert outputs -> [G, E, C, D] back
    on the device that owns the tokens (GShard's second AllToAll). Sends as many bytes as the
    dispatch."""
    return lax.all_to_all(buf, axis, split_axis=0, concat_axis=1, tiled=True)


def _vocab_range(n_local: int, axis: Axis):
    """This device's ids [start, stop): shard i of the vocabulary holds ids i·V_n … (i+1)·V_n − 1."""
    start = lax.axis_index(axis) * n_local
    return start, start + n_local


@_scoped
def vocab_parallel_embed(tokens, table_shard, axis: Axis):
    """Megatron §3: embedding table split by rows E[V_n, D]; look up, then Megatron's g.

    Each device returns rows for the ids in its vocabulary range and zeros elsewhere; the
    all-reduce adds the one non-zero row per token. Cost: 2·V_x·(n−1)/n, V_x = [B, T, D] bytes.
    """
    start, stop = _vocab_range(table_shard.shape[0], axis)
    mine = (tokens >= start) & (tokens < stop)
    rows = jnp.take(table_shard, jnp.where(mine, tokens - start, 0), axis=0)
    return megatron_g(jnp.where(mine[..., None], rows, 0), axis)


@_scoped
def vocab_parallel_cross_entropy(logits_shard, targets, axis: Axis):
    """Megatron §3: softmax cross-entropy over logits split by vocabulary, [.., V_n] per device.

    ``−log softmax(z)[y] = log Σ_v exp(z_v − m) − (z_y − m)`` with the global max m by
    all-reduce(max), Σ exp by all-reduce(sum), z_y by a masked local pick + all-reduce(sum).
    Three all-reduces of [B, T] floats — 3·2·4BT·(n−1)/n bytes, never the B·T·V logits.
    Returns the per-token loss [..]; differentiable through ``megatron_g``.
    """
    start, stop = _vocab_range(logits_shard.shape[-1], axis)
    m = lax.pmax(lax.stop_gradient(jnp.max(logits_shard, axis=-1)), axis)
    z = logits_shard - m[..., None]
    sum_exp = megatron_g(jnp.sum(jnp.exp(z), axis=-1), axis)
    mine = (targets >= start) & (targets < stop)
    z_y = jnp.take_along_axis(z, jnp.where(mine, targets - start, 0)[..., None], axis=-1)[..., 0]
    return jnp.log(sum_exp) - megatron_g(jnp.where(mine, z_y, 0.0), axis)
