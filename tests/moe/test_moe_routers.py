"""MoE routers: auxiliary losses against values worked out by hand in numpy, capacity and
drops counted by hand, float32 routing under bf16, logical axes on every parameter."""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lineage_jax.moe import MoEFeedForward, capacity, gshard_route, shazeer_route, switch_route

LOGITS = np.array([[2.0, 0.5, -1.0, 0.1],
                   [0.3, 1.7, 0.2, -0.4],
                   [1.1, 0.9, 0.8, 0.0],
                   [-0.5, 0.2, 2.2, 1.9],
                   [0.0, 0.1, 0.2, 0.3],
                   [1.5, -1.2, 0.4, 1.4]], np.float32)          # N=6, E=4


def np_softmax(z):
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def np_cv2(v):
    v = np.asarray(v, np.float64)
    return v.var() / v.mean() ** 2


def test_capacity_rounding():
    assert capacity(6, 3, 1.0) == 2
    assert capacity(10, 4, 1.0) == 3           # 2.5 rounds up
    assert capacity(10, 4, 2.0) == 5           # GShard's 2N/E
    assert capacity(1, 8, 1.0) == 1            # never zero


def test_switch_aux_losses_by_hand():
    r = switch_route(jnp.asarray(LOGITS))
    N, E = LOGITS.shape
    p = np_softmax(LOGITS.astype(np.float64))
    idx = p.argmax(-1)
    f = np.bincount(idx, minlength=E) / N
    P = p.mean(0)
    lse = np.log(np.exp(LOGITS.astype(np.float64)).sum(-1))
    np.testing.assert_allclose(r.aux["balance_loss"], 1e-2 * E * np.sum(f * P), rtol=1e-5)
    np.testing.assert_allclose(r.aux["z_loss"], 1e-3 * np.mean(lse ** 2), rtol=1e-5)
    np.testing.assert_array_equal(r.expert_index[:, 0], idx)
    np.testing.assert_allclose(r.combine_weight[:, 0], p.max(-1), rtol=1e-5)
    np.testing.assert_array_equal(r.load, np.bincount(idx, minlength=E))


def test_gshard_aux_loss_and_gates_by_hand():
    r = gshard_route(jnp.asarray(LOGITS))
    N, E = LOGITS.shape
    g = np_softmax(LOGITS.astype(np.float64))
    e1 = g.argmax(-1)
    g_wo = g.copy()
    g_wo[np.arange(N), e1] = -1
    e2 = g_wo.argmax(-1)
    f = np.bincount(e1, minlength=E) / N                         # first choices only
    m = g.mean(0)
    np.testing.assert_allclose(r.aux["balance_loss"], E * E * np.mean(f * m), rtol=1e-5)
    np.testing.assert_array_equal(r.expert_index, np.stack([e1, e2], 1))
    g1, g2 = g[np.arange(N), e1], g[np.arange(N), e2]
    np.testing.assert_allclose(r.combine_weight, np.stack([g1, g2], 1) / (g1 + g2)[:, None], rtol=1e-5)
    assert bool(r.selected.all())                                # no rng: second expert always kept


def test_gshard_second_expert_kept_with_probability_2g2():
    # every token: normalised g2 = 0.3 -> kept with probability 0.6
    a, b = 0.7, 0.3
    row = np.log(np.array([a, b, 1e-6, 1e-6]))
    logits = jnp.asarray(np.tile(row, (20000, 1)), jnp.float32)
    r = gshard_route(logits, rng=jax.random.key(0))
    assert abs(float(r.selected[:, 1].mean()) - 2 * b) < 0.02
    assert bool(r.selected[:, 0].all())
    # unselected second slots carry no weight
    assert float(jnp.abs(jnp.where(r.selected[:, 1], 0.0, r.combine_weight[:, 1])).max()) == 0.0


def _np_shazeer(clean, noise_logits, eps, k):
    N, E = clean.shape
    std = np.log1p(np.exp(noise_logits))
    H = clean + eps * std
    G = np.zeros((N, E))
    P = np.zeros((N, E))
    for n in range(N):
        top = np.argsort(-H[n])[:k]
        z = np.exp(H[n, top] - H[n, top].max())
        G[n, top] = z / z.sum()
        for i in range(E):
            others = np.sort(np.delete(H[n], i))[::-1]
            thr = others[k - 1]                                   # kth_excluding(H, k, i)
            P[n, i] = 0.5 * (1 + math.erf((clean[n, i] - thr) / std[n, i] / math.sqrt(2)))
    return G, P


@pytest.mark.parametrize("k", [1, 2])
def test_shazeer_importance_and_load_losses_by_hand(k):
    rs = np.random.RandomState(0)
    clean = LOGITS.astype(np.float64)
    noise_logits = rs.randn(*clean.shape)
    eps = rs.randn(*clean.shape)
    r = shazeer_route(jnp.asarray(clean, jnp.float32), jnp.asarray(noise_logits, jnp.float32), k,
                      noise=jnp.asarray(eps, jnp.float32), w_importance=0.1, w_load=0.2)
    G, P = _np_shazeer(clean, noise_logits, eps, k)
    np.testing.assert_allclose(r.aux["importance_loss"], 0.1 * np_cv2(G.sum(0)), rtol=1e-4)
    np.testing.assert_allclose(r.aux["load_loss"], 0.2 * np_cv2(P.sum(0)), rtol=1e-4)
    dense = np.zeros_like(G)
    np.put_along_axis(dense, np.asarray(r.expert_index), np.asarray(r.combine_weight), axis=1)
    np.testing.assert_allclose(dense, G, rtol=1e-5, atol=1e-7)


def test_shazeer_load_loss_is_differentiable_in_both_kernels():
    rs = np.random.RandomState(1)
    eps = jnp.asarray(rs.randn(*LOGITS.shape), jnp.float32)
    nl = jnp.asarray(rs.randn(*LOGITS.shape), jnp.float32)
    g_clean, g_noise = jax.grad(lambda c, n: shazeer_route(c, n, 2, noise=eps).aux["load_loss"],
                                argnums=(0, 1))(jnp.asarray(LOGITS), nl)
    assert float(jnp.abs(g_clean).sum()) > 0 and float(jnp.abs(g_noise).sum()) > 0


def test_shazeer_without_noise_counts_load():
    r = shazeer_route(jnp.asarray(LOGITS), None, 2)
    top2 = np.argsort(-LOGITS, -1)[:, :2]
    cnt = np.bincount(top2.ravel(), minlength=4)
    np.testing.assert_allclose(r.aux["load_loss"], 0.1 * np_cv2(cnt), rtol=1e-5)


def _np_positions(e, sel, E):
    """Slot-major priority: every first choice in token order, then every second choice."""
    N, k = e.shape
    pos = np.zeros((N, k), int)
    count = np.zeros(E, int)
    for j in range(k):
        for n in range(N):
            if sel[n, j]:
                pos[n, j] = count[e[n, j]]
                count[e[n, j]] += 1
    return pos


def test_switch_capacity_drops_by_hand():
    N, E = LOGITS.shape
    C = capacity(N, E, 1.0)                                       # ceil(6/4) = 2
    r = switch_route(jnp.asarray(LOGITS), capacity=C)
    idx = LOGITS.argmax(-1)                                       # [0, 1, 0, 2, 3, 0]
    seen, dropped = {}, 0
    for n in range(N):
        seen[idx[n]] = seen.get(idx[n], 0) + 1
        dropped += seen[idx[n]] > C
    assert dropped == 1                                           # token 5: third to expert 0
    np.testing.assert_allclose(r.dropped_fraction, dropped / N)
    np.testing.assert_array_equal(r.keep[:, 0], [True, True, True, True, True, False])
    assert float(r.combine_weight[5, 0]) == 0.0


@pytest.mark.parametrize("cf", [0.5, 1.0, 1.5])
def test_gshard_capacity_positions_and_drops_by_hand(cf):
    N, E = LOGITS.shape
    C = capacity(N, E, cf)
    r = gshard_route(jnp.asarray(LOGITS), capacity=C)
    e, sel = np.asarray(r.expert_index), np.asarray(r.selected)
    pos = _np_positions(e, sel, E)
    np.testing.assert_array_equal(r.position, pos)
    kept = sel & (pos < C)
    np.testing.assert_array_equal(r.keep, kept)
    np.testing.assert_allclose(r.dropped_fraction, 1 - kept.sum() / sel.sum(), rtol=1e-6)


def test_router_runs_in_float32_under_bf16():
    x = jax.random.normal(jax.random.key(0), (2, 3, 8), jnp.bfloat16)
    for router in ("shazeer", "gshard", "switch"):
        m = MoEFeedForward(4, 16, router=router, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
        v = jax.jit(m.init)(jax.random.key(1), x)                 # jitted: one compile each, not one per op
        (y, met), state = jax.jit(lambda v, x, k: m.apply(v, x, deterministic=False, rngs={"router": k},
                                                          mutable=["intermediates"]))(v, x, jax.random.key(2))
        logits = state["intermediates"]["router_logits"][0]
        assert logits.dtype == jnp.float32
        kern = nn.unbox(v)["params"]["router"]["kernel"]
        ref = x.reshape(-1, 8).astype(jnp.float32) @ kern.astype(jnp.float32)
        np.testing.assert_allclose(logits, ref, rtol=1e-6, atol=1e-6)
        assert y.dtype == jnp.bfloat16
        assert all(met[k].dtype == jnp.float32 for k in met if k.endswith("loss"))


@pytest.mark.parametrize("router", ["shazeer", "gshard", "switch"])
def test_every_parameter_has_logical_axes(router):
    x = jnp.ones((2, 3, 8))
    v = jax.eval_shape(MoEFeedForward(4, 16, router=router).init, jax.random.key(0), x)   # names and shapes only
    leaves = jax.tree.leaves(v["params"], is_leaf=lambda a: isinstance(a, nn.LogicallyPartitioned))
    assert leaves
    for leaf in leaves:
        assert isinstance(leaf, nn.LogicallyPartitioned)
        assert len(leaf.names) == leaf.value.ndim and all(leaf.names)
    p = v["params"]
    assert p["w_in"].names == ("expert", "embed", "mlp")
    assert p["w_out"].names == ("expert", "mlp", "embed")
    assert p["router"]["kernel"].names == ("embed", "route")
