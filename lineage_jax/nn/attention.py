"""The attention core every model shares: causal softmax attention in query chunks, and
attention of new queries over a KV cache. Kernels beyond these (blockwise/Flash, cuDNN,
Pallas) live in ``lineage_jax.attention``; ``lineage_jax.attention.attend_causal`` picks one."""
from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp

def causal_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, chunks: int = 1,
                     dropout: Callable[[jax.Array], jax.Array] | None = None,
                     segment_ids: jax.Array | None = None) -> jax.Array:
    """softmax(q kᵀ / √K + causal mask) v (Vaswani et al. 2017, eq. 1), in query chunks.

    q, k, v: [B, T, H, K] -> [B, T, H, K]. The T queries are split into ``chunks`` blocks;
    block i attends only to keys 0 … (i+1)·T/chunks, so the fully masked blocks above the
    diagonal are never computed (a fraction (C-1)/(2C) of the work). Softmax is in float32.
    ``segment_ids`` [B, T]: packed documents (T5-style packing) do not see each other; the
    diagonal is always visible, so no row is fully masked.
    """
    B, T, H, K = q.shape
    if T % chunks:
        chunks = 1
    c = T // chunks
    scale = 1.0 / math.sqrt(K)
    # Contract in the [B, T, H, K] layout and let XLA choose the head-major layouts for the dots:
    # explicit head transposes here were copied once more per chunk (~2% of the benchmark step).
    q = q * jnp.asarray(scale, q.dtype)
    outs = []
    for i in range(chunks):
        lo, hi = i * c, (i + 1) * c
        s = jnp.einsum("bqhk,bshk->bhqs", q[:, lo:hi], k[:, :hi]).astype(jnp.float32)
        visible = (lo + jnp.arange(c))[:, None] >= jnp.arange(hi)[None, :]
        if segment_ids is not None:   # [B, 1, c, hi]
            visible = visible & (segment_ids[:, lo:hi, None] == segment_ids[:, None, :hi])[:, None]
        s = jnp.where(visible, s, jnp.finfo(jnp.float32).min)
        p = jax.nn.softmax(s, axis=-1).astype(v.dtype)
        if dropout is not None:
            p = dropout(p)
        outs.append(jnp.einsum("bhqs,bshk->bqhk", p, v[:, :hi]))
    return outs[0] if chunks == 1 else jnp.concatenate(outs, axis=1)


def cached_attention(q: jax.Array, k: jax.Array, v: jax.Array, positions: jax.Array) -> jax.Array:
    """Attention of T new queries over a KV cache: q [B, T, H, K], k/v [B, C, H, K], positions [B, T].

    Query t of row b sees cache slots s <= positions[b, t] (the causal mask by position, so rows of
    different lengths share one shape); softmax in float32, as ``causal_attention``.
    """
    scale = 1.0 / math.sqrt(q.shape[-1])
    with jax.named_scope("attention_cached"):
        s = jnp.einsum("bqhk,bshk->bhqs", q * jnp.asarray(scale, q.dtype), k).astype(jnp.float32)
        visible = positions[:, None, :, None] >= jnp.arange(k.shape[1])[None, None, None, :]
        s = jnp.where(visible, s, jnp.finfo(jnp.float32).min)
        p = jax.nn.softmax(s, axis=-1).astype(v.dtype)
        return jnp.einsum("bhqs,bshk->bqhk", p, v)
