"""Transformer-XL (Dai et al. 2019): segment recurrence with relative positions.

Claims: the relative shift puts the distance-(M + i − j) score at (i, j) for every visible key
(App. B), equal to a direct gather; the layer computes §3.3's A_ij = (q_i + u)ᵀk_j + (q_i + v)ᵀW_R R_{i−j}
(checked against the formula written out in numpy); with memory, a segment's output equals
attending over the concatenated segments (keeping the last segment's queries), segment after
segment; no gradient flows into the memory.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lineage_jax.attention.xl import (RelativeMultiHeadAttention, rel_gather, rel_shift, relative_encoding,
                                      update_memory)

D, H, K = 16, 2, 8


@pytest.mark.parametrize("T,S", [(5, 5), (4, 9), (1, 6)])
def test_rel_shift_puts_each_distance_at_its_key(T, S):
    """rel_shift(x)[i, j] = x[i, slot of distance M + i − j] for every key j ≤ M + i; = rel_gather."""
    x = jax.random.normal(jax.random.key(0), (2, 3, T, S))
    M = S - T
    shifted, gathered = np.asarray(rel_shift(x)), np.asarray(rel_gather(x))
    xn = np.asarray(x)
    for i in range(T):
        for j in range(M + i + 1):
            slot = S - 1 - (M + i - j)                 # slot p holds distance S − 1 − p
            np.testing.assert_array_equal(shifted[..., i, j], xn[..., i, slot])
            np.testing.assert_array_equal(gathered[..., i, j], xn[..., i, slot])


def _layer_and_params(seed=0, T=6, M=0):
    layer = RelativeMultiHeadAttention(heads=H, head_dim=K, init_std=0.3)
    h = jnp.zeros((1, T, D))
    mem = None if M == 0 else jnp.zeros((1, M, D))
    params = nn.unbox(jax.jit(layer.init)(jax.random.key(seed), h, mem))["params"]   # one compile, not one per op
    # u and v start at zero: give them values so that the test sees their terms
    params = {**params, "u": 0.5 * jax.random.normal(jax.random.key(seed + 1), (H, K)),
              "v": 0.5 * jax.random.normal(jax.random.key(seed + 2), (H, K))}
    return layer, params


def _sinusoid(pos):
    """Vaswani et al.'s PE(pos): sin(pos/10000^(2i/D)) at 2i, cos at 2i + 1."""
    angle = pos / 10000.0 ** (np.arange(0, D, 2) / D)
    return np.stack([np.sin(angle), np.cos(angle)], axis=-1).reshape(D)


def _paper_formula(params, h, mem):
    """§3.3 in numpy: A_ij = (q_i + u)ᵀ k_j + (q_i + v)ᵀ W_R R_{M+i−j}, causal over [mem ∘ h], / √K."""
    p = jax.tree.map(np.asarray, params)
    h, mem = np.asarray(h, np.float64), np.asarray(mem, np.float64)
    cat = np.concatenate([mem, h], axis=1)
    B, T, M, S = h.shape[0], h.shape[1], mem.shape[1], cat.shape[1]
    q = np.einsum("btd,dhk->bthk", h, p["query"]["kernel"])
    k = np.einsum("bsd,dhk->bshk", cat, p["key"]["kernel"])
    v = np.einsum("bsd,dhk->bshk", cat, p["value"]["kernel"])
    out = np.zeros((B, T, H, K))
    for i in range(T):
        for hd in range(H):
            scores = np.full((B, S), -np.inf)
            for j in range(M + i + 1):
                dist = M + i - j
                R = _sinusoid(dist)                                        # R_{i−j}
                r = R @ p["pos"]["kernel"][:, hd]                          # W_R R_{i−j}
                scores[:, j] = (np.einsum("bk,bk->b", q[:, i, hd] + p["u"][hd], k[:, j, hd])    # (a) + (c)
                                + np.einsum("bk,k->b", q[:, i, hd] + p["v"][hd], r))          # (b) + (d)
            a = np.exp(scores / np.sqrt(K) - (scores / np.sqrt(K)).max(-1, keepdims=True))
            a /= a.sum(-1, keepdims=True)
            out[:, i, hd] = np.einsum("bs,bsk->bk", a, v[:, :, hd])
    return np.einsum("bthk,hkd->btd", out, p["out"]["kernel"])


def test_layer_computes_the_papers_relative_score():
    T, M = 5, 4
    layer, params = _layer_and_params(T=T, M=M)
    h = jax.random.normal(jax.random.key(3), (1, T, D))
    mem = jax.random.normal(jax.random.key(4), (1, M, D))
    got = jax.jit(layer.apply)({"params": params}, h, mem)
    np.testing.assert_allclose(relative_encoding(4, D)[0], _sinusoid(3), atol=1e-6)     # row p: distance S−1−p
    np.testing.assert_allclose(got, _paper_formula(params, h, mem), atol=1e-5, rtol=1e-5)


def test_with_memory_equals_attending_over_the_concatenation():
    T, M = 6, 6
    layer, params = _layer_and_params(T=T, M=M)
    x1, x2 = (jax.random.normal(jax.random.key(s), (2, T, D)) for s in (5, 6))
    apply = jax.jit(layer.apply)
    with_mem = apply({"params": params}, x2, x1)
    whole = apply({"params": params}, jnp.concatenate([x1, x2], axis=1))
    np.testing.assert_allclose(with_mem, whole[:, M:], atol=1e-5)


def test_segment_recurrence_equals_one_pass_over_all_segments():
    """Three segments in turn, memory updated by update_memory (long enough), = the whole sequence at once."""
    T, n = 4, 3
    layer, params = _layer_and_params(T=T)
    x = jax.random.normal(jax.random.key(7), (2, n * T, D))
    mem, outs = None, []
    apply = jax.jit(lambda h, m: layer.apply({"params": params}, h, m))
    for s in range(n):
        seg = x[:, s * T:(s + 1) * T]
        outs.append(apply(seg, mem) if mem is not None else layer.apply({"params": params}, seg))
        mem = update_memory(mem, seg, mem_len=n * T)
    np.testing.assert_allclose(jnp.concatenate(outs, axis=1), layer.apply({"params": params}, x), atol=1e-5)
    # a shorter memory keeps only the most recent states
    short = update_memory(jnp.zeros((2, 3, D)), x[:, :T], mem_len=3)
    np.testing.assert_array_equal(short, x[:, 1:T])


def test_no_gradient_flows_into_the_memory():
    T, M = 4, 4
    layer, params = _layer_and_params(T=T, M=M)
    h, mem = jax.random.normal(jax.random.key(8), (1, T, D)), jax.random.normal(jax.random.key(9), (1, M, D))
    g_h, g_mem = jax.jit(jax.grad(lambda h, m: layer.apply({"params": params}, h, m).sum(), (0, 1)))(h, mem)
    assert np.abs(g_h).max() > 0
    np.testing.assert_array_equal(g_mem, 0)


def test_parameters_carry_logical_axes():
    layer = RelativeMultiHeadAttention(heads=H, head_dim=K)
    boxed = layer.init(jax.random.key(0), jnp.zeros((1, 3, D)))["params"]
    names = jax.tree.map(lambda p: p.names, boxed, is_leaf=lambda p: isinstance(p, nn.Partitioned))
    assert names["query"]["kernel"] == ("embed", "heads", "kv")
    assert names["pos"]["kernel"] == ("embed", "heads", "kv")
    assert names["u"] == ("heads", "kv") and names["v"] == ("heads", "kv")
    assert names["out"]["kernel"] == ("heads", "kv", "embed")
