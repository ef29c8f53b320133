"""How a Transformer learns where a token is: the position-encoding lineage, as pure functions.

    sinusoidal          absolute, added to the embeddings      Vaswani et al. 2017, §3.5
    rope_*              relative, a rotation of q and k        Su et al. 2021 (RoFormer)
    alibi_*             relative, a linear bias on the scores  Press, Smith & Lewis 2022
    t5_*                relative, a learned bias per bucket    Raffel et al. 2020 (T5), §2.1

Shapes: x [..., T, H, K] (time, heads, head dim), positions [..., T] (integers), biases
[H, T, S] (heads, queries, keys) — the layout ``lineage_jax.attention.mha.attention`` adds.
Every angle and bias is computed in float32.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np


# --------------------------------------------------------------------------- sinusoidal

def sinusoidal(positions: jax.Array, dim: int, max_timescale: float = 10000.0) -> jax.Array:
    """The Transformer's fixed position encoding (Vaswani et al. 2017, §3.5):

        PE(pos, 2i)   = sin(pos / 10000^(2i/d))
        PE(pos, 2i+1) = cos(pos / 10000^(2i/d))

    sines on the even features, cosines on the odd ones (the paper's interleaving; some code
    bases concatenate all sines then all cosines, a permutation of the same features). Each
    pair (2i, 2i+1) turns at the angular frequency ω_i = 10000^(-2i/d), so PE(pos + k) is a
    linear function of PE(pos) — a rotation by k·ω_i per pair, the paper's reason for
    choosing it ("to easily learn to attend by relative positions").

    positions: integer or float array [...]; returns float32 [..., dim] (dim even).
    """
    if dim % 2:
        raise ValueError(f"sinusoidal needs an even dim, got {dim}")
    omega = max_timescale ** (-jnp.arange(0, dim, 2, dtype=jnp.float32) / dim)   # [dim/2]
    angle = jnp.asarray(positions, jnp.float32)[..., None] * omega               # [..., dim/2]
    return jnp.stack([jnp.sin(angle), jnp.cos(angle)], axis=-1).reshape(*angle.shape[:-1], dim)


# --------------------------------------------------------------------------- RoPE

def rope_frequencies(head_dim: int, theta: float = 10000.0) -> jax.Array:
    """θ_i = theta^(-2i/K) for i = 0 … K/2 − 1 (Su et al. 2021, eq. 15), float32 [K/2]."""
    if head_dim % 2:
        raise ValueError(f"RoPE needs an even head dim, got {head_dim}")
    return 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))


def _angles(positions: jax.Array, head_dim: int, theta: float):
    """cos, sin of m·θ_i, shaped [..., T, 1, K/2] to broadcast over the heads of x [..., T, H, K]."""
    angle = jnp.asarray(positions, jnp.float32)[..., None] * rope_frequencies(head_dim, theta)
    return jnp.cos(angle)[..., None, :], jnp.sin(angle)[..., None, :]


def rope_rotate_half(x: jax.Array, positions: jax.Array, theta: float = 10000.0) -> jax.Array:
    """Rotary position embedding (Su et al. 2021, eq. 34), GPT-NeoX / Hugging Face Llama layout.

    RoPE rotates each 2-D pair of features of q and k at position m by the angle m·θ_i,
    θ_i = theta^(-2i/K):

        RoPE(x, m)_pair_i = [[cos mθ_i, −sin mθ_i], [sin mθ_i, cos mθ_i]] · x_pair_i

    so that ⟨RoPE(q, m), RoPE(k, n)⟩ = Re[Σ_i q_i conj(k_i) e^{i(m−n)θ_i}] depends on the
    positions only through m − n (eq. 16): attention becomes relative.

    In this layout pair i is (x_i, x_{i+K/2}) — the first half of the head dim pairs with the
    second half — written as x·cos + rotate_half(x)·sin with rotate_half(x) = [−x₂, x₁].

    x: [..., T, H, K]; positions: [..., T] (broadcastable to x's leading axes); returns x's
    dtype, computed in float32.
    """
    K = x.shape[-1]
    cos, sin = _angles(positions, K, theta)
    xf = x.astype(jnp.float32)
    x1, x2 = xf[..., :K // 2], xf[..., K // 2:]
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x.dtype)


def rope_interleaved(x: jax.Array, positions: jax.Array, theta: float = 10000.0) -> jax.Array:
    """Rotary position embedding (Su et al. 2021, eq. 34) in the original interleaved layout.

    The same rotation as ``rope_rotate_half`` but pair i is the adjacent features
    (x_{2i}, x_{2i+1}), read as the complex number x_{2i} + i·x_{2i+1} and multiplied by
    e^{i·m·θ_i} — the paper's eq. 34 and Meta's original Llama code:

        out_{2i}   = x_{2i} cos mθ_i − x_{2i+1} sin mθ_i
        out_{2i+1} = x_{2i} sin mθ_i + x_{2i+1} cos mθ_i

    x: [..., T, H, K]; positions: [..., T]; returns x's dtype, computed in float32.
    """
    K = x.shape[-1]
    cos, sin = _angles(positions, K, theta)
    xf = x.astype(jnp.float32).reshape(*x.shape[:-1], K // 2, 2)
    a, b = xf[..., 0], xf[..., 1]
    out = jnp.stack([a * cos - b * sin, a * sin + b * cos], axis=-1).reshape(x.shape)
    return out.astype(x.dtype)


def _permute_head_dim(w: jax.Array, axis: int, head_dim: int | None, order) -> jax.Array:
    """Apply index permutation ``order(K)`` along ``axis``, whose size is K or (a multiple of) head_dim."""
    w = jnp.asarray(w)
    axis = axis % w.ndim
    n = w.shape[axis]
    K = n if head_dim is None else head_dim
    if n % K or K % 2:
        raise ValueError(f"axis {axis} of size {n} is not a whole number of even heads of {K}")
    idx = (np.arange(n // K)[:, None] * K + order(K)[None, :]).reshape(-1)
    return jnp.take(w, jnp.asarray(idx), axis=axis)


def _half_from_interleaved(K: int) -> np.ndarray:
    # new index j·K/2 + i reads old index 2i + j: evens first, then odds
    return np.concatenate([np.arange(0, K, 2), np.arange(1, K, 2)])


def _interleaved_from_half(K: int) -> np.ndarray:
    return np.argsort(_half_from_interleaved(K))


def interleaved_to_half(w: jax.Array, axis: int = -1, head_dim: int | None = None) -> jax.Array:
    """Permute a q or k projection so ``rope_rotate_half`` reproduces ``rope_interleaved``.

    Acts on the output (head-dim) axis ``axis`` of the projection weight (and bias): feature
    2i + j moves to j·K/2 + i (evens first, then odds) — the permutation Hugging Face's
    Llama conversion script applies to Meta's wq and wk. ``head_dim``: when ``axis`` holds
    several heads flattened (H·K, as in a torch [H·K, D] weight), the head dim K, and each
    head is permuted on its own.

    Why the scores do not change: let P be this permutation matrix. It maps pair
    (2i, 2i+1) onto pair (i, i + K/2), so the two layouts' rotations are the same rotation
    relabelled, R_half(m) = P R_int(m) Pᵀ, and

        RoPE_half(P q, m) = P R_int(m) q = P RoPE_int(q, m).

    Permuting W_q and W_k gives q' = P q and k' = P k, hence

        ⟨RoPE_half(q', m), RoPE_half(k', n)⟩ = ⟨P RoPE_int(q, m), P RoPE_int(k, n)⟩
                                              = ⟨RoPE_int(q, m), RoPE_int(k, n)⟩

    because P is orthogonal (PᵀP = I). The attention scores — and so the model — are
    unchanged; only the order of q's and k's features differs, which nothing downstream
    sees (v and the output projection are not permuted).
    """
    return _permute_head_dim(w, axis, head_dim, _half_from_interleaved)


def half_to_interleaved(w: jax.Array, axis: int = -1, head_dim: int | None = None) -> jax.Array:
    """The inverse of ``interleaved_to_half``: feature j·K/2 + i moves back to 2i + j."""
    return _permute_head_dim(w, axis, head_dim, _interleaved_from_half)


# --------------------------------------------------------------------------- ALiBi

def _alibi_power_of_two(n: int) -> list[float]:
    start = 2.0 ** (-8.0 / n)          # 2^(-8/n); slope k is start^k = 2^(-8k/n)
    return [start ** k for k in range(1, n + 1)]


def alibi_slopes(n_heads: int) -> jax.Array:
    """ALiBi's per-head slopes m_h (Press, Smith & Lewis 2022, §3), float32 [n_heads].

    For n a power of two, the geometric sequence m_k = 2^(−8k/n), k = 1 … n (for 8 heads
    1/2, 1/4, …, 1/256). Otherwise the paper's recipe: take the n' = 2^⌊log₂ n⌋ slopes of the
    closest lower power of two, then the remaining n − n' from the slopes of 2n' heads,
    every other one starting with the first (m_1, m_3, m_5, … of 2n' heads), which
    interleave between the first ones.
    """
    if n_heads < 1:
        raise ValueError(f"n_heads must be positive, got {n_heads}")
    lower = 2 ** int(math.floor(math.log2(n_heads)))
    slopes = _alibi_power_of_two(lower)
    if lower != n_heads:
        slopes += _alibi_power_of_two(2 * lower)[0::2][:n_heads - lower]
    return jnp.asarray(slopes, jnp.float32)


def alibi_bias(slopes: jax.Array, T: int) -> jax.Array:
    """ALiBi's bias on the attention scores (Press, Smith & Lewis 2022, eq. in §3):

        softmax(q_i Kᵀ + m · [−(i−1), …, −2, −1, 0])

    i.e. bias[h, i, j] = −m_h · (i − j): a penalty linear in the distance to key j, with no
    position embedding anywhere else. Returns float32 [H, T, T]. For keys j > i (which a
    causal mask removes) the same linear form continues, m·(j − i), so each row differs
    from BLOOM's m·j (``build_alibi_tensor``) only by a constant, to which softmax is blind.
    Use with ``causal_mask``.
    """
    pos = jnp.arange(T, dtype=jnp.float32)
    return jnp.asarray(slopes, jnp.float32)[:, None, None] * (pos[None, :] - pos[:, None])[None]


# --------------------------------------------------------------------------- T5 relative buckets

def t5_relative_bucket(relative_position: jax.Array, bidirectional: bool = True,
                       num_buckets: int = 32, max_distance: int = 128) -> jax.Array:
    """T5's relative position buckets (Raffel et al. 2020, §2.1; Mesh TensorFlow).

    relative_position = key position − query position. Bidirectional: half the buckets for
    keys before the query (and itself), half for keys after; causal: all buckets for keys
    at or before the query (later keys fall into bucket 0, which the causal mask removes).
    Within a side of b buckets, distances n < b/2 each get their own bucket ("exact"); the
    rest are log-spaced up to max_distance, everything farther shares the last bucket:

        bucket(n) = n                                                       n < b/2
                  = min(b − 1, b/2 + ⌊log(n / (b/2)) / log(max_distance / (b/2)) · b/2⌋)   otherwise

    Returns int32 buckets in [0, num_buckets), relative_position's shape. The logarithm is
    taken in float32 in the reference's order of operations so the floors agree exactly.
    """
    rp = jnp.asarray(relative_position, jnp.int32)
    bucket = jnp.zeros_like(rp)
    if bidirectional:
        num_buckets //= 2
        bucket = bucket + (rp > 0).astype(jnp.int32) * num_buckets
        n = jnp.abs(rp)
    else:
        n = -jnp.minimum(rp, 0)
    max_exact = num_buckets // 2
    is_small = n < max_exact
    scaled = (jnp.log(jnp.maximum(n, 1).astype(jnp.float32) / max_exact)
              / jnp.float32(math.log(max_distance / max_exact)) * (num_buckets - max_exact))
    large = jnp.minimum(max_exact + scaled.astype(jnp.int32), num_buckets - 1)
    return bucket + jnp.where(is_small, n, large)


def t5_bias(table: jax.Array, qlen: int, klen: int, bidirectional: bool = True,
            max_distance: int = 128, query_offset: int = 0) -> jax.Array:
    """T5's learned relative position bias: bias[h, i, j] = table[bucket(j − i), h].

    table: [num_buckets, H] (one scalar per bucket and head, shared by all layers in T5);
    queries sit at positions query_offset + 0 … qlen − 1 (offset: tokens already decoded),
    keys at 0 … klen − 1. Returns [H, qlen, klen] in the table's dtype, added to the
    scores before the softmax (T5 does not scale q·k by 1/√K; that is the model's choice).
    """
    rel = jnp.arange(klen)[None, :] - (query_offset + jnp.arange(qlen))[:, None]
    buckets = t5_relative_bucket(rel, bidirectional, table.shape[0], max_distance)
    return jnp.take(table, buckets, axis=0).transpose(2, 0, 1)
