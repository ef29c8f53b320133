"""Sampling completions for a batch of prompts, with each token's log-probability: one compiled program.

Prompts are right-padded into a fixed window [B, W]; step t writes row b's next token at ``lengths[b] + t``.
Each step recomputes the window (the chapter's sequences are a few dozen tokens, where recomputation costs
less than keeping a cache), so a batch of prompts of different lengths, a group of G samples per prompt
(GRPO) and greedy decoding all run through the same ``lax.while_loop``, which ends once every row has:
a row stops after its end token;
later positions stay padding and out of the completion mask.
"""
from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp


@functools.partial(jax.jit, static_argnames=("apply", "max_new", "end_id", "greedy"))
def sample(apply: Callable, params, tokens: jax.Array, lengths: jax.Array, key: jax.Array, *, max_new: int,
           end_id: int, temperature: float = 1.0, greedy: bool = False) -> dict[str, jax.Array]:
    """Extend each prompt by up to ``max_new`` tokens (stopping after ``end_id``).

    Returns ``tokens`` [B, W] (prompt + completion, 0-padded), ``mask`` [B, W] (1 where the *next* token was
    generated: the convention of ``arith.encode_pairs``), ``logprobs`` [B, W] (the sampling distribution's
    log-probability of that next token, at the same index) and ``lengths`` [B] of the completions.
    """
    B, W = tokens.shape
    rows = jnp.arange(B)

    def body(carry):
        t, toks, mask, logps, done, key = carry
        key, sub = jax.random.split(key)
        pos = lengths + t                                   # where this step's token goes
        logits = apply(params, toks)[rows, jnp.clip(pos - 1, 0, W - 1)].astype(jnp.float32)
        logp = jax.nn.log_softmax(logits if greedy else logits / temperature, axis=-1)
        nxt = jnp.argmax(logits, -1) if greedy else jax.random.categorical(sub, logp)
        live = ~done & (pos < W)
        toks = toks.at[rows, pos].set(jnp.where(live, nxt, toks[rows, jnp.clip(pos, 0, W - 1)]), mode="drop")
        mask = mask.at[rows, pos - 1].set(jnp.where(live, 1.0, mask[rows, pos - 1]), mode="drop")
        logps = logps.at[rows, pos - 1].set(jnp.where(live, logp[rows, nxt], logps[rows, pos - 1]), mode="drop")
        return t + 1, toks, mask, logps, done | (live & (nxt == end_id)) | (pos >= W - 1), key

    init = (0, tokens, jnp.zeros((B, W), jnp.float32), jnp.zeros((B, W), jnp.float32), jnp.zeros(B, bool), key)
    running = lambda c: (c[0] < max_new) & ~jnp.all(c[4])        # stop early once every row has ended
    _, toks, mask, logps, _, _ = jax.lax.while_loop(running, body, init)
    return {"tokens": toks, "mask": mask, "logprobs": logps, "lengths": mask.sum(-1).astype(jnp.int32)}


def completions(vocab, out: dict, lengths) -> list[str]:
    """The generated text of each row (from its prompt's end, through its end token if any)."""
    toks = jax.device_get(out["tokens"])
    n = jax.device_get(out["lengths"])
    return [vocab.decode(toks[b, int(lengths[b]): int(lengths[b]) + int(n[b])]) for b in range(len(n))]
