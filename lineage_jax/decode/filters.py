"""Logit filters and the sampler built from them: pure functions of logits, batched over leading dims.

* greedy decoding: the argmax token;
* temperature: ``logits / t`` (Ackley, Hinton & Sejnowski 1985's Boltzmann temperature, as used in
  every LM sampler);
* top-k sampling (Fan, Lewis & Dauphin 2018, "Hierarchical Neural Story Generation"): keep the k
  most probable tokens;
* nucleus / top-p sampling (Holtzman et al. 2020, "The Curious Case of Neural Text Degeneration",
  eq. 2): keep the smallest set V^(p) of most probable tokens with sum_{x in V^(p)} P(x) >= p; the
  softmax that follows renormalises it.

Every filter chain starts with the vocabulary limit: a model whose ``vocab_size`` is padded past the
tokenizer's (GPT-2's 50257 -> 50304 is the usual case) has output rows no tokenizer id names, so
``vocab_limit`` (the tokenizer's ``vocab_size``, passed by the caller) sets ids >= it to ``-inf``
before anything else, greedy included: no sampling path can emit an id the tokenizer cannot decode.

Removed tokens get ``-inf``; every filter keeps at least one token. The semantics follow Hugging Face
``transformers``' ``TopKLogitsWarper`` / ``TopPLogitsWarper`` with ``min_tokens_to_keep=1``
(checked in ``tests/decode/test_decode_filters.py``):

* top-k keeps every token whose logit is >= the k-th largest logit, so tokens tied with the k-th
  are all kept (possibly more than k tokens);
* top-p sorts ascending, takes the cumulative softmax and removes a token when the cumulative
  probability up to and including it is <= 1 - p (i.e. the probability of the tokens ranked above
  it already reaches p); the most probable token is always kept. Among tied logits the ranking is
  by vocabulary index (a stable sort: the lower index counts as less probable and goes first);
  ``torch.sort`` is not stable, so HF's choice within a tie group straddling the boundary is
  arbitrary, but the number of tokens it keeps from that group is the same.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from lineage_jax.decode.args import check

__all__ = ["greedy", "temperature", "top_k_filter", "top_p_filter", "vocab_mask", "filter_logits", "sample"]


def greedy(logits: jax.Array) -> jax.Array:
    """[..., V] logits -> [...] int32 argmax token ids (the first index among ties)."""
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)


def temperature(logits: jax.Array, t) -> jax.Array:
    """Scale logits by 1/t (t > 0; t -> 0 approaches greedy, t > 1 flattens)."""
    return logits / t


def vocab_mask(logits: jax.Array, vocab_limit: int | None) -> jax.Array:
    """Ids >= ``vocab_limit`` (a static Python int; None: no limit) -> -inf, so they are never drawn."""
    V = logits.shape[-1]
    if vocab_limit is None or vocab_limit >= V:
        return logits
    return jnp.where(jnp.arange(V) < vocab_limit, logits, -jnp.inf)


def top_k_filter(logits: jax.Array, k) -> jax.Array:
    """Keep the tokens whose logit is >= the k-th largest (ties kept); others -> -inf.

    ``k`` may be a Python int or a traced scalar; it is clipped to [1, V], so k <= 0 keeps the
    argmax (and its ties) and k >= V keeps everything.
    """
    V = logits.shape[-1]
    k = jnp.clip(jnp.asarray(k, jnp.int32), 1, V)
    ascending = jnp.sort(logits, axis=-1)
    kth = jnp.take(ascending, V - k, axis=-1)[..., None]       # the k-th largest logit
    return jnp.where(logits < kth, -jnp.inf, logits)


def top_p_filter(logits: jax.Array, p) -> jax.Array:
    """Nucleus filter: keep the smallest most-probable set whose probability reaches ``p``.

    p = 1 keeps every token of non-zero probability; p = 0 keeps just the most probable token.
    """
    order = jnp.argsort(logits, axis=-1, stable=True)           # ascending; ties by vocabulary index
    sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
    cum = jnp.cumsum(jax.nn.softmax(sorted_logits.astype(jnp.float32), axis=-1), axis=-1)
    remove_sorted = cum <= (1.0 - jnp.asarray(p, jnp.float32))
    remove_sorted = remove_sorted.at[..., -1].set(False)        # keep at least one token
    # Scatter back to vocabulary order: the inverse permutation of `order`.
    inverse = jnp.argsort(order, axis=-1)
    remove = jnp.take_along_axis(remove_sorted, inverse, axis=-1)
    return jnp.where(remove, -jnp.inf, logits)


def filter_logits(logits: jax.Array, *, temperature: float, top_k: int = 0, top_p: float = 1.0,
                  vocab_limit: int | None = None) -> jax.Array:
    """The one filter chain: the vocabulary limit, then temperature, top-k, top-p (HF's order), in float32.

    ``vocab_limit``: ids >= it get -inf (``vocab_mask``; the tokenizer's vocabulary size when the
    model's is padded past it). ``temperature == 0`` returns the logits otherwise unfiltered (greedy
    reads their argmax); ``top_k == 0`` and ``top_p == 1`` switch those filters off. The settings are
    checked by ``decode.args.check`` and must be Python numbers (they choose the program); close over
    them under jit.
    """
    kw = check(temperature=temperature, top_k=top_k, top_p=top_p, vocab_limit=vocab_limit)
    logits = vocab_mask(logits.astype(jnp.float32), kw["vocab_limit"])
    if kw["temperature"] == 0:
        return logits
    logits = logits / kw["temperature"]
    if kw["top_k"] > 0:
        logits = top_k_filter(logits, kw["top_k"])
    if kw["top_p"] < 1.0:
        logits = top_p_filter(logits, kw["top_p"])
    return logits


def sample(key: jax.Array, logits: jax.Array, *, temperature: float = 1.0, top_k: int = 0,
           top_p: float = 1.0, vocab_limit: int | None = None) -> jax.Array:
    """Draw token ids [...] (< ``vocab_limit``) from logits [..., V] through ``filter_logits``;
    ``temperature == 0`` is greedy."""
    filtered = filter_logits(logits, temperature=temperature, top_k=top_k, top_p=top_p, vocab_limit=vocab_limit)
    if temperature == 0:
        return greedy(filtered)
    return jax.random.categorical(key, filtered, axis=-1).astype(jnp.int32)
