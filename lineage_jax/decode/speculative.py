"""Speculative decoding: a cheap draft proposes gamma tokens, the target checks them in one call.

Leviathan, Kalman & Matias 2023 ("Fast Inference from Transformers via Speculative Decoding",
Alg. 1) and Chen et al. 2023 ("Accelerating LLM Decoding with Speculative Sampling", Alg. 2).
Given draft distributions q_1..q_gamma, the draft's tokens x_i ~ q_i, and the target's
distributions p_1..p_{gamma+1} at the same positions (one target call on prefix + x_1..x_gamma):

* accept x_i with probability min(1, p_i(x_i) / q_i(x_i)), left to right;
* at the first rejection i, emit one token from the residual norm(max(0, p_i - q_i)) and stop;
* if all gamma are accepted, emit a bonus token from p_{gamma+1}.

Every emitted token is distributed exactly as the target would sample it (Leviathan et al.,
Thm. 3.5). If each acceptance has probability alpha = sum_x min(p(x), q(x)) (Def. 3.1), a target
call yields (1 - alpha^(gamma+1)) / (1 - alpha) tokens on average (eq. 1). The greedy variant
(temperature 0) accepts x_i iff it is the target's argmax and emits the target's argmax at the
first mismatch, so its output equals the target's greedy decoding token for token.

``speculative_step`` is a pure, jit-able function of arrays (vmap it for a batch);
``speculative_generate`` drives it with any ``draft_fn`` / ``target_fn`` callables.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from lineage_jax.decode.args import check

__all__ = ["speculative_step", "speculative_generate", "expected_tokens_per_call", "acceptance_rate"]


def acceptance_rate(p: jax.Array, q: jax.Array) -> jax.Array:
    """alpha = sum_x min(p(x), q(x)) = 1 - TV(p, q): the chance a draft token is accepted."""
    return jnp.minimum(p, q).sum(-1)


def expected_tokens_per_call(alpha, gamma: int):
    """(1 - alpha^(gamma+1)) / (1 - alpha): tokens per target call at i.i.d. acceptance alpha."""
    alpha = np.asarray(alpha, np.float64)
    return np.where(alpha >= 1.0, gamma + 1.0, (1.0 - alpha ** (gamma + 1)) / np.maximum(1.0 - alpha, 1e-300))


def speculative_step(key: jax.Array, draft_probs: jax.Array, draft_tokens: jax.Array,
                     target_probs: jax.Array, *, greedy: bool = False) -> tuple[jax.Array, jax.Array]:
    """One verification: draft_probs [gamma, V], draft_tokens [gamma], target_probs [gamma+1, V].

    Returns ``(tokens [gamma+1] int32, n_accepted int32)``: ``tokens[:n_accepted]`` are the accepted
    draft tokens, ``tokens[n_accepted]`` the correction (or bonus) token, the rest -1.
    """
    gamma, V = draft_probs.shape
    draft_tokens = jnp.asarray(draft_tokens, jnp.int32)
    draft_probs, target_probs = draft_probs.astype(jnp.float32), target_probs.astype(jnp.float32)
    k_accept, k_extra = jax.random.split(key)
    if greedy:
        accept = draft_tokens == jnp.argmax(target_probs[:gamma], axis=-1)
    else:
        p_x = jnp.take_along_axis(target_probs[:gamma], draft_tokens[:, None], -1)[:, 0]
        q_x = jnp.take_along_axis(draft_probs, draft_tokens[:, None], -1)[:, 0]
        u = jax.random.uniform(k_accept, (gamma,))
        accept = u * q_x < p_x                                       # u < min(1, p/q), without dividing
    n = jnp.sum(jnp.cumprod(accept.astype(jnp.int32))).astype(jnp.int32)   # leading accepts
    if greedy:
        extra = jnp.argmax(target_probs[n]).astype(jnp.int32)
    else:
        residual = jnp.maximum(target_probs[:gamma] - draft_probs, 0.0)
        mass = residual.sum(-1, keepdims=True)
        # p == q leaves no residual (and then no rejection can happen): fall back to p itself.
        residual = jnp.where(mass > 0, residual / jnp.where(mass > 0, mass, 1.0), target_probs[:gamma])
        dists = jnp.concatenate([residual, target_probs[gamma:]], axis=0)   # row gamma: the bonus p
        extra = jax.random.categorical(k_extra, jnp.log(dists[n])).astype(jnp.int32)
    i = jnp.arange(gamma + 1)
    padded = jnp.concatenate([draft_tokens, jnp.full((1,), -1, jnp.int32)])
    tokens = jnp.where(i < n, padded, jnp.where(i == n, extra, -1))
    return tokens, n


_step = jax.jit(speculative_step, static_argnames=("greedy",))


@jax.jit
def _draw(key, probs):
    return jax.random.categorical(key, jnp.log(probs.astype(jnp.float32))).astype(jnp.int32)


def _temper(probs: np.ndarray, t: float) -> np.ndarray:
    if t == 1.0 or t == 0.0:
        return probs
    logp = np.log(np.maximum(probs, 1e-38)) / t
    w = np.exp(logp - logp.max(-1, keepdims=True))
    return w / w.sum(-1, keepdims=True)


def speculative_generate(key: jax.Array, draft_fn: Callable, target_fn: Callable, prompt, max_new_tokens: int,
                         gamma: int, *, temperature: float = 1.0, eos_id: int | None = None):
    """Generate with a draft/target pair; returns ``(tokens, counters)``.

    ``draft_fn(tokens [t]) -> probs [V]`` of the next token; ``target_fn(tokens [t]) -> probs [>= gamma+1, V]``
    whose last gamma+1 rows are the next-token distributions after each of the last gamma+1
    prefixes (the rows after ``tokens[:t-gamma]``, ..., ``tokens[:t]``). ``temperature`` 0 is greedy;
    otherwise both distributions are re-tempered (p^(1/T), renormalised). ``tokens`` is prompt +
    at most ``max_new_tokens`` (fewer if ``eos_id`` is emitted). ``counters``: target_calls,
    draft_tokens_proposed, draft_tokens_accepted.
    """
    kw = check(gamma=gamma, temperature=temperature)
    gamma, temperature = kw["gamma"], kw["temperature"]
    greedy = temperature == 0
    tokens = [int(t) for t in np.asarray(prompt).reshape(-1)]
    if not tokens:
        raise ValueError("prompt must contain at least one token")
    n_prompt = len(tokens)
    counters = {"target_calls": 0, "draft_tokens_proposed": 0, "draft_tokens_accepted": 0}
    rnd = 0
    while len(tokens) - n_prompt < max_new_tokens:
        k_round = jax.random.fold_in(key, rnd)
        rnd += 1
        proposed, q_rows = [], []
        for i in range(gamma):
            q = _temper(np.asarray(draft_fn(np.asarray(tokens + proposed, np.int32)), np.float32), temperature)
            x = int(np.argmax(q)) if greedy else int(_draw(jax.random.fold_in(k_round, i), q))
            proposed.append(x)
            q_rows.append(q)
        p = np.asarray(target_fn(np.asarray(tokens + proposed, np.int32)), np.float32)[-(gamma + 1):]
        p = _temper(p, temperature)
        out, n = _step(jax.random.fold_in(k_round, gamma), np.stack(q_rows), np.asarray(proposed, np.int32), p,
                       greedy=greedy)
        n = int(n)
        counters["target_calls"] += 1
        counters["draft_tokens_proposed"] += gamma
        counters["draft_tokens_accepted"] += n
        new = np.asarray(out)[:n + 1].tolist()
        if eos_id is not None and eos_id in new:
            new = new[:new.index(eos_id) + 1]
            tokens.extend(new)
            break
        tokens.extend(new)
    return np.asarray(tokens[:n_prompt + max_new_tokens], np.int32), counters
