"""GPT-2 claims: parameter counts, logical axis names, causality, scan == unrolled, dtypes."""
import dataclasses
import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lineage_jax.config import ModelConfig, load_config
from lineage_jax.models import GPT, count_params

SMALL = ModelConfig(vocab_size=61, context=16, layers=2, width=32, heads=4, attn_chunks=4)
LOGICAL = {"vocab", "embed", "position", "heads", "kv", "mlp", "layers"}


def init(cfg, T=None, seed=0):
    tokens = jnp.zeros((2, T or cfg.context), jnp.int32)
    return nn.unbox(jax.jit(GPT(cfg).init)(jax.random.key(seed), tokens)["params"])


@functools.partial(jax.jit, static_argnums=0, static_argnames="deterministic")
def fwd(cfg, params, tokens, deterministic=True, rngs=None):
    """``GPT(cfg).apply`` jitted: one compile per config and shape instead of an eager dispatch per op."""
    return GPT(cfg).apply({"params": params}, tokens, deterministic=deterministic, rngs=rngs)


def abstract(cfg):
    return jax.eval_shape(lambda: GPT(cfg).init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32)))


def gpt2_formula(m: ModelConfig) -> int:
    D, F = m.width, m.mlp_ratio * m.width
    per_layer = 4 * D * D + 4 * D + 2 * D * F + F + D + 4 * D
    return m.vocab_size * D + m.context * D + m.layers * per_layer + 2 * D


@pytest.mark.parametrize("preset,expected", [("gpt2_small", 124_439_808), ("tiny", None)])
def test_parameter_counts(preset, expected):
    m = load_config(preset).model
    n = count_params(abstract(m)["params"])          # eval_shape: nothing is allocated
    assert n == gpt2_formula(m)
    if expected is not None:
        assert n == expected


def test_every_parameter_has_logical_axes():
    specs = nn.get_partition_spec(abstract(SMALL))["params"]
    shapes = nn.unbox(abstract(SMALL))["params"]
    for (path, spec), leaf in zip(jax.tree_util.tree_leaves_with_path(specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec)),
                                  jax.tree.leaves(shapes)):
        names = tuple(spec)
        assert len(names) == leaf.ndim, path
        assert all(n in LOGICAL for n in names), (jax.tree_util.keystr(path), names)
    assert tuple(specs["blocks"]["attn"]["query"]["kernel"]) == ("layers", "embed", "heads", "kv")
    assert tuple(specs["wte"]) == ("vocab", "embed")


def test_causal_masking():
    params = init(SMALL)
    tokens = jax.random.randint(jax.random.key(1), (2, SMALL.context), 0, SMALL.vocab_size)
    t = 9
    changed = tokens.at[:, t].set((tokens[:, t] + 1) % SMALL.vocab_size)
    a, b = (fwd(SMALL, params, x) for x in (tokens, changed))
    chex.assert_trees_all_close(a[:, :t], b[:, :t], atol=1e-6)
    assert float(jnp.abs(a[:, t:] - b[:, t:]).max()) > 1e-3   # the change is visible from t on


def stacked_to_unrolled(params, layers):
    out = {k: v for k, v in params.items() if k != "blocks"}
    for i in range(layers):
        out[f"blocks_{i}"] = jax.tree.map(lambda x: x[i], params["blocks"])
    return out


@pytest.mark.parametrize("chunks", [1, 2, 4])
def test_scan_equals_unrolled_and_chunking_is_exact(chunks):
    params = init(SMALL)
    tokens = jax.random.randint(jax.random.key(2), (2, SMALL.context), 0, SMALL.vocab_size)
    ref = fwd(SMALL, params, tokens)
    unrolled = dataclasses.replace(SMALL, scan_layers=False, attn_chunks=chunks)
    out = fwd(unrolled, stacked_to_unrolled(params, SMALL.layers), tokens)
    chex.assert_trees_all_close(out, ref, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("remat", [pytest.param("full", marks=pytest.mark.slow), "dots"])
def test_remat_keeps_gradients(remat):
    params = init(SMALL)
    tokens = jax.random.randint(jax.random.key(3), (2, SMALL.context), 0, SMALL.vocab_size)

    def grads(cfg):
        f = lambda p: jnp.mean(GPT(cfg).apply({"params": p}, tokens) ** 2)
        return jax.jit(jax.grad(f))(params)

    chex.assert_trees_all_close(grads(dataclasses.replace(SMALL, remat=remat)), grads(SMALL), atol=1e-6, rtol=1e-5)


def test_compute_dtype_separate_from_param_dtype():
    cfg = dataclasses.replace(SMALL, dtype="bfloat16", param_dtype="float32")
    params = init(cfg)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
    logits = fwd(cfg, params, jnp.zeros((1, 8), jnp.int32))
    assert logits.dtype == jnp.bfloat16
    ref = fwd(SMALL, params, jnp.zeros((1, 8), jnp.int32))
    np.testing.assert_allclose(np.asarray(logits, np.float32), ref, atol=0.05)


def test_dropout_needs_rng_and_changes_output():
    cfg = dataclasses.replace(SMALL, dropout=0.5)
    params = init(cfg)
    tokens = jnp.ones((1, 8), jnp.int32)
    det = fwd(cfg, params, tokens)
    noisy = fwd(cfg, params, tokens, deterministic=False, rngs={"dropout": jax.random.key(0)})
    assert float(jnp.abs(det - noisy).max()) > 1e-3
    again = fwd(cfg, params, tokens, deterministic=False, rngs={"dropout": jax.random.key(0)})
    chex.assert_trees_all_equal(noisy, again)


def test_too_long_input_is_rejected():
    with pytest.raises(ValueError, match="exceeds model.context"):
        GPT(SMALL).apply({"params": init(SMALL)}, jnp.zeros((1, SMALL.context + 1), jnp.int32))
