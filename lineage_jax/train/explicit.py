"""``parallel.form=shard_map``: the whole train step as one ``jax.shard_map`` over the mesh.

The same Flax GPT runs inside the body on this device's shards. The model is told nothing of
meshes: it calls the identity hooks of ``lineage_jax.nn.hooks.CollectiveHooks`` at the
points a Megatron/ZeRO diagram marks, and this module installs hooks that put one of
parallel/collectives.py's operators there, decided from the strategy's rule tables and the
hook's logical axis names:

=====================================  ======================================================
hook                                   explicit form
=====================================  ======================================================
parameter read (``param``)             ZeRO-3: ``zero3_gather`` over the axes sharding it at
                                       rest only (data × fsdp), per layer inside the scan
column-parallel input (``dense_in``)   ``megatron_f``; with SP ``sp_gather`` (sequence)
row-parallel output (``dense_out``)    ``megatron_g``; with SP ``sp_scatter`` (sequence)
token embedding (``embed``)            ``vocab_parallel_embed``; with SP a masked local lookup
                                       + ``sp_scatter`` (so each device keeps its sequence)
positions / vocab ids (``index``)      this device's slice (``axis_index``); no bytes
MoE buffers (``expert_in/out``)        ``expert_dispatch`` / ``expert_return``: all-to-all over
                                       the expert axis, to the experts' devices and back
loss (here, not in the model)          ``vocab_parallel_cross_entropy`` on vocab-sharded logits
=====================================  ======================================================

``jax.value_and_grad`` is taken inside the body (``check_vma=False``: JAX inserts nothing),
so every collective of the step is written here or in parallel/collectives.py. After the
backward pass the gradients are reduced explicitly, per leaf, from the rule tables:

* leaves gathered by ``zero3_gather`` arrive reduce-scattered (summed) over ZeRO's axes
  (every live one of data × fsdp, as the rule tables say): divide;
* expert weights, sharded over the expert axis (a batch axis too), arrive summed over it
  (each device's experts served every device's tokens; the all-to-all's transpose brought
  their cotangents home): divide;
* ZeRO-2 leaves are reduce-scattered over those axes here (``lax.psum_scatter``);
* the rest is averaged over the remaining data axes with ``dp_mean_grads`` (one flat
  bucket, so DP moves the parameter bytes once);
* with sequence parallelism, parameters replicated over tensor (norms, row-parallel biases,
  positions) were used on sequence shards only: their gradients are summed over tensor too.

Clipping: optax's ``clip_by_global_norm`` would see only this device's shards, so the step
clips by hand with the *global* norm (per-leaf squared norms, each divided by the number of
devices holding a copy, all-reduced once: replicated leaves count once) — the same formula
as optax — and then runs the configured optimizer built without its clip
(``make_optimizer(clip_norm=0)``), on the configured chain's state less the clip's entry, which
``clip_slot`` finds by structure wherever the chain puts the clip.
The update is applied to this device's optimizer-state shard (ZeRO-1/2: slice the gradient
and parameter, update, all-gather the new parameter).

Not covered: dropout (every device would draw the same mask for its shard; the result is
not the single-device one), fp16 is handled (overflow checks are all-reduced) but untested.

Wiring: ``setup.compile_all`` compiles ``make_explicit_train_step(setup)`` in place of the
GSPMD step when ``cfg.parallel.form == "shard_map"``.
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import optax
from jax import lax
from jax.flatten_util import ravel_pytree
from jax.sharding import PartitionSpec as P

from lineage_jax.nn import collective_hooks
from lineage_jax.optim import make_optimizer
from lineage_jax.train.state import TrainState
from lineage_jax.train.step import decay_mask, forward, loss_and_grads, make_loss_fn, token_nll, weight_scale
from parallel import precision
from parallel.collectives import (dp_mean_grads, expert_dispatch, expert_return, megatron_f, megatron_g, sp_gather,
                                  sp_scatter, vocab_parallel_cross_entropy, vocab_parallel_embed, zero3_gather)


def _axes(target) -> tuple[str, ...]:
    if target is None:
        return ()
    return (target,) if isinstance(target, str) else tuple(target)


def _one(axes: tuple[str, ...]):
    """A collective's axis argument: the name itself for one axis."""
    return axes[0] if len(axes) == 1 else axes


class Layout:
    """The strategy's tables as facts about this mesh: live (size > 1) mesh axes per logical name."""

    def __init__(self, setup):
        s = setup.strategy
        self.sizes = dict(setup.mesh.shape)
        self.tables = {k: dict(v) for k, v in s.tables().items()}
        self.stage = s.zero_stage
        self.all = tuple(a for a in setup.mesh.axis_names if self.sizes[a] > 1)
        self.batch = self.on("compute", "batch")
        self.tp = self.on("compute", "heads")
        self.sp = bool(self.on("compute", "seq"))
        self.ep = self.on("compute", "expert")

    def on(self, table: str, name) -> tuple[str, ...]:
        if name is None:
            return ()
        return tuple(a for a in _axes(self.tables[table].get(name)) if self.sizes[a] > 1)

    def size(self, axes) -> int:
        return math.prod(self.sizes[a] for a in axes)

    def extra(self, names, frm: str, to: str) -> list[tuple[int, tuple[str, ...]]]:
        """(dim, mesh axes) that shard an array laid out by table ``to`` but not by ``frm``."""
        out = []
        for d, n in enumerate(names):
            ex = tuple(a for a in self.on(to, n) if a not in self.on(frm, n))
            if ex:
                out.append((d, ex))
        return out

    def slice_to(self, x, names, frm: str, to: str):
        """This device's block of ``x`` (laid out by ``frm``) in layout ``to``: no bytes moved."""
        for d, ex in self.extra(names, frm, to):
            n = x.shape[d] // self.size(ex)
            x = lax.dynamic_slice_in_dim(x, lax.axis_index(_one(ex)) * n, n, d)
        return x

    def gather_to(self, x, names, frm: str, to: str):
        """All-gather ``x`` (laid out by ``frm``) into the coarser layout ``to``."""
        for d, ex in self.extra(names, to, frm):
            x = lax.all_gather(x, _one(ex), axis=d, tiled=True)
        return x

    def tp_partial(self, names) -> bool:
        """With SP a parameter replicated over tensor was used on sequence shards: partial gradient.
        (Only the tensor axes count: a pipeline's layer stack is split over ``stage``, not tensor.)"""
        return bool(self.tp) and self.sp and not any(a in self.tp for n in names for a in self.on("compute", n))

    # ------------------------------------------------------------------ the model's hooks
    def hooks(self) -> dict:
        tp, sp = (_one(self.tp) if self.tp else None), self.sp

        def local_shape(shape, axes):
            return tuple(d // self.size(self.on("params", n)) for d, n in zip(shape, axes))

        def global_shape(shape, axes):
            return tuple(d * self.size(self.on("compute", n)) for d, n in zip(shape, axes))

        def param(w, axes):
            for d, ex in self.extra(axes, "compute", "params"):
                w = zero3_gather(w, _one(ex), d)
            return w

        def sharded(names):
            return any(self.on("compute", n) for n in names)

        def dense_in(x, kernel_axes, in_axes):
            if tp and sharded(kernel_axes[in_axes:]) and not sharded(kernel_axes[:in_axes]):  # column-parallel
                return sp_gather(x, tp, x.ndim - in_axes - 1) if sp else megatron_f(x, tp)
            return x

        def dense_out(y, kernel_axes, in_axes):
            n_out = len(kernel_axes) - in_axes
            if tp and sharded(kernel_axes[:in_axes]) and not sharded(kernel_axes[in_axes:]):  # row-parallel
                return sp_scatter(y, tp, y.ndim - n_out - 1) if sp else megatron_g(y, tp)
            return y

        def embed(table, tokens):
            if not self.on("compute", "vocab"):
                return jnp.take(table, tokens, axis=0)
            if not sp:
                return vocab_parallel_embed(tokens, table, tp)
            n = table.shape[0]                      # SP: rows of my vocabulary, then reduce-scatter over T
            start = lax.axis_index(tp) * n
            mine = (tokens >= start) & (tokens < start + n)
            rows = jnp.take(table, jnp.where(mine, tokens - start, 0), axis=0)
            return sp_scatter(jnp.where(mine[..., None], rows, 0), tp, tokens.ndim - 1)

        def positions(table, T, ids=None):
            if sp:   # this device's sequence shard of the rows (or of the packed position ids)
                n = T // self.size(self.tp)
                if ids is None:
                    return lax.dynamic_slice_in_dim(table, lax.axis_index(tp) * n, n, 0)
                ids = lax.dynamic_slice_in_dim(ids, lax.axis_index(tp) * n, n, ids.ndim - 1)
            return table[:T] if ids is None else jnp.take(table, ids, axis=0)

        def index(n, name):
            ax = self.on("compute", name)
            return jnp.arange(n) + (lax.axis_index(_one(ax)) * n if ax else 0)

        ep = _one(self.ep) if self.ep else None
        expert_in = (lambda b: expert_dispatch(b, ep)) if ep else (lambda b: b)
        expert_out = (lambda b: expert_return(b, ep)) if ep else (lambda b: b)
        return dict(local_shape=local_shape, global_shape=global_shape, param=param, dense_in=dense_in,
                    dense_out=dense_out, embed=embed, positions=positions, index=index,
                    constrain=lambda x, axes: x, expert_in=expert_in, expert_out=expert_out)


def _leaf_names(setup) -> list[tuple]:
    return [tuple(s) for s in jax.tree.leaves(setup.logical_specs, is_leaf=lambda x: isinstance(x, P))]


def reduce_grads(L: Layout, grads, names):
    """Local gradients of the local mean loss -> the global mean gradient, laid out by the grads table.

    Every leaf is divided by the number of batch devices once: by the sum's size where
    zero3_gather or ZeRO-2 already summed over ZeRO's axes, by ``dp_mean_grads`` over the rest."""
    leaves, treedef = jax.tree.flatten(grads)
    groups: dict[tuple, list[int]] = {}
    for i, (g, nm) in enumerate(zip(leaves, names)):
        summed = [a for _, ex in L.extra(nm, "compute", "params") for a in ex]   # zero3_gather's reduce-scatter
        summed += [a for n in nm for a in L.on("compute", n) if a in L.batch]     # expert weights (all-to-all)
        if L.stage < 3:
            for d, ex in L.extra(nm, "compute", "grads"):                       # ZeRO-2: reduce-scatter now
                g = lax.psum_scatter(g, _one(ex), scatter_dimension=d, tiled=True)
                summed += list(ex)
        if summed:
            g = g / L.size(summed)
        leaves[i] = g
        mean = tuple(a for a in L.batch if a not in summed)
        key = (mean, L.tp if L.tp_partial(nm) else ())
        if mean or key[1]:
            groups.setdefault(key, []).append(i)
    for (mean, tp), idx in groups.items():
        part = [leaves[i] for i in idx]
        if not tp:
            part = dp_mean_grads(part, _one(mean))             # one flat all-reduce: Ψ bytes once
        else:                                                  # + sum of the tensor-partial gradients
            vec, unravel = ravel_pytree(part)
            part = unravel(lax.psum(vec, _one(mean + tp)) / L.size(mean))
        for i, g in zip(idx, part):
            leaves[i] = g
    return jax.tree.unflatten(treedef, leaves)


def global_norm(L: Layout, grads, names) -> jax.Array:
    """‖g‖ over the whole (global) gradient, from shards laid out by the grads table.

    Each leaf's squared norm is divided by the number of devices holding a copy of its block,
    so one scalar all-reduce over the whole mesh counts replicated leaves once."""
    total = jnp.zeros((), jnp.float32)
    for g, nm in zip(jax.tree.leaves(grads), names):
        held = {a for n in nm for a in L.on("grads", n)}
        copies = L.size([a for a in L.all if a not in held])
        total = total + jnp.sum(jnp.square(g)).astype(jnp.float32) / copies
    if L.all:
        total = lax.psum(total, _one(L.all))
    return jnp.sqrt(total)


def clip_slot(full, inner) -> int | None:
    """Which entry of the chain state ``full`` is ``clip_by_global_norm``'s: the ``EmptyState`` whose
    removal leaves the structure of ``inner``, the same chain's state without the clip (None: no clip)."""
    want = jax.tree.structure(inner)
    if jax.tree.structure(full) == want:
        return None
    for i, entry in enumerate(full):
        if isinstance(entry, optax.EmptyState) and jax.tree.structure(without_slot(full, i)) == want:
            return i
    raise ValueError(f"the optimizer state {jax.tree.structure(full)} is not {want} plus a clip's empty state")


def without_slot(state: tuple, i: int | None) -> tuple:
    """The chain state less entry ``i`` (all of it for None)."""
    return state if i is None else state[:i] + state[i + 1:]


def with_slot(inner: tuple, i: int | None, entry) -> tuple:
    """``without_slot``'s inverse: ``entry`` back at ``i``."""
    return inner if i is None else tuple(inner[:i]) + (entry,) + tuple(inner[i:])


def make_explicit_train_step(setup, grads_fn=None):
    """``train_step(state, batch) -> (state, metrics)``: one ``shard_map`` over ``setup.mesh``.

    ``grads_fn(params, batch, rng, loss_scale, scale) -> ((loss, moe metrics), grads)``: this
    device's loss and gradients before ``reduce_grads`` (default: ``loss_and_grads`` over the
    whole model; the pipeline executor passes its schedule, ``lineage_jax/train/pipeline.py``)."""
    cfg, model, L = setup.cfg, setup.model, Layout(setup)
    names = _leaf_names(setup)
    hook_fns = L.hooks()
    clip = cfg.optim.clip_norm
    tx = make_optimizer(dataclasses.replace(cfg.optim, clip_norm=0.0), cfg.train.steps, decay_mask)
    abstract = setup.abstract_state()
    slot = clip_slot(abstract.opt_state, jax.eval_shape(tx.init, abstract.params))
    grad_accum, dropout = cfg.train.grad_accum, cfg.model.dropout > 0
    base_key = jax.random.key(cfg.train.seed)
    tp = _one(L.tp) if L.tp else None

    nll = token_nll
    if L.on("compute", "vocab"):      # logits stay vocab-sharded: [B_n, T, V_n]
        nll = lambda logits, targets: vocab_parallel_cross_entropy(logits.astype(jnp.float32), targets, tp)  # noqa: E731
    local_loss = make_loss_fn(model, dropout, nll)

    def body(state: TrainState, batch):
        rng = jax.random.fold_in(base_key, state.step)
        ls = state.loss_scale
        scale = None
        if "weights" in batch:   # packed rows: the weighted mean over the whole (global) batch
            total = jnp.sum(batch["weights"])
            total = lax.psum(total, _one(L.batch)) if L.batch else total
            scale = weight_scale(batch, grad_accum * L.size(L.batch), total)
        with collective_hooks(**hook_fns):
            if grads_fn is None:
                (loss, moe), grads = loss_and_grads(local_loss, state.params, batch, rng, grad_accum=grad_accum,
                                                    loss_scale=ls, scale=scale)
            else:
                (loss, moe), grads = grads_fn(state.params, batch, rng, ls, scale)

        grads = reduce_grads(L, grads, names)                     # laid out by the grads table
        if L.batch:
            loss, moe = lax.pmean((loss, moe), _one(L.batch))
        norm = global_norm(L, grads, names)
        if clip > 0:   # optax.clip_by_global_norm's formula, with the global norm
            trigger = norm < clip
            grads = jax.tree.map(lambda t: lax.select(trigger, t, (t / norm.astype(t.dtype)) * clip), grads)

        leaves = lambda t: jax.tree.leaves(t)
        unflat = lambda like, xs: jax.tree.unflatten(jax.tree.structure(like), xs)
        g_loc = unflat(grads, [L.slice_to(g, nm, "grads", "opt_state") for g, nm in zip(leaves(grads), names)])
        p_loc = unflat(state.params, [L.slice_to(p, nm, "params", "opt_state")
                                      for p, nm in zip(leaves(state.params), names)])
        updates, new_inner = tx.update(g_loc, without_slot(state.opt_state, slot), p_loc)
        opt_state = with_slot(new_inner, slot, None if slot is None else state.opt_state[slot])
        p_new = optax.apply_updates(p_loc, updates)
        params = unflat(p_new, [L.gather_to(p, nm, "opt_state", "params") for p, nm in zip(leaves(p_new), names)])

        metrics = {"loss": loss, "grad_norm": norm, **moe}
        if ls.dynamic:
            bad = jnp.logical_not(precision.all_finite(grads)).astype(jnp.int32)
            finite = (lax.psum(bad, _one(L.all)) if L.all else bad) == 0
            params, opt_state = precision.select_update(finite, (params, opt_state), (state.params, state.opt_state))
            ls = precision.adjust(ls, finite, period=cfg.parallel.loss_scale_period)
            metrics.update(loss_scale=ls.scale, skipped_steps=ls.skipped)
        if setup.schedule is not None:
            metrics["lr"] = setup.schedule(state.step)
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state, loss_scale=ls), metrics

    state_specs = jax.tree.map(lambda s: s.spec, setup.state_sharding)
    batch_specs = {k: setup.batch_sharding.spec for k in setup.abstract_batch()}   # every entry [B, ...]
    return jax.shard_map(body, mesh=setup.mesh, in_specs=(state_specs, batch_specs),
                         out_specs=(state_specs, P()), check_vma=False)


def make_explicit_forward(setup):
    """``logits = forward(params, tokens)``: the model's forward pass alone, in the explicit form.

    The same hooks as the train step, without the loss: what the forward pass of a strategy
    sends (e.g. exactly two all-to-alls per MoE layer under expert parallelism). Logits come
    back laid out by the compute table (batch over the batch axes, vocab over tensor)."""
    L = Layout(setup)
    hook_fns = L.hooks()

    def body(params, tokens):
        with collective_hooks(**hook_fns):
            return forward(setup.model, params, tokens)[0]

    param_specs = jax.tree.map(lambda s: s.spec, setup.state_sharding.params)
    batch = setup.batch_sharding.spec[0]
    return jax.shard_map(body, mesh=setup.mesh, in_specs=(param_specs, P(batch, None)),
                         out_specs=P(batch, None, _one(L.tp) if L.on("compute", "vocab") else None), check_vma=False)
