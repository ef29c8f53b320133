"""The language model with a scalar head: a reward model (one score per sequence) or a value function
(one value per position), as pure functions of ``{"lm": model params, "head": {"kernel" [D], "bias" []}}``.

The head reads the final normalised hidden state (GPT's ``ln_f``, Llama's ``norm``), taken from the
same ``apply`` that gives the logits through Flax's ``capture_intermediates``, so the models stay as
they are. The head's kernel is named ``embed`` like the width it reads, so it shards by the same rules.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

FINAL_NORMS = (("ln_f",), ("norm",))   # GPT, Llama


def init_head(key, width: int) -> dict:
    """A zero-mean head whose initial outputs are small (std 1/√D·0.1 per unit of hidden)."""
    return {"kernel": jax.random.normal(key, (width,), jnp.float32) * (0.1 / width ** 0.5),
            "bias": jnp.zeros((), jnp.float32)}


def head_specs() -> dict:
    """Logical partition specs of the head (kernel over ``embed``, bias replicated)."""
    return {"kernel": P("embed"), "bias": P()}


def apply_with_hidden(model, lm_params, tokens):
    """(logits [B, T, V], final hidden [B, T, D]) of one apply."""
    logits, state = model.apply({"params": lm_params}, tokens, capture_intermediates=lambda m, name: (
        name == "__call__" and tuple(m.scope.path) in FINAL_NORMS), mutable=["intermediates"])
    found = [v for k, v in state["intermediates"].items() if (k,) in FINAL_NORMS]
    if not found:
        raise ValueError(f"{type(model).__name__}: no final norm named one of {FINAL_NORMS} to read hidden states from")
    return logits, found[0]["__call__"][0]


def scalar(head: dict, hidden: jax.Array) -> jax.Array:
    """hidden [..., D] -> the head's scalar [...] in float32."""
    return jnp.einsum("...d,d->...", hidden.astype(jnp.float32), head["kernel"].astype(jnp.float32)) + head["bias"]


def sequence_rewards(model, params: dict, tokens: jax.Array, lengths: jax.Array) -> jax.Array:
    """Reward [B] of right-padded rows: the head on the hidden state of each row's last real token."""
    _, h = apply_with_hidden(model, params["lm"], tokens)
    last = jnp.take_along_axis(h, (lengths - 1)[:, None, None], axis=1)[:, 0]
    return scalar(params["head"], last)
