"""Scaled dot-product attention for many query heads over fewer key/value heads, and its masks.

    multi-head (MHA)      H key/value heads = H query heads     Vaswani et al. 2017, §3.2
    multi-query (MQA)     1 key/value head shared by all        Shazeer 2019
    grouped-query (GQA)   Hkv heads, each shared by H/Hkv       Ainslie et al. 2023

Masks are boolean, True where a query may attend, broadcastable to [B, H, T, S] and combined
by logical and (``combine_masks`` or ``&``):

    causal_mask(T, S)           [T, S]        no key after the query
    padding_mask(lengths, S)    [B, 1, 1, S]  no padding keys
    segment_mask(seg_q, seg_k)  [B, 1, T, S]  packed sequences: only keys of the query's segment

Dimension letters: B batch, T queries, S keys, H query heads, Hkv key/value heads,
G = H / Hkv queries per key/value head, K head dim.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def attention(q: jax.Array, k: jax.Array, v: jax.Array, *, mask: jax.Array | None = None,
              bias: jax.Array | None = None, scale: float | None = None) -> jax.Array:
    """softmax(q kᵀ / √K + bias, masked) v (Vaswani et al. 2017, eq. 1), grouped over heads.

    q: [B, T, H, K]; k, v: [B, S, Hkv, K] with H % Hkv == 0 -> [B, T, H, K].

    Query head h reads key/value head h // G (G = H / Hkv; the grouping of Ainslie et al.
    2023 and of Hugging Face's ``repeat_kv``). Hkv = H is multi-head attention, Hkv = 1
    multi-query attention (Shazeer 2019). The queries are viewed as [B, T, Hkv, G, K] and
    contracted with k over K in one einsum, so the key/value heads are never copied G times.

    mask: bool, broadcastable to [B, H, T, S], True = attend. bias: added to the scores,
    broadcastable to [B, H, T, S] (ALiBi's or T5's [H, T, S]). scale: defaults to 1/√K.
    Scores, bias and softmax are in float32; the output is in v's dtype. A query whose keys
    are all masked gets the uniform average of v (no NaN); mask such rows out downstream.
    """
    B, T, H, K = q.shape
    S, Hkv = k.shape[1], k.shape[2]
    if H % Hkv:
        raise ValueError(f"{H} query heads do not divide into {Hkv} key/value heads")
    if v.shape[:3] != k.shape[:3]:
        raise ValueError(f"k {k.shape} and v {v.shape} disagree")
    G = H // Hkv
    scale = 1.0 / math.sqrt(K) if scale is None else scale
    qg = q.reshape(B, T, Hkv, G, K)
    s = jnp.einsum("btngk,bsnk->bngts", qg, k, preferred_element_type=jnp.float32)
    s = s.reshape(B, H, T, S) * jnp.float32(scale)                  # head h = n·G + g
    if bias is not None:
        s = s + jnp.asarray(bias, jnp.float32)
    if mask is not None:
        s = jnp.where(mask, s, jnp.finfo(jnp.float32).min)
    p = jax.nn.softmax(s, axis=-1).astype(v.dtype).reshape(B, Hkv, G, T, S)
    out = jnp.einsum("bngts,bsnk->btngk", p, v)
    return out.reshape(B, T, H, v.shape[-1])


def causal_mask(T: int, S: int | None = None, offset: int | None = None) -> jax.Array:
    """[T, S] bool: query i (at position offset + i) sees key j iff j ≤ offset + i.

    S defaults to T. offset defaults to S − T: the T queries are the last T of the S
    positions (decoding with a key/value cache). For T = S it is the usual lower triangle.
    (``jax.nn.dot_product_attention(is_causal=True)`` aligns top-left, offset 0.)
    """
    S = T if S is None else S
    offset = S - T if offset is None else offset
    return jnp.arange(S)[None, :] <= offset + jnp.arange(T)[:, None]


def padding_mask(lengths_or_valid: jax.Array, S: int | None = None) -> jax.Array:
    """[B, 1, 1, S] bool: key j of row b is real. From lengths [B] (needs S) or a bool [B, S]."""
    x = jnp.asarray(lengths_or_valid)
    if x.dtype == jnp.bool_:
        if x.ndim != 2:
            raise ValueError(f"a validity mask is [B, S], got {x.shape}")
        valid = x
    else:
        if S is None:
            raise ValueError("padding_mask from lengths needs S")
        valid = jnp.arange(S)[None, :] < x.reshape(-1, 1)
    return valid[:, None, None, :]


def segment_mask(segment_ids_q: jax.Array, segment_ids_k: jax.Array | None = None) -> jax.Array:
    """[B, 1, T, S] bool: query i sees key j iff they belong to the same packed segment.

    Packing concatenates documents into one row; segment ids ([B, T], [B, S]; e.g.
    1 1 1 2 2 3 3 3 0 0) keep each document's tokens from attending to another's. With
    ``causal_mask`` (positions restarting per segment, if they are encoded) this equals
    running each document alone. Padding is just another segment id (e.g. 0).
    """
    segment_ids_k = segment_ids_q if segment_ids_k is None else segment_ids_k
    return (segment_ids_q[:, :, None] == segment_ids_k[:, None, :])[:, None]


def combine_masks(*masks: jax.Array | None) -> jax.Array | None:
    """Logical and of the masks given (None ones skipped; None if none), broadcast together."""
    out = None
    for m in masks:
        if m is not None:
            out = m if out is None else jnp.logical_and(out, m)
    return out
