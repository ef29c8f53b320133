"""Pipeline parallelism: the train step as a scan over the clock ticks of a schedule.

``parallel.pipeline_stages = P`` adds a ``stage`` mesh axis (outermost) and maps the scanned
stack's ``layers`` axis onto it (``parallel/rules.py``), so each stage holds a contiguous block
of layers, at rest and while computing. The batch on each data-parallel group is split into
``parallel.microbatches = M`` microbatches; ``parallel/pipeline/schedule.py`` turns the schedule
(``gpipe``, ``1f1b`` or ``circular`` with ``parallel.virtual_stages = v``) into a tick table,
and this module runs it inside the explicit (``shard_map``) step of ``explicit.py``:

* every tick, each device reads its row of the table: idle, the forward F(c, m) of one chunk c
  on microbatch m, or its backward B(c, m) (``lax.switch``);
* the forward of the first chunk embeds its tokens, the last chunk's ends in the head and the
  loss; other chunks read their input from a stash slot;
* the backward recomputes its chunk from the stashed input (``jax.vjp``; GPipe's
  rematerialisation), so a stage holds only chunk inputs between F and B: M of them under
  GPipe, at most P under 1F1B, the difference the compiled memory shows;
* after the op, activations move one stage on and cotangents one stage back by
  ``lax.ppermute`` over ``stage`` (a ring: the circular schedule's last stage feeds the first);
  the table says which slot each arrival goes to.

The model is cut by ``models.pipeline_parts``: GPT-2 (its scanned unit a block, or with MoE a group
of ``moe_every`` blocks) or Llama. The parameters outside the stack (GPT-2: ``wte``, ``wpe``,
``ln_f``, the head tied to ``wte``; Llama: ``wte``, ``norm``, ``lm_head`` when untied) are
replicated over ``stage``: the first stage's embedding gradient and the last stage's head gradient
are summed over ``stage`` (one all-reduce of those parameters per step). Every chunk adds its MoE
layers' auxiliary losses to the objective (their cotangent is seeded on every stage, not only the
last), and the routing statistics are summed over ``stage`` for the metrics. Packed rows bring
each microbatch's segment ids and positions to every chunk. Data, FSDP (ZeRO), tensor, sequence
and expert parallelism compose through the same hooks and gradient reduction as the explicit
form: the pipeline only replaces ``loss_and_grads``.

Circular keeps the checkpoint's layer order at rest (contiguous blocks per stage); chunk c must
sit on device c mod P, so the step reorders the stack (parameters and optimizer moments)
before the shard_map and back after it: GSPMD moves (v − 1)/v of each stage's layer weights
per step. MaxText's circular pipeline stores the weights interleaved instead.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from jax.sharding import PartitionSpec as P

from lineage_jax.models import pipeline_parts
from lineage_jax.train.explicit import Layout, make_explicit_train_step
from lineage_jax.train.state import TrainState
from lineage_jax.train.step import split_micro, token_nll
from parallel import pipeline, precision
from parallel.collectives import vocab_parallel_cross_entropy


def schedule_of(cfg) -> pipeline.Schedule:
    p = cfg.parallel
    return pipeline.build(p.pipeline_schedule, p.pipeline_stages, p.microbatches, p.virtual_stages)


def circular_order(layers: int, stages: int, virtual: int) -> np.ndarray:
    """Layer order that puts chunk c = r·P + d in device d's r-th block: position i of the reordered
    stack holds layer ``order[i]``."""
    chunk = layers // (stages * virtual)
    return np.asarray([(r * stages + d) * chunk + j for d in range(stages) for r in range(virtual)
                       for j in range(chunk)])


def make_grads_fn(setup, sched: pipeline.Schedule):
    """``grads_fn(params, batch, rng, loss_scale, scale)`` for ``make_explicit_train_step``: this
    device's (loss, MoE metrics) and gradients by running ``sched``'s table."""
    cfg, L = setup.cfg, Layout(setup)
    Pn, M, v = sched.stages, sched.microbatches, sched.virtual
    C = Pn * v
    parts = pipeline_parts(cfg.model)
    units = jax.tree.leaves(setup.abstract_state().params["blocks"])[0].shape[0]   # scanned units (layers)
    Lc, n_moe = units // C, units * parts.moe_layers
    nll = token_nll
    if L.on("compute", "vocab"):
        tp = L.tp[0] if len(L.tp) == 1 else L.tp
        nll = lambda z, t: vocab_parallel_cross_entropy(z.astype(jnp.float32), t, tp)  # noqa: E731
    table = np.stack([sched.kind, sched.chunk, sched.micro, sched.x_slot, sched.g_slot, sched.recv_x,
                      sched.recv_g], axis=-1).astype(np.int32)               # [ticks, P, 7]
    forward_ring = [(i, (i + 1) % Pn) for i in range(Pn)]
    backward_ring = [(i, (i - 1) % Pn) for i in range(Pn)]

    def chunk_fn(cp, shared, x, mb, first, last, scale):
        """One chunk of Lc units on microbatch ``mb``: ((y, objective), (cross-entropy, MoE sums)). The
        first embeds the tokens, the last adds the cross-entropy (packed rows: Σ w·nll · ``scale``);
        every chunk adds its MoE layers' auxiliary losses."""
        tok, seg, pos = mb["tokens"], mb.get("segment_ids"), mb.get("positions")
        x = lax.cond(first, lambda: parts.embed(shared, tok[:, :-1], pos).astype(x.dtype), lambda: x)
        layer = lambda lp, h: parts.layer(lp, h, seg, pos)  # noqa: E731
        stats0 = jax.tree.map(jnp.zeros_like, jax.eval_shape(layer, jax.tree.map(lambda w: w[0], cp), x)[1])

        def unit(carry, lp):
            h, acc = carry
            h, st = layer(lp, h)
            return (h, jax.tree.map(jnp.add, acc, st)), None

        def loss():
            per_token = nll(parts.head(shared, y), tok[:, 1:])
            if "weights" in mb:
                return (jnp.sum(per_token * mb["weights"]) * scale).astype(jnp.float32)
            return jnp.mean(per_token).astype(jnp.float32)

        (y, stats), _ = lax.scan(unit, (x, stats0), cp)
        ce = lax.cond(last, loss, lambda: jnp.zeros((), jnp.float32))
        return (y, ce + stats.get("aux", 0.0)), (ce, stats)

    def grads_fn(params, batch, rng, ls, scale):
        d = lax.axis_index("stage")
        shared = {k: w for k, w in params.items() if k != "blocks"}
        blocks = jax.tree.map(lambda w: w.reshape(v, Lc, *w.shape[1:]), params["blocks"])
        micro = split_micro(batch, M)                                         # [M, b, ...] each
        tokens = micro["tokens"]                                              # [M, b, T+1]
        like = jax.eval_shape(parts.embed, shared, tokens[0, :, :-1])
        # packed rows: ``scale`` makes the mean over devices of Σ w·nll·scale the global weighted mean;
        # the objective here is a mean over the M microbatches, hence M·scale per microbatch
        mscale = None if scale is None else scale * M
        mb0 = jax.tree.map(lambda a: a[0], micro)
        zero = lambda tree: jax.tree.map(jnp.zeros_like, tree)  # noqa: E731
        cp_like = jax.tree.map(lambda w: w[0], blocks)
        stats_like = jax.eval_shape(lambda: chunk_fn(cp_like, shared, jnp.zeros(like.shape, like.dtype),
                                                     mb0, True, True, mscale)[1][1])
        seed = (ls.scale / M).astype(jnp.float32)                            # d(mean over M)/d(objective_m)

        def tick(carry, rows):
            xbuf, gbuf, gacc, gsh, ce_sum, st_sum = carry
            kind, r, m, xs, gs, rx, rg = (rows[d, i] for i in range(7))
            cp = jax.tree.map(lambda w: lax.dynamic_index_in_dim(w, r, 0, keepdims=False), blocks)
            mb = jax.tree.map(lambda a: lax.dynamic_index_in_dim(a, m, 0, keepdims=False), micro)
            first, last = r * Pn + d == 0, r * Pn + d == C - 1
            x = xbuf[xs]
            none = jnp.zeros_like(x)
            f32 = jnp.zeros((), jnp.float32)

            def idle():
                return none, none, f32, zero(stats_like), zero(cp_like), zero(shared)

            def fwd():
                (y, _), (ce, stats) = chunk_fn(cp, shared, x, mb, first, last, mscale)
                return y, none, ce, stats, zero(cp_like), zero(shared)

            def bwd():
                _, vjp, _ = jax.vjp(lambda a, b, xx: chunk_fn(a, b, xx, mb, first, last, mscale), cp, shared,
                                    x, has_aux=True)
                g = jnp.where(last, jnp.zeros_like(x), gbuf[gs])
                dp, dsh, dx = vjp((g, seed))
                return none, dx, f32, zero(stats_like), dp, dsh

            send_f, send_b, ce, stats, dp, dsh = lax.switch(kind, [idle, fwd, bwd])
            gacc = jax.tree.map(lambda a, g: lax.dynamic_update_index_in_dim(
                a, lax.dynamic_index_in_dim(a, r, 0, keepdims=False) + g, r, 0), gacc, dp)
            gsh = jax.tree.map(jnp.add, gsh, dsh)
            xbuf = xbuf.at[rx].set(lax.ppermute(send_f, "stage", forward_ring))
            gbuf = gbuf.at[rg].set(lax.ppermute(send_b, "stage", backward_ring))
            return (xbuf, gbuf, gacc, gsh, ce_sum + ce, jax.tree.map(jnp.add, st_sum, stats)), None

        init = (jnp.zeros((sched.x_slots + 1, *like.shape), like.dtype),
                jnp.zeros((sched.g_slots + 1, *like.shape), like.dtype),
                zero(blocks), zero(shared), jnp.zeros((), jnp.float32), zero(stats_like))
        (_, _, gacc, gsh, ce_sum, st_sum), _ = lax.scan(tick, init, jnp.asarray(table))
        grads = dict(lax.psum(gsh, "stage"))      # embedding (first stage) + head (last stage)
        grads["blocks"] = jax.tree.map(lambda g: g.reshape(v * Lc, *g.shape[2:]), gacc)
        ce_sum, st_sum = lax.psum((ce_sum, st_sum), "stage")   # every stage's MoE layers, the last's loss
        moe = {}
        if n_moe:   # as ``train.step.moe_metrics``: aux summed over layers, load and drops averaged
            moe = {"moe_aux_loss": st_sum["aux"] / M, "moe_load": st_sum["load"] / (M * n_moe),
                   "moe_dropped": st_sum["dropped"] / (M * n_moe)}
        return (ce_sum / M, moe), precision.unscale(grads, ls)

    return grads_fn


def make_pipeline_train_step(setup):
    """``train_step(state, batch)``: the explicit step with the pipeline's gradients."""
    cfg = setup.cfg
    sched = schedule_of(cfg)
    step = make_explicit_train_step(setup, grads_fn=make_grads_fn(setup, sched))
    if sched.virtual == 1:
        return step
    units = jax.tree.leaves(setup.abstract_state().params["blocks"])[0].shape[0]
    order = circular_order(units, sched.stages, sched.virtual)
    back = np.argsort(order)
    on_layers = jax.tree.map(lambda s: bool(s) and s[0] == "layers", setup.logical_specs,
                             is_leaf=lambda x: isinstance(x, P))

    def reorder(state: TrainState, idx) -> TrainState:
        f = lambda x, layered: jnp.take(x, idx, axis=0) if layered else x  # noqa: E731
        return state.replace(params=jax.tree.map(f, state.params, on_layers),
                             opt_state=optax.tree_map_params(setup.tx, f, state.opt_state, on_layers,
                                                             transform_non_params=lambda x: x))

    def circular_step(state, batch):
        new, metrics = step(reorder(state, order), batch)
        return reorder(new, back), metrics

    return circular_step
