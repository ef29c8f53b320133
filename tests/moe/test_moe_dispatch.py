"""MoE dispatch backends: capacity (gather and einsum forms) == dropless (ragged_dot) when
nothing is dropped, both == a per-expert loop, dropped tokens give exactly zero output."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lineage_jax.moe import (MoEFeedForward, capacity, capacity_ffn, dropless_ffn, gshard_route, moe_ffn,
                             switch_route)

N, D, F, E = 12, 8, 16, 4


def _weights(seed=0):
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    x = jax.random.normal(k1, (N, D))
    w_in = 0.3 * jax.random.normal(k2, (E, D, F))
    w_out = 0.3 * jax.random.normal(k3, (E, F, D))
    return x, w_in, w_out


def _loop_reference(x, r, w_in, w_out, act=jax.nn.gelu):
    """y[n] = Σ_j w[n, j] · act(x[n] w_in[e]) w_out[e], one expert at a time, kept slots only."""
    x, w_in, w_out = map(np.asarray, (x, w_in, w_out))
    e, w, keep = map(np.asarray, (r.expert_index, r.combine_weight, r.keep))
    y = np.zeros_like(x)
    for ex in range(w_in.shape[0]):
        for n, j in zip(*np.nonzero((e == ex) & keep)):
            h = np.asarray(act(jnp.asarray(x[n] @ w_in[ex])))
            y[n] += w[n, j] * (h @ w_out[ex])
    return y


def _routing(x, w_in, kind, C):
    logits = x @ jax.random.normal(jax.random.key(7), (D, E))
    if kind == "switch":
        return switch_route(logits, capacity=C)
    return gshard_route(logits, capacity=C, rng=jax.random.key(3))


@pytest.mark.parametrize("kind", ["switch", "gshard"])
@pytest.mark.parametrize("cf", [0.5, 1.0, None])
def test_backends_equal_per_expert_loop(kind, cf):
    x, w_in, w_out = _weights()
    C = None if cf is None else capacity(N, E, cf)
    r = _routing(x, w_in, kind, C)
    ref = _loop_reference(x, r, w_in, w_out)
    for y in (dropless_ffn(x, r, w_in, w_out, jax.nn.gelu),
              capacity_ffn(x, r, w_in, w_out, jax.nn.gelu, "gather"),
              capacity_ffn(x, r, w_in, w_out, jax.nn.gelu, "einsum")):
        np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)


def test_dropped_tokens_have_zero_output():
    x, w_in, w_out = _weights(1)
    C = capacity(N, E, 0.5)
    r = _routing(x, w_in, "switch", C)
    dropped = ~np.asarray(r.keep).any(1)
    assert dropped.sum() > 0 and (~dropped).sum() > 0
    assert float(r.dropped_fraction) == pytest.approx(dropped.mean())
    for impl in ("gather", "einsum"):
        y = np.asarray(moe_ffn(x, r, w_in, w_out, backend="capacity", impl=impl))
        assert np.all(y[dropped] == 0.0)
        assert np.all(np.abs(y[~dropped]).sum(-1) > 0)


@pytest.mark.parametrize("router", ["shazeer", "gshard", "switch"])
def test_capacity_equals_dropless_with_gradients(router):
    """capacity_factor = E gives C = N ≥ tokens per expert: nothing dropped, same function."""
    x = jax.random.normal(jax.random.key(0), (2, 6, D))
    c = jax.random.normal(jax.random.key(1), (2, 6, D))
    mods = {name: MoEFeedForward(E, F, router=router, backend=be, impl=impl, capacity_factor=float(E))
            for name, be, impl in (("capacity", "capacity", "gather"), ("dropless", "dropless", "gather"),
                                   ("einsum", "capacity", "einsum"))}
    v = mods["capacity"].init(jax.random.key(2), x)

    def loss(params, x, m):
        y, met = m.apply({"params": params}, x)
        return jnp.sum(y * c) + met["aux_loss"], met

    out = {}
    for name, m in mods.items():
        (l, met), g = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True),
                              static_argnums=2)(v["params"], x, m)
        assert float(met["dropped_fraction"]) == 0.0
        out[name] = (l, g)
    for name in ("dropless", "einsum"):
        np.testing.assert_allclose(out[name][0], out["capacity"][0], rtol=1e-5)
        ga, gb = nn.unbox(out[name][1]), nn.unbox(out["capacity"][1])
        for a, b in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    g_params = nn.unbox(out["dropless"][1][0])
    assert float(jnp.abs(g_params["w_in"]).sum()) > 0 and float(jnp.abs(g_params["router"]["kernel"]).sum()) > 0


def test_layer_reports_metrics_and_shapes():
    x = jax.random.normal(jax.random.key(0), (2, 5, D))
    m = MoEFeedForward(E, F, router="gshard", capacity_factor=1.0)
    v = m.init(jax.random.key(1), x)
    y, met = jax.jit(lambda v, x: m.apply(v, x, deterministic=False, rngs={"router": jax.random.key(3)}))(v, x)
    assert y.shape == x.shape
    assert met["load"].shape == (E,)
    assert 0.0 <= float(met["dropped_fraction"]) <= 1.0
    assert set(met) >= {"balance_loss", "aux_loss", "load", "dropped_fraction"}
