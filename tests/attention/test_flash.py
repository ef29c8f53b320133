"""Blockwise attention (Dao et al. 2022): the same numbers as naive attention, in linear memory.

Claims: values within 1e-5 of softmax(q kᵀ/√K) v computed whole (float32) and gradients equal,
for causal/non-causal, packed segments, additive biases (differentiable), grouped-query heads and
lengths the blocks do not divide; the saved logsumexp is the row's; memory grows linearly.
"""
import argparse

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lineage_jax.attention import mha
from lineage_jax.attention.flash import flash_attention, logsumexp_rows

TOL = 1e-5


def _qkv(B=2, T=40, S=40, H=4, Hkv=4, K=16, seed=0, dtype=jnp.float32):
    ks = jax.random.split(jax.random.key(seed), 3)
    return (jax.random.normal(ks[0], (B, T, H, K), dtype), jax.random.normal(ks[1], (B, S, Hkv, K), dtype),
            jax.random.normal(ks[2], (B, S, Hkv, K), dtype))


def _packed(B, T, n_docs, seed):
    """Sorted segment ids: each row is a few documents end to end (at least the id of row start)."""
    cuts = np.sort(np.random.default_rng(seed).integers(1, T, (B, n_docs - 1)), axis=1)
    return jnp.asarray((np.arange(T)[None, :, None] >= cuts[:, None, :]).sum(-1) + 1, jnp.int32)


def _check(flash_fn, naive_fn, args, argnums):
    """Values within TOL and gradients (of a generic cotangent) equal; one compile per side."""
    w = jax.random.normal(jax.random.key(9), naive_fn(*args).shape)

    def both(fn):
        return jax.jit(lambda *a: (fn(*a), jax.grad(lambda *b: (fn(*b) * w).sum(), argnums)(*a)))

    (o1, g1), (o2, g2) = both(flash_fn)(*args), both(naive_fn)(*args)
    np.testing.assert_allclose(o1, o2, atol=TOL, rtol=0)
    for a, b in zip(g1, g2):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("causal,T,S,bq,bk", [(False, 40, 40, 16, 16), (True, 40, 40, 16, 16),
                                              (False, 37, 53, 8, 16), (True, 37, 53, 16, 8),
                                              (True, 24, 24, 128, 128)])
def test_equals_naive_values_and_gradients(causal, T, S, bq, bk):
    q, k, v = _qkv(T=T, S=S)
    mask = mha.causal_mask(T, S) if causal else None
    _check(lambda q, k, v: flash_attention(q, k, v, causal=causal, block_q=bq, block_k=bk),
           lambda q, k, v: mha.attention(q, k, v, mask=mask), (q, k, v), (0, 1, 2))


def test_multi_query_heads():
    """MQA (and GQA in the next test): query head h reads key/value head h // (H/Hkv); dk, dv sum over the group."""
    q, k, v = _qkv(T=33, S=33, H=4, Hkv=1)
    _check(lambda q, k, v: flash_attention(q, k, v, causal=True, block_q=8, block_k=16),
           lambda q, k, v: mha.attention(q, k, v, mask=mha.causal_mask(33)), (q, k, v), (0, 1, 2))


def test_grouped_query_heads_equal_jax_nn_dot_product_attention():
    q, k, v = _qkv(T=48, S=48, H=4, Hkv=2)
    _check(lambda q, k, v: flash_attention(q, k, v, causal=True, block_q=16, block_k=16),
           lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="xla"),
           (q, k, v), (0, 1, 2))


def test_packed_segments_do_not_see_each_other():
    """Packed documents (segment ids) give each document's attention run alone."""
    B, T = 2, 45
    q, k, v = _qkv(B=B, T=T, S=T)
    seg = _packed(B, T, 3, seed=1)
    mask = mha.combine_masks(mha.causal_mask(T), mha.segment_mask(seg))
    _check(lambda q, k, v: flash_attention(q, k, v, causal=True, segment_ids=seg, block_q=8, block_k=8),
           lambda q, k, v: mha.attention(q, k, v, mask=mask), (q, k, v), (0, 1, 2))
    out = flash_attention(q, k, v, causal=True, segment_ids=seg, block_q=8, block_k=8)
    b, lo, hi = 0, int(jnp.argmax(seg[0] == 2)), int(T - jnp.argmax(seg[0, ::-1] == 2))   # document 2, row 0
    alone = flash_attention(q[b:b + 1, lo:hi], k[b:b + 1, lo:hi], v[b:b + 1, lo:hi], causal=True, block_q=8, block_k=8)
    np.testing.assert_allclose(out[b:b + 1, lo:hi], alone, atol=TOL)


def test_separate_query_and_key_segments():
    T, S = 20, 36
    q, k, v = _qkv(T=T, S=S)
    seg_q = _packed(2, T, 2, seed=2)
    seg_k = jnp.concatenate([jnp.ones((2, S - T), jnp.int32), seg_q], axis=1)
    mask = mha.combine_masks(mha.causal_mask(T, S), mha.segment_mask(seg_q, seg_k))
    _check(lambda q, k, v: flash_attention(q, k, v, causal=True, segment_ids=seg_q, kv_segment_ids=seg_k,
                                           block_q=8, block_k=8),
           lambda q, k, v: mha.attention(q, k, v, mask=mask), (q, k, v), (0, 1, 2))


@pytest.mark.parametrize("bias_shape", [(4, 30, 30), (2, 1, 1, 30), (2, 4, 30, 30)])
def test_additive_bias_and_its_gradient(bias_shape):
    """ALiBi/T5-style biases of any broadcastable shape; d bias sums over the broadcast axes."""
    q, k, v = _qkv(T=30, S=30)
    bias = jax.random.normal(jax.random.key(3), bias_shape)
    _check(lambda q, k, v, b: flash_attention(q, k, v, causal=True, bias=b, block_q=8, block_k=16),
           lambda q, k, v, b: mha.attention(q, k, v, mask=mha.causal_mask(30), bias=b), (q, k, v, bias), (0, 1, 2, 3))


def test_saved_logsumexp_is_the_rows():
    """L = m + log ℓ, the only statistic the backward pass keeps, equals logsumexp of the scores."""
    T, S = 37, 45
    q, k, v = _qkv(T=T, S=S, H=4, Hkv=2)
    lse = logsumexp_rows(q, k, v, causal=True, block_q=8, block_k=16)
    s = jnp.einsum("bthk,bshk->bhts", q, jnp.repeat(k, 2, axis=2)) / np.sqrt(16)
    s = jnp.where(mha.causal_mask(T, S), s, -jnp.inf)
    np.testing.assert_allclose(lse, jax.nn.logsumexp(s, axis=-1), atol=1e-5)


def test_block_sizes_do_not_change_the_result():
    q, k, v = _qkv(T=64, S=64)
    outs = [flash_attention(q, k, v, causal=True, block_q=bq, block_k=bk) for bq, bk in ((8, 32), (32, 8), (64, 64))]
    for o in outs[1:]:
        np.testing.assert_allclose(o, outs[0], atol=1e-6)


def test_bfloat16_close_to_float32():
    q, k, v = _qkv(T=64, S=64)
    ref = mha.attention(q, k, v, mask=mha.causal_mask(64))
    out = flash_attention(*(x.astype(jnp.bfloat16) for x in (q, k, v)), causal=True, block_q=16, block_k=16)
    assert out.dtype == jnp.bfloat16
    np.testing.assert_allclose(out.astype(jnp.float32), ref, atol=5e-2)


def test_rows_with_no_visible_key_stay_finite():
    q, k, v = _qkv(T=16, S=16)
    seg_q, seg_k = jnp.full((2, 16), 1, jnp.int32), jnp.full((2, 16), 2, jnp.int32)
    out, grads = jax.value_and_grad(lambda q: flash_attention(q, k, v, segment_ids=seg_q, kv_segment_ids=seg_k,
                                                              block_q=8, block_k=8).sum())(q)
    assert np.isfinite(out) and np.isfinite(grads).all()


def test_bad_inputs_raise_one_line():
    q, k, v = _qkv(H=4, Hkv=3, K=8)
    with pytest.raises(ValueError, match="4 query heads do not divide into 3"):
        flash_attention(q, k, v)
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="bias"):
        flash_attention(q, k, v, bias=jnp.zeros((3, 40, 40)))
    with pytest.raises(ValueError, match="segment ids"):
        flash_attention(q, k, v, segment_ids=jnp.zeros((2, 39), jnp.int32))


def test_memory_linear_in_length_bench_quick():
    """`lineage bench attention --quick`: ours grows ≤ 2.2× per doubling; naive/ours ≥ 10× at 2048."""
    from lineage_jax.bench import attention as bench
    r = bench.run(argparse.Namespace(json=True, out=None, quick=True, steps=1, config=None, overrides=[]))
    assert r["lengths"] == [512, 1024, 2048]
    assert r["max_flash_growth"] <= 2.2, r["flash_growth"]
    assert min(r["naive_growth"][1:]) > 3.0, r["naive_growth"]          # naive is visibly quadratic
    assert r["naive_over_flash_at_max"] >= 10.0, r["naive_over_flash"]
    assert "naive / flash at 2048" in bench.report(r)
