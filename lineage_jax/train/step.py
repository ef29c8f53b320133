"""The pure training step ``train_step(state, batch) -> (state, metrics)`` and its evaluation twin."""
from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from lineage_jax.train.state import TrainState

Batch = dict[str, jax.Array]   # {"tokens": int32 [B, T+1]}: inputs are tokens[:, :-1], targets tokens[:, 1:]


def cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Mean next-token negative log-likelihood, computed in float32: logsumexp(z) − z[target]."""
    logits = logits.astype(jnp.float32)
    target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    return jnp.mean(jax.nn.logsumexp(logits, axis=-1) - target_logit)


def decay_mask(params):
    """Weight decay on matmul kernels only: biases, norms and embeddings are left alone."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: getattr(path[-1], "key", None) == "kernel", params)


def make_loss_fn(model: nn.Module, dropout: bool) -> Callable:
    def loss_fn(params, tokens, rng):
        logits = model.apply({"params": params}, tokens[:, :-1], deterministic=not dropout,
                             rngs={"dropout": rng} if dropout else None)
        return cross_entropy(logits, tokens[:, 1:])
    return loss_fn


def make_train_step(model: nn.Module, tx: optax.GradientTransformation, *, seed: int, grad_accum: int = 1,
                    dropout: bool = False, schedule: Callable | None = None):
    """Close over the model and optimizer; return the pure ``train_step(state, batch)``.

    With ``grad_accum = A`` the batch's B rows are split into A micro-batches of B/A rows
    (row r goes to micro-batch r mod A, which keeps each micro-batch spread over the
    data-parallel devices); their gradients are averaged before one optimizer update.
    Dropout keys are ``fold_in(key(seed), step)``, so a resumed run draws the same masks.
    """
    grad_fn = jax.value_and_grad(make_loss_fn(model, dropout))
    base_key = jax.random.key(seed)

    def train_step(state: TrainState, batch: Batch):
        rng = jax.random.fold_in(base_key, state.step)
        tokens = batch["tokens"]
        if grad_accum == 1:
            loss, grads = grad_fn(state.params, tokens, rng)
        else:
            B, T1 = tokens.shape
            micro = tokens.reshape(B // grad_accum, grad_accum, T1).swapaxes(0, 1)   # [A, B/A, T+1]

            def accumulate(carry, xs):
                i, mb = xs
                loss, grads = grad_fn(state.params, mb, jax.random.fold_in(rng, i))
                return jax.tree.map(jnp.add, carry, (loss, grads)), None

            zeros = (jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, state.params))
            (loss, grads), _ = jax.lax.scan(accumulate, zeros, (jnp.arange(grad_accum), micro))
            loss, grads = jax.tree.map(lambda x: x / grad_accum, (loss, grads))
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": loss, "grad_norm": optax.global_norm(grads)}
        if schedule is not None:
            metrics["lr"] = schedule(state.step)
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

    return train_step


def make_eval_step(model: nn.Module):
    loss_fn = make_loss_fn(model, dropout=False)

    def eval_step(params, batch: Batch) -> jax.Array:
        return loss_fn(params, batch["tokens"], None)

    return eval_step
