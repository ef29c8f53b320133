"""Transformer-XL (Dai et al. 2019): segment-level recurrence with relative positional encoding.

Recurrence (§3.2): the keys and values of segment τ+1 are computed from [SG(m_τ) ∘ h_τ+1], the
cached hidden states of the previous segment(s) (stop-gradient: no backpropagation into them)
concatenated with the current segment; the queries come from the current segment only.

Relative positions (§3.3, the score between query i and key j, distance i − j):

    A_ij = (q_i + u)ᵀ k_j  +  (q_i + v)ᵀ W_R R_{i−j}
           ─── (a)+(c) ───     ────── (b)+(d) ──────

with R the sinusoid encoding of the distance (``positions.sinusoidal``; the paper uses the
Transformer's table, here in its interleaved sin/cos layout, a fixed permutation absorbed by W_R),
W_R a learned projection and u, v learned per-head biases replacing the query in the
position-free terms.

The (b)+(d) term is computed for every query against the S relative distances S−1 … 0 at once,
[T, S], and turned into [T, S] indexed by key with the "relative shift" (App. B): pad one zero
column on the left, view the [T, S+1] buffer as [S+1, T], drop the first row and view it as
[T, S] again. Entry (i, j) is then the distance-(M + i − j) score for every visible key
(j ≤ M + i); the rest is wrapped-around garbage the causal mask removes. ``rel_shift`` ≡
``rel_gather`` (a direct gather) on the visible entries (tests/attention/test_xl.py).

Shapes: h [B, T, D] the current segment, mem [B, M, D] the memory, S = M + T; heads H, head
dim K. The mask is causal over the concatenation (key j visible to query i iff j ≤ M + i).
"""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from lineage_jax.attention import mha
from lineage_jax.attention.positions import sinusoidal
from lineage_jax.nn import Dense, param


def relative_encoding(S: int, dim: int) -> jax.Array:
    """R: [S, dim] sinusoid encodings of the distances S−1, S−2, …, 0 (column p ↔ distance S−1−p)."""
    return sinusoidal(jnp.arange(S - 1, -1, -1), dim)


def rel_shift(x: jax.Array) -> jax.Array:
    """[..., T, S] by relative slot (slot p = distance S−1−p) -> [..., T, S] by key (App. B).

    out[..., i, j] = x[..., i, j + T − 1 − i] wherever j ≤ S − T + i (the causally visible keys).
    """
    *lead, T, S = x.shape
    x = jnp.pad(x, [(0, 0)] * len(lead) + [(0, 0), (1, 0)])          # [..., T, S+1]
    x = x.reshape(*lead, S + 1, T)[..., 1:, :]                         # drop the first T entries
    return x.reshape(*lead, T, S)


def rel_gather(x: jax.Array) -> jax.Array:
    """What ``rel_shift`` computes, by indexing: out[..., i, j] = x[..., i, j + T − 1 − i] (0 where j > S − T + i)."""
    T, S = x.shape[-2:]
    i, j = jnp.arange(T)[:, None], jnp.arange(S)[None, :]
    slot = j + T - 1 - i
    visible = slot <= S - 1
    out = jnp.take_along_axis(x, jnp.broadcast_to(jnp.where(visible, slot, 0), x.shape), axis=-1)
    return jnp.where(visible, out, 0)


def relative_attention(q: jax.Array, k: jax.Array, v: jax.Array, r: jax.Array, u: jax.Array,
                       v_bias: jax.Array) -> jax.Array:
    """softmax((A_ij) / √K, causal over memory + segment) v with Transformer-XL's A_ij (§3.3).

    q [B, T, H, K] (current segment), k, v [B, S, H, K] (memory + segment, S ≥ T),
    r [S, H, K] = W_R R (the projected ``relative_encoding(S)``), u, v_bias [H, K] -> [B, T, H, K].
    """
    T, S, K = q.shape[1], k.shape[1], q.shape[-1]
    scale = 1.0 / math.sqrt(K)
    bd = jnp.einsum("bthk,shk->bhts", q + v_bias.astype(q.dtype), r, preferred_element_type=jnp.float32)
    # (a)+(c) is the scaled dot product of (q + u) with k; (b)+(d), shifted into key order, is its bias.
    return mha.attention(q + u.astype(q.dtype), k, v, mask=mha.causal_mask(T, S), bias=rel_shift(bd) * scale,
                         scale=scale)


def update_memory(mem: jax.Array | None, h: jax.Array, mem_len: int) -> jax.Array:
    """m_τ+1 = SG([m_τ ∘ h_τ])[-mem_len:]: the last ``mem_len`` states, cut from the gradient (§3.2)."""
    cat = h if mem is None else jnp.concatenate([mem.astype(h.dtype), h], axis=1)
    return jax.lax.stop_gradient(cat[:, -mem_len:])


class RelativeMultiHeadAttention(nn.Module):
    """Transformer-XL's attention layer: h [B, T, D], mem [B, M, D] or None -> [B, T, D].

    Parameters (logical axes as the GPT's): query/key/value/pos [D, H, K] ("embed", "heads",
    "kv"), the biases u, v [H, K] ("heads", "kv"), out [H, K, D]. No projection biases, as
    the paper's code.
    """
    heads: int
    head_dim: int
    init_std: float = 0.02
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, h: jax.Array, mem: jax.Array | None = None) -> jax.Array:
        H, K, D = self.heads, self.head_dim, h.shape[-1]
        proj = lambda name: Dense((H, K), ("embed", "heads", "kv"), use_bias=False, init_std=self.init_std,
                                  dtype=self.dtype, param_dtype=self.param_dtype, name=name)
        h = h.astype(self.dtype)
        cat = h if mem is None else jnp.concatenate([jax.lax.stop_gradient(mem).astype(self.dtype), h], axis=1)
        q, k, v = proj("query")(h), proj("key")(cat), proj("value")(cat)
        r = proj("pos")(relative_encoding(cat.shape[1], D).astype(self.dtype))            # [S, H, K]
        u = param(self, "u", nn.initializers.zeros, (H, K), self.param_dtype, ("heads", "kv"))
        vb = param(self, "v", nn.initializers.zeros, (H, K), self.param_dtype, ("heads", "kv"))
        y = relative_attention(q, k, v, r, u, vb)
        return Dense((D,), ("heads", "kv", "embed"), in_axes=2, use_bias=False, init_std=self.init_std,
                     dtype=self.dtype, param_dtype=self.param_dtype, name="out")(y)
