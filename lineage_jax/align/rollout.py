"""Rollouts for PPO and evaluation: the policy samples responses with the project's KV cache
(``decode.kv_cache``: prefill, then one position per token), in one jitted program (a ``lax.scan`` over
the new tokens: one compile for every call of the same shape), recording each drawn token's log-probability.

Rows come back laid out like training rows (``align.dataset.encode``): prompt, response, end-of-text,
zeros, with ``mask`` 1 on the response tokens, so the teacher-forced log-probability of a rollout is
the one recorded while it was drawn (``tests/align/test_rollout.py``).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from lineage_jax.decode.filters import sample as sample_logits
from lineage_jax.decode.kv_cache import decode_step, init_cache, prefill


@functools.partial(jax.jit, static_argnames=("model", "new_tokens", "eos_id", "temperature", "vocab_limit"))
def rollout(model, params, prompts, lengths, key, *, new_tokens: int, eos_id: int, temperature: float = 1.0,
            vocab_limit: int | None = None):
    """Prompts [B, P] right-padded with ``lengths`` -> {"tokens" [B, P+N], "mask" [B, P+N], "lengths" [B],
    "logp" [B, P+N-1]} (logp of each target position: the drawn token's log π at temperature 1; 0 elsewhere).

    A row stops after its end-of-text (or at N new tokens); later draws are dropped. Draw i uses
    ``fold_in(key, i)``; ``temperature`` 0 is greedy.
    """
    B, P = prompts.shape
    T = P + new_tokens
    if T > model.cfg.context:
        raise ValueError(f"prompt length {P} + {new_tokens} new tokens exceed model.context={model.cfg.context}")
    logits, cache = prefill(model, params, init_cache(model.cfg, B), prompts, lengths)
    first = jnp.take_along_axis(logits, (lengths - 1)[:, None, None], axis=1)[:, 0]

    def draw(carry, i):
        logits, cache, done = carry
        logits = logits.astype(jnp.float32)
        tok = sample_logits(jax.random.fold_in(key, i), logits, temperature=temperature, top_k=0, top_p=1.0,
                            vocab_limit=vocab_limit)
        logp = jnp.take_along_axis(jax.nn.log_softmax(logits), tok[:, None], axis=-1)[:, 0]
        live = ~done
        nxt, cache = decode_step(model, params, cache, tok, advance=live)
        return (nxt, cache, done | (tok == eos_id)), (tok, logp, live)

    _, (toks, logps, live) = jax.lax.scan(draw, (first, cache, jnp.zeros((B,), bool)), jnp.arange(new_tokens))
    toks, logps, live = toks.T, logps.T, live.T                      # [B, N]
    pos = lengths[:, None] + jnp.arange(new_tokens)[None]            # where draw i lands in each row
    rows = jnp.arange(B)[:, None]
    base = jnp.where(jnp.arange(T)[None] < lengths[:, None], jnp.pad(prompts, ((0, 0), (0, new_tokens))), 0)
    tokens = base.at[rows, pos].set(jnp.where(live, toks, 0))
    mask = jnp.zeros((B, T), jnp.float32).at[rows, pos].set(live.astype(jnp.float32))
    logp = jnp.zeros((B, T), jnp.float32).at[rows, pos].set(jnp.where(live, logps, 0.0))[:, 1:]
    return {"tokens": tokens, "mask": mask, "lengths": lengths + jnp.sum(live, axis=1, dtype=jnp.int32), "logp": logp}
