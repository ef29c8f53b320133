"""Multi-head, multi-query and grouped-query attention equal a per-head loop and jax.nn's; the masks do
what they claim: causal, padding, and packed segments that never see each other."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lineage_jax.attention.mha import attention, causal_mask, combine_masks, padding_mask, segment_mask
from lineage_jax.attention.positions import alibi_bias, alibi_slopes

attn = jax.jit(attention)          # one compile per shape instead of one per eager op


def _naive(q, k, v, mask=None, bias=None):
    """One (batch, head) at a time in float64: query head h reads key/value head h // (H / Hkv)."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    B, T, H, K = q.shape
    S, Hkv = k.shape[1], k.shape[2]
    mask = None if mask is None else np.broadcast_to(np.asarray(mask), (B, H, T, S))
    bias = None if bias is None else np.broadcast_to(np.asarray(bias, np.float64), (B, H, T, S))
    out = np.zeros((B, T, H, v.shape[-1]))
    for b in range(B):
        for h in range(H):
            n = h // (H // Hkv)
            s = q[b, :, h] @ k[b, :, n].T / np.sqrt(K)
            if bias is not None:
                s = s + bias[b, h]
            if mask is not None:
                s = np.where(mask[b, h], s, -np.inf)
            p = np.exp(s - s.max(-1, keepdims=True))
            out[b, :, h] = (p / p.sum(-1, keepdims=True)) @ v[b, :, n]
    return out


def _qkv(H, Hkv, B=2, T=12, S=None, K=8, seed=0, dtype=jnp.float32):
    S = T if S is None else S
    kq, kk, kv = jax.random.split(jax.random.key(seed), 3)
    return (jax.random.normal(kq, (B, T, H, K), dtype), jax.random.normal(kk, (B, S, Hkv, K), dtype),
            jax.random.normal(kv, (B, S, Hkv, K), dtype))


VARIANTS = [(4, 4), (8, 2), (6, 3), (4, 1)]        # MHA, GQA, GQA, MQA


@pytest.mark.parametrize("H,Hkv", VARIANTS)
def test_equals_a_per_head_loop(H, Hkv):
    q, k, v = _qkv(H, Hkv)
    np.testing.assert_allclose(attn(q, k, v), _naive(q, k, v), atol=1e-5)
    mask = combine_masks(causal_mask(12), padding_mask(jnp.array([12, 7]), 12))
    bias = alibi_bias(alibi_slopes(H), 12)
    np.testing.assert_allclose(attn(q, k, v, mask=mask, bias=bias), _naive(q, k, v, mask, bias), atol=1e-5)


@pytest.mark.parametrize("H,Hkv", VARIANTS)
def test_grouped_equals_multi_head_with_repeated_kv(H, Hkv):
    """GQA ≡ MHA whose key/value head n is copied to query heads n·G … n·G + G − 1 (HF repeat_kv);
    Hkv = 1 is MQA (every head reads the one key/value head)."""
    q, k, v = _qkv(H, Hkv, seed=1)
    G = H // Hkv
    rep = lambda a: jnp.repeat(a, G, axis=2)
    mask = causal_mask(12)
    chex.assert_trees_all_close(attn(q, k, v, mask=mask), attn(q, rep(k), rep(v), mask=mask),
                                atol=1e-6, rtol=1e-6)
    if Hkv == 1:
        for h in range(H):        # every head is single-head attention against the one key/value head
            chex.assert_trees_all_close(attn(q, k, v, mask=mask)[:, :, h:h + 1],
                                        attn(q[:, :, h:h + 1], k, v, mask=mask), atol=1e-6)


@pytest.mark.parametrize("H,Hkv", VARIANTS)
def test_equals_jax_nn_dot_product_attention(H, Hkv):
    q, k, v = _qkv(H, Hkv, seed=2)
    chex.assert_trees_all_close(attn(q, k, v, mask=causal_mask(12)),
                                jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="xla"),
                                atol=1e-5, rtol=1e-5)
    bias = jnp.broadcast_to(alibi_bias(alibi_slopes(H), 12), (2, H, 12, 12))
    mask = jnp.broadcast_to(combine_masks(causal_mask(12), padding_mask(jnp.array([12, 9]), 12)), (2, H, 12, 12))
    chex.assert_trees_all_close(attn(q, k, v, mask=mask, bias=bias),
                                jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask, implementation="xla"),
                                atol=1e-5, rtol=1e-5)
    loss = lambda f: lambda q, k, v: jnp.sum(f(q, k, v) ** 2)
    g = jax.jit(jax.grad(loss(lambda q, k, v: attn(q, k, v, mask=causal_mask(12))), argnums=(0, 1, 2)))(q, k, v)
    g_ref = jax.jit(jax.grad(loss(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True)),
                     argnums=(0, 1, 2)))(q, k, v)
    chex.assert_trees_all_close(g, g_ref, atol=1e-4, rtol=1e-4)


def test_softmax_in_float32_for_bfloat16_inputs():
    q, k, v = _qkv(8, 2, seed=3)
    out = attn(*(a.astype(jnp.bfloat16) for a in (q, k, v)), mask=causal_mask(12))
    assert out.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(out, np.float32), _naive(q, k, v, causal_mask(12)), atol=5e-2)


def test_causal_mask_with_a_cache_is_the_last_rows_of_the_full_one():
    q, k, v = _qkv(4, 2, T=10, seed=4)
    full = attn(q, k, v, mask=causal_mask(10))
    last = attn(q[:, 7:], k, v, mask=causal_mask(3, 10))        # 3 new queries, 10 cached keys
    chex.assert_trees_all_close(last, full[:, 7:], atol=1e-6)
    np.testing.assert_array_equal(causal_mask(3, 5, offset=0), np.tril(np.ones((3, 5), bool)))


def test_padding_mask_from_lengths_or_bools_and_padding_is_ignored():
    q, k, v = _qkv(4, 4, seed=5)
    lengths = jnp.array([5, 12])
    valid = jnp.arange(12)[None, :] < lengths[:, None]
    np.testing.assert_array_equal(padding_mask(lengths, 12), padding_mask(valid))
    out = attn(q, k, v, mask=padding_mask(lengths, 12))
    noise = jax.random.normal(jax.random.key(6), k.shape) * 100
    k2, v2 = (jnp.where(valid[:, :, None, None], a, a + noise) for a in (k, v))
    chex.assert_trees_all_close(attn(q, k2, v2, mask=padding_mask(lengths, 12)), out, atol=1e-6)
    chex.assert_trees_all_close(out[0], attn(q[:1], k[:1, :5], v[:1, :5])[0], atol=1e-6)


SEGMENTS = jnp.array([[1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 0],      # two documents, one padding token
                      [1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 3, 3]])     # three documents


@pytest.mark.parametrize("H,Hkv", [(4, 4), (4, 2), (4, 1)])
def test_packed_segments_do_not_see_each_other(H, Hkv):
    q, k, v = _qkv(H, Hkv, seed=7)
    mask = combine_masks(causal_mask(12), segment_mask(SEGMENTS))
    out = attn(q, k, v, mask=mask)
    # change every token of segment 1: no other segment's output moves
    in1 = (SEGMENTS == 1)[:, :, None, None]
    kq, kk, kv = jax.random.split(jax.random.key(8), 3)
    q2, k2, v2 = (jnp.where(in1, jax.random.normal(r, a.shape), a) for r, a in ((kq, q), (kk, k), (kv, v)))
    out2 = attn(q2, k2, v2, mask=mask)
    np.testing.assert_array_equal(np.asarray(out2)[~np.asarray(SEGMENTS == 1)],
                                  np.asarray(out)[~np.asarray(SEGMENTS == 1)])
    assert not np.allclose(out2[SEGMENTS == 1], out[SEGMENTS == 1])


@pytest.mark.parametrize("H,Hkv", [(4, 4), (6, 2)])
def test_packed_equals_running_each_document_alone(H, Hkv):
    q, k, v = _qkv(H, Hkv, seed=9)
    out = attn(q, k, v, mask=combine_masks(causal_mask(12), segment_mask(SEGMENTS)))
    for b in range(2):
        seg = np.asarray(SEGMENTS[b])
        for s in set(seg.tolist()) - {0}:
            idx = np.flatnonzero(seg == s)                               # contiguous, as packing lays them out
            lo, hi = idx[0], idx[-1] + 1
            alone = attn(q[b:b + 1, lo:hi], k[b:b + 1, lo:hi], v[b:b + 1, lo:hi], mask=causal_mask(hi - lo))
            chex.assert_trees_all_close(out[b:b + 1, lo:hi], alone, atol=1e-6)


def test_segment_mask_between_different_query_and_key_ids():
    sq, sk = jnp.array([[1, 2]]), jnp.array([[1, 1, 2, 3]])
    np.testing.assert_array_equal(segment_mask(sq, sk)[0, 0], [[1, 1, 0, 0], [0, 0, 1, 0]])
    assert combine_masks(None, None) is None


def test_rejects_heads_that_do_not_group():
    q, k, v = _qkv(6, 4, seed=10)
    with pytest.raises(ValueError):
        attention(q, k, v)
