"""Speculative decoding with two KV-cached models: ``CachedLM`` turns a model into the
``tokens -> next-token probabilities`` function ``decode.speculative.speculative_generate`` calls
(Leviathan et al. 2023; Chen et al. 2023), its distributions through ``decode.filters.filter_logits``."""
from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lineage_jax.decode.args import check
from lineage_jax.decode.filters import filter_logits
from lineage_jax.decode.kv_cache import init_cache
from lineage_jax.decode.speculative import speculative_generate

__all__ = ["CachedLM", "speculative_sample"]


@functools.partial(jax.jit, static_argnames=("model", "temperature", "top_k", "top_p", "vocab_limit"))
def _chunk_probs(model, params, cache, chunk, start, *, temperature, top_k, top_p, vocab_limit):
    """Feed chunk [1, W] at positions start.. -> (next-token probabilities [W, V] after each, cache)."""
    pos = start + jnp.arange(chunk.shape[1], dtype=jnp.int32)[None]
    logits, cache = model.apply({"params": params}, chunk, cache=cache, positions=pos)
    logits = filter_logits(logits[0], temperature=temperature, top_k=top_k, top_p=top_p, vocab_limit=vocab_limit)
    return jax.nn.softmax(logits, axis=-1), cache


class CachedLM:
    """A model as a ``tokens -> next-token probabilities`` function for ``speculative_generate``, with a KV cache.

    Keys and values of the longest prefix shared with the previous call stay in the cache; only
    the rest is fed (padded to a power of two, so a handful of compiles serve any length). Slots
    past the valid prefix may hold stale keys from rejected drafts: a query never sees a slot
    beyond its own position, and every slot at or below it is rewritten first.
    Probabilities are after the vocabulary limit and temperature / top-k / top-p (temperature 0:
    the plain softmax, whose argmax is the greedy token); ids >= ``vocab_limit`` have probability 0.
    """

    def __init__(self, model, params, *, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
                 vocab_limit: int | None = None):
        self.model, self.params = model, params
        self.kw = check(temperature=temperature, top_k=top_k, top_p=top_p, vocab_limit=vocab_limit)
        self.cache, self.seen = init_cache(model.cfg, 1), []
        self.calls = 0

    def probs(self, tokens, rows: int) -> np.ndarray:
        """Distributions [rows, V] of the token after each of the last ``rows`` prefixes of ``tokens``."""
        tokens = [int(t) for t in tokens]
        t, C = len(tokens), self.model.cfg.context
        if not rows <= t <= C:
            raise ValueError(f"{t} tokens: need {rows}..{C} (the model's context)")
        m = 0
        while m < min(len(self.seen), t) and self.seen[m] == tokens[m]:
            m += 1
        s = min(m, t - rows)
        feed = tokens[s:]
        W = 1 << (len(feed) - 1).bit_length()
        chunk = np.zeros((1, W), np.int32)
        chunk[0, :len(feed)] = feed
        p, self.cache = _chunk_probs(self.model, self.params, self.cache, jnp.asarray(chunk), jnp.int32(s), **self.kw)
        self.seen, self.calls = tokens, self.calls + 1
        return np.asarray(p)[t - rows - s:t - s]


def speculative_sample(target: tuple, draft: tuple, prompt: Sequence[int], max_new_tokens: int, gamma: int, *,
                       temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0,
                       eos_id: int | None = None, vocab_limit: int | None = None):
    """Speculative decoding (``decode.speculative.speculative_generate``) with two KV-cached models.

    ``target`` and ``draft`` are (model, params) sharing a vocabulary. Both distributions are
    post-filter (temperature, top-k, top-p), so the output follows the target's filtered
    sampling distribution exactly; temperature 0 is greedy (output = the target's greedy output).
    New tokens are limited so prompt + proposals fit both contexts (the prompt is cut to its last
    C - gamma - 1 tokens): the caches are fixed at the context, so a long generation stops there.
    No id >= ``vocab_limit`` is drawn. Returns (tokens, counters): target_calls, draft_tokens_proposed,
    draft_tokens_accepted, new_tokens and prompt_tokens_kept (the prompt ids kept, which ``tokens`` starts with).
    """
    kw = check(max_new_tokens=max_new_tokens, gamma=gamma)
    gamma = kw["gamma"]
    C = min(target[0].cfg.context, draft[0].cfg.context)
    if C < gamma + 2:
        raise ValueError(f"gamma={gamma}: the context {C} must hold at least gamma + 2 tokens")
    prompt = list(prompt)[-(C - gamma - 1):]
    max_new = min(kw["max_new_tokens"], C - gamma - len(prompt) + 1)
    t_lm, d_lm = (CachedLM(m, p, temperature=temperature, top_k=top_k, top_p=top_p, vocab_limit=vocab_limit)
                  for m, p in (target, draft))
    toks, counters = speculative_generate(jax.random.key(seed), lambda x: d_lm.probs(x, 1)[0],
                                          lambda x: t_lm.probs(x, gamma + 1), prompt, max_new, gamma,
                                          temperature=0.0 if temperature == 0 else 1.0, eos_id=eos_id)
    return [int(t) for t in toks], {**counters, "new_tokens": len(toks) - len(prompt), "prompt_tokens_kept": len(prompt)}
