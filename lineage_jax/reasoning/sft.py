"""Supervised fine-tuning on (prompt, completion) pairs: the masked next-token loss and a pure step.

The mask follows ``arith.encode_pairs``: ``mask[:, t] = 1`` where the target ``tokens[:, t + 1]`` belongs to the
completion, so the prompt is read but not learned (the scratchpad and direct models differ only in what the
completion holds).
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax


def token_logprobs(logits: jax.Array, tokens: jax.Array) -> jax.Array:
    """log p(tokens[:, t+1] | tokens[:, :t+1]) [B, T-1] from logits [B, T, V]."""
    logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
    return jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]


def masked_nll(logits: jax.Array, tokens: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean negative log-likelihood of the masked targets (completion tokens only)."""
    m = mask[:, :-1]
    return -(token_logprobs(logits, tokens) * m).sum() / jnp.maximum(m.sum(), 1.0)


def make_sft_step(apply: Callable, tx: optax.GradientTransformation) -> Callable:
    """``step((params, opt_state), (tokens, mask)) -> ((params, opt_state), {"loss"})``, jitted and pure;
    ``apply(params, tokens) -> logits``."""
    def loss_fn(params, tokens, mask):
        return masked_nll(apply(params, tokens), tokens, mask)

    @jax.jit
    def step(state, batch):
        params, opt_state = state
        loss, grads = jax.value_and_grad(loss_fn)(params, *batch)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), {"loss": loss}
    return step
