"""The pure training step ``train_step(state, batch) -> (state, metrics)`` and its evaluation twin."""
from __future__ import annotations

from typing import Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from lineage_jax.train.state import TrainState
from parallel import precision

Batch = dict[str, jax.Array]
"""{"tokens": int32 [B, T+1]}: inputs are tokens[:, :-1], targets tokens[:, 1:]. Packed rows
(``PackedSampler.batch_with_segments``) add "segment_ids" and "positions" int32 [B, T], passed
to the model, and "weights" float32 [B, T]: which targets count (not across documents, not padding)."""

PACKING = ("segment_ids", "positions")


def token_nll(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Per-token next-token negative log-likelihood [B, T] in float32: logsumexp(z) − z[target].

    The target logit is picked with a one-hot product rather than a gather, so logits split
    over the vocabulary (tensor parallel) are reduced in place, never gathered whole.
    """
    logits = logits.astype(jnp.float32)
    target_logit = jnp.sum(logits * jax.nn.one_hot(targets, logits.shape[-1], dtype=logits.dtype), axis=-1)
    return jax.nn.logsumexp(logits, axis=-1) - target_logit


def cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Mean next-token negative log-likelihood (``token_nll`` averaged over every target)."""
    return jnp.mean(token_nll(logits, targets))


def weight_scale(batch: Batch, parts: int = 1, total=None) -> jax.Array | None:
    """For a batch with "weights": ``parts / Σ weights`` (``total`` overrides the sum), so that
    the mean over ``parts`` pieces of Σ_piece w·nll·scale is the whole batch's weighted mean
    (accumulation and data-parallel devices average their pieces). None without weights."""
    if "weights" not in batch:
        return None
    total = jnp.sum(batch["weights"]) if total is None else total
    return parts / jnp.maximum(total, 1.0)


MATMUL_WEIGHTS = frozenset({"kernel", "w_in", "w_out", "w_gate", "w_up", "w_down", "lm_head"})


def decay_mask(params):
    """Weight decay on matmul weights only (Dense kernels, expert weights, an untied head):
    biases, norms and embeddings are left alone."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: getattr(path[-1], "key", None) in MATMUL_WEIGHTS, params)


def moe_metrics(sown) -> dict[str, jax.Array]:
    """The ``moe`` collection sown by MoE blocks -> training metrics ({} for a dense model).

    ``moe_aux_loss``: the auxiliary losses summed over MoE layers (what the loss adds);
    ``moe_load`` [E]: share of routed assignments per expert, averaged over MoE layers;
    ``moe_dropped``: fraction of assignments dropped for capacity, averaged over MoE layers.
    """
    flat = flax.traverse_util.flatten_dict(sown.get("moe", {}))
    pick = lambda name: [leaf for key, vals in flat.items() if key[-1] == name for leaf in vals]
    aux, load, dropped = pick("aux_loss"), pick("load"), pick("dropped_fraction")
    if not aux:
        return {}
    E = load[0].shape[-1]
    load = jnp.concatenate([jnp.reshape(x, (-1, E)) for x in load])            # [MoE layers, E]
    load = load / jnp.maximum(jnp.sum(load, axis=-1, keepdims=True), 1.0)
    return {"moe_aux_loss": sum(jnp.sum(a) for a in aux).astype(jnp.float32),
            "moe_load": jnp.mean(load, axis=0),
            "moe_dropped": jnp.mean(jnp.concatenate([jnp.reshape(d, (-1,)) for d in dropped]))}


def forward(model: nn.Module, params, inputs, *, deterministic: bool = True, rngs=None, **packing):
    """logits and the MoE metrics (``moe_metrics``; {} for a dense model) of one apply.

    ``packing``: ``segment_ids`` / ``positions`` [B, T] of packed rows, passed to the model."""
    logits, sown = model.apply({"params": params}, inputs, deterministic=deterministic, rngs=rngs,
                               mutable=["moe"], **packing)
    return logits, moe_metrics(sown)


def make_loss_fn(model: nn.Module, dropout: bool, nll: Callable = token_nll) -> Callable:
    """loss_fn(params, batch, rng, scale=None) -> (objective, (cross-entropy, MoE metrics)).

    The cross-entropy is the mean ``nll`` over targets; a packed batch's is weighted,
    Σ w·nll · ``scale`` (default 1/Σ w; see ``weight_scale`` for a piece of a batch). The
    objective adds, for an MoE model, its auxiliary (load-balancing, z-) losses; ``loss`` in
    the metrics is the cross-entropy alone, so it compares with dense models and with the
    eval loss. ``nll``: per-token losses from (logits, targets) (vocab-parallel in the
    explicit form)."""
    def loss_fn(params, batch, rng, scale=None):
        tokens = batch["tokens"]
        logits, moe = forward(model, params, tokens[:, :-1], deterministic=not dropout,
                              rngs={"dropout": rng} if dropout else None,
                              **{k: batch[k] for k in PACKING if k in batch})
        per_token = nll(logits, tokens[:, 1:])
        if "weights" in batch:
            scale = weight_scale(batch) if scale is None else scale
            ce = jnp.sum(per_token * batch["weights"]) * scale
        else:
            ce = jnp.mean(per_token)
        return ce + moe.get("moe_aux_loss", 0.0), (ce, moe)
    return loss_fn


def split_micro(batch: Batch, n: int) -> Batch:
    """[B, ...] -> [n, B/n, ...] per entry: row r goes to micro-batch r mod n (each micro-batch
    stays spread over the data-parallel devices)."""
    return jax.tree.map(lambda x: x.reshape(x.shape[0] // n, n, *x.shape[1:]).swapaxes(0, 1), batch)


def loss_and_grads(loss_fn: Callable, params, batch: Batch, rng, *, grad_accum: int, loss_scale, scale=None):
    """((cross-entropy, MoE metrics), gradients) of ``loss_fn`` on ``batch``, averaged over
    ``grad_accum`` micro-batches (``split_micro``; micro-batch i draws dropout from
    ``fold_in(rng, i)``). The objective is multiplied by ``loss_scale`` before differentiation
    and the gradients divided by it after; ``scale`` is handed to ``loss_fn`` (packed rows'
    ``weight_scale``)."""
    def grad_fn(mb, key):
        def scaled(p):
            obj, aux = loss_fn(p, mb, key, scale)
            return precision.scale_loss(obj, loss_scale), aux
        (_, aux), grads = jax.value_and_grad(scaled, has_aux=True)(params)
        return aux, precision.unscale(grads, loss_scale)

    if grad_accum == 1:
        return grad_fn(batch, rng)
    micro = split_micro(batch, grad_accum)   # [A, B/A, ...]

    def accumulate(carry, xs):
        i, mb = xs
        return jax.tree.map(jnp.add, carry, grad_fn(mb, jax.random.fold_in(rng, i))), None

    first = jax.tree.map(lambda x: x[0], micro)
    zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(grad_fn, first, rng))
    total, _ = jax.lax.scan(accumulate, zeros, (jnp.arange(grad_accum), micro))
    return jax.tree.map(lambda x: x / grad_accum, total)


def make_train_step(model: nn.Module, tx: optax.GradientTransformation, *, seed: int, grad_accum: int = 1,
                    dropout: bool = False, schedule: Callable | None = None, grad_sharding=None,
                    loss_scale_period: int = 2000, skip_nonfinite: bool = False):
    """Close over the model and optimizer; return the pure ``train_step(state, batch)``.

    With ``grad_accum = A`` the batch's B rows are split into A micro-batches of B/A rows
    (row r goes to micro-batch r mod A, which keeps each micro-batch spread over the
    data-parallel devices); their gradients are averaged before one optimizer update.
    Dropout keys are ``fold_in(key(seed), step)``, so a resumed run draws the same masks.
    ``grad_sharding`` (a pytree of shardings, from the caller's strategy) lays the gradients
    out before the update: sharded, it turns the data-parallel all-reduce into a
    reduce-scatter (ZeRO-2).

    Mixed precision (Micikevicius et al. 2018): the model computes in its ``dtype``; the loss
    is multiplied by ``state.loss_scale`` before differentiation and the gradients divided
    by it after; with a dynamic scale (fp16) a step whose gradients are not finite leaves
    parameters and optimizer state untouched and halves the scale. ``skip_nonfinite``
    (``train.nan_policy=skip``) does the same for any step whose loss or gradients are not
    finite, at every precision.
    """
    loss_fn = make_loss_fn(model, dropout)
    base_key = jax.random.key(seed)

    def train_step(state: TrainState, batch: Batch):
        rng = jax.random.fold_in(base_key, state.step)
        ls = state.loss_scale
        (loss, moe), grads = loss_and_grads(loss_fn, state.params, batch, rng, grad_accum=grad_accum, loss_scale=ls,
                                            scale=weight_scale(batch, grad_accum))
        if grad_sharding is not None:
            grads = jax.lax.with_sharding_constraint(grads, grad_sharding)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": loss, "grad_norm": optax.global_norm(grads), **moe}
        if ls.dynamic or skip_nonfinite:   # static switches: other programs carry no checks
            finite = precision.all_finite(grads) & jnp.isfinite(loss)
            params, opt_state = precision.select_update(finite, (params, opt_state), (state.params, state.opt_state))
            if ls.dynamic:
                ls = precision.adjust(ls, finite, period=loss_scale_period)
                metrics.update(loss_scale=ls.scale, skipped_steps=ls.skipped)
        if schedule is not None:
            metrics["lr"] = schedule(state.step)
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state, loss_scale=ls), metrics

    return train_step


def make_eval_step(model: nn.Module):
    loss_fn = make_loss_fn(model, dropout=False)

    def eval_step(params, batch: Batch) -> jax.Array:
        return loss_fn(params, batch, None)[1][0]

    return eval_step
