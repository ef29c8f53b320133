"""Backprop by hand equals autodiff; chunked causal attention equals jax.nn's."""
import chex
import jax
import jax.numpy as jnp
import pytest
from jax import lax

from lineage_jax.nn import causal_attention, linear


@pytest.mark.parametrize("transpose_w", [False, True])
def test_linear_vjp_equals_autodiff(transpose_w):
    kx, kw, ky = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, (3, 5, 16))
    w = jax.random.normal(kw, (24, 16) if transpose_w else (16, 24))
    dy = jax.random.normal(ky, (3, 5, 24))
    ref = lambda x, w: lax.dot_general(x, w, (((2,), (1 if transpose_w else 0,)), ((), ())))  # plain autodiff
    y, vjp = jax.vjp(lambda x, w: linear(x, w, transpose_w), x, w)
    y_ref, vjp_ref = jax.vjp(ref, x, w)
    chex.assert_trees_all_close(y, y_ref, rtol=1e-6)
    chex.assert_trees_all_close(vjp(dy), vjp_ref(dy), rtol=1e-5, atol=1e-5)
    # and it is really our backward pass that ran: zeroing dy zeroes the gradients
    chex.assert_trees_all_equal(vjp(jnp.zeros_like(dy)), (jnp.zeros_like(x), jnp.zeros_like(w)))


@pytest.mark.parametrize("chunks", [1, 2, 4, pytest.param(8, marks=pytest.mark.slow)])
def test_chunked_causal_attention_equals_jax_nn(chunks):
    q, k, v = jax.random.normal(jax.random.key(1), (3, 2, 32, 4, 8))
    out = jax.jit(lambda q, k, v: causal_attention(q, k, v, chunks=chunks))(q, k, v)   # jitted: one compile each
    ref = jax.jit(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="xla"))(q, k, v)
    chex.assert_trees_all_close(out, ref, atol=1e-5, rtol=1e-5)
    g = jax.jit(jax.grad(lambda q: jnp.sum(causal_attention(q, k, v, chunks=chunks) ** 2)))(q)
    g_ref = jax.jit(jax.grad(lambda q: jnp.sum(jax.nn.dot_product_attention(q, k, v, is_causal=True) ** 2)))(q)
    chex.assert_trees_all_close(g, g_ref, atol=1e-4, rtol=1e-4)
