"""The optimizer lineage: each teaching version is proved equal to the optax production path."""
import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lineage_jax.config import OptimConfig
from lineage_jax.optim import (adam_init, adam_update, adamw_init, adamw_update, clip_by_global_norm,
                               global_norm, make_optimizer, make_schedule, warmup_cosine)

STEPS = 20
MASK = {"kernel": True, "bias": False, "embedding": {"table": False}}   # bias and embedding don't decay


def _params(key):
    k1, k2, k3 = jax.random.split(key, 3)
    return {"kernel": jax.random.normal(k1, (8, 16)),
            "bias": jax.random.normal(k2, (16,)),
            "embedding": {"table": jax.random.normal(k3, (10, 8))}}


def _grads(key, params, scale):
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(treedef, [scale * jax.random.normal(k, p.shape) for k, p in zip(keys, leaves)])


def _apply(params, updates):
    return jax.tree.map(jnp.add, params, updates)


def _assert_close(a, b, rtol=1e-6):
    """<= rtol relative, leaf by leaf, measured against the leaf's own scale."""
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype == np.float32
        err = np.max(np.abs(x - y)) / max(np.max(np.abs(y)), 1e-30)
        assert err <= rtol, f"relative difference {err:.3g} > {rtol}"


# ----------------------------------------------------------------------------- AdamW chain

@pytest.mark.parametrize("mask_kind", ["tree", "callable"])
def test_teaching_adamw_chain_equals_make_optimizer(mask_kind):
    cfg = OptimConfig(lr=3e-2, min_lr_ratio=0.1, warmup_steps=4, weight_decay=0.1,
                      b1=0.9, b2=0.95, eps=1e-8, clip_norm=1.0)
    total = STEPS
    mask = MASK if mask_kind == "tree" else (lambda p: jax.tree.map(lambda x: x.ndim == 2 and x.shape[0] == 8, p))
    params = _params(jax.random.key(0))

    # Production: optax chain, built by make_optimizer.
    opt = make_optimizer(cfg, total, mask)
    p_ref, s_ref = params, opt.init(params)

    # Teaching: clip -> AdamW(schedule), in the same order.
    schedule = lambda step: warmup_cosine(step, peak_lr=cfg.lr, warmup_steps=cfg.warmup_steps,
                                          total_steps=total, end_lr=cfg.lr * cfg.min_lr_ratio)

    @jax.jit
    def teach_step(grads, state, p):
        grads, _ = clip_by_global_norm(grads, cfg.clip_norm)
        updates, state = adamw_update(grads, state, p, lr=schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                                      weight_decay=cfg.weight_decay, mask=mask)
        return _apply(p, updates), state

    @jax.jit
    def ref_step(grads, state, p):
        updates, state = opt.update(grads, state, p)
        return _apply(p, updates), state

    p_teach, s_teach = params, adamw_init(params)
    keys = jax.random.split(jax.random.key(1), total)
    for step in range(total):
        # Alternate gradients above and below the clip threshold so both branches are exercised.
        grads = _grads(keys[step], params, scale=1.0 if step % 2 else 0.01)
        p_ref, s_ref = ref_step(grads, s_ref, p_ref)
        p_teach, s_teach = teach_step(grads, s_teach, p_teach)
        _assert_close(p_teach, p_ref)
    # The run really moved the parameters (so agreement is not trivially "nothing happened").
    assert all(float(jnp.max(jnp.abs(a - b))) > 1e-3
               for a, b in zip(jax.tree.leaves(p_teach), jax.tree.leaves(params)))
    assert int(s_teach.count) == total


def test_adam_equals_optax_adam():
    params = _params(jax.random.key(2))
    opt = optax.adam(1e-2, b1=0.8, b2=0.99, eps=1e-6)
    p_ref, s_ref = params, opt.init(params)
    p_teach, s_teach = params, adam_init(params)
    # Both jitted, as training runs them: eager and jitted float32 `b ** t` round differently in JAX
    # itself, and optax jits its bias correction.
    ref_update = jax.jit(opt.update)
    teach_update = jax.jit(lambda g, s: adam_update(g, s, lr=1e-2, b1=0.8, b2=0.99, eps=1e-6))
    for step, key in enumerate(jax.random.split(jax.random.key(3), STEPS)):
        grads = _grads(key, params, scale=10.0 ** (step % 3 - 1))
        u_ref, s_ref = ref_update(grads, s_ref)
        u_teach, s_teach = teach_update(grads, s_teach)
        _assert_close(u_teach, u_ref)
        _assert_close(s_teach.mu, s_ref[0].mu)
        _assert_close(s_teach.nu, s_ref[0].nu)
        p_ref, p_teach = _apply(p_ref, u_ref), _apply(p_teach, u_teach)
        _assert_close(p_teach, p_ref)


def test_adam_first_step_is_sign_times_lr():
    """Bias correction at t=1 makes m_hat = g and v_hat = g^2, so the step is -lr * g / (|g| + eps).

    (Up to float32 rounding of 1 - b**t, hence rtol 1e-4.)"""
    g = {"w": jnp.array([3.0, -0.5, 1e-3])}
    updates, state = adam_update(g, adam_init(g), lr=0.1, eps=0.0)
    chex.assert_trees_all_close(updates, {"w": jnp.array([-0.1, 0.1, -0.1])}, rtol=1e-4)
    assert int(state.count) == 1


def test_schedule_lr_uses_pre_increment_count():
    """A schedule is read at the step count before the update: step 0 of a warmup has lr 0."""
    g = {"w": jnp.ones(3)}
    sched = lambda s: 0.5 * s
    state = adam_init(g)
    u0, state = adam_update(g, state, lr=sched)
    u1, state = adam_update(g, state, lr=sched)
    chex.assert_trees_all_equal(u0, {"w": jnp.zeros(3)})
    chex.assert_trees_all_close(u1, {"w": -0.5 * jnp.ones(3)}, rtol=1e-4)


# ----------------------------------------------------------------------------- decoupled decay vs L2

def test_decoupled_decay_is_not_l2_in_the_gradient():
    """AdamW shrinks a weight by lr*lambda*theta; L2 goes through Adam's normalisation instead."""
    lr, wd = 1e-2, 0.1
    params = {"w": jnp.array([4.0, -2.0, 0.5, 1e-2])}
    zero = jax.tree.map(jnp.zeros_like, params)

    # No gradient at all: AdamW multiplies each weight by (1 - lr*wd), proportional to theta.
    u_decoupled, _ = adamw_update(zero, adamw_init(params), params, lr=lr, weight_decay=wd)
    chex.assert_trees_all_close(u_decoupled, {"w": -lr * wd * params["w"]}, rtol=1e-6)

    # L2 puts wd*theta in the gradient; Adam normalises it to -lr * sign(theta) whatever theta is.
    l2_grads = jax.tree.map(lambda g, p: g + wd * p, zero, params)
    u_l2, _ = adam_update(l2_grads, adam_init(params), lr=lr)
    chex.assert_trees_all_close(u_l2, {"w": -lr * jnp.sign(params["w"])}, rtol=1e-4)
    # ...and optax's L2-style chain (decay before Adam) agrees with that, not with AdamW.
    l2_opt = optax.chain(optax.add_decayed_weights(wd), optax.adam(lr))
    u_l2_optax, _ = l2_opt.update(zero, l2_opt.init(params), params)
    chex.assert_trees_all_close(u_l2_optax, u_l2, rtol=1e-6)

    # Over a run with real gradients the two trajectories separate.
    p_w, p_l2 = params, params
    s_w, s_l2 = adamw_init(params), adam_init(params)

    @jax.jit
    def both(key, p_w, s_w, p_l2, s_l2):
        g = _grads(key, params, 1.0)
        u, s_w = adamw_update(g, s_w, p_w, lr=lr, weight_decay=wd)
        u2, s_l2 = adam_update(jax.tree.map(lambda gi, p: gi + wd * p, g, p_l2), s_l2, lr=lr)
        return _apply(p_w, u), s_w, _apply(p_l2, u2), s_l2

    for key in jax.random.split(jax.random.key(4), STEPS):
        p_w, s_w, p_l2, s_l2 = both(key, p_w, s_w, p_l2, s_l2)
    assert float(jnp.max(jnp.abs(p_w["w"] - p_l2["w"]))) > 1e-3


def test_mask_prefix_and_none():
    params = _params(jax.random.key(5))
    zero = jax.tree.map(jnp.zeros_like, params)
    # A bool at "embedding" stands for its whole subtree, as in optax.masked.
    prefix = {"kernel": True, "bias": False, "embedding": False}
    u, _ = adamw_update(zero, adamw_init(params), params, lr=0.1, weight_decay=0.5, mask=prefix)
    chex.assert_trees_all_close(u["kernel"], -0.05 * params["kernel"], rtol=1e-6)
    chex.assert_trees_all_equal(u["bias"], jnp.zeros(16))
    chex.assert_trees_all_equal(u["embedding"]["table"], jnp.zeros((10, 8)))
    u_all, _ = adamw_update(zero, adamw_init(params), params, lr=0.1, weight_decay=0.5, mask=None)
    chex.assert_trees_all_close(u_all, jax.tree.map(lambda p: -0.05 * p, params), rtol=1e-6)


# ----------------------------------------------------------------------------- clipping

@pytest.mark.parametrize("scale", [100.0, 0.01, 0.0], ids=["above", "below", "zero"])
def test_clip_by_global_norm_equals_optax(scale):
    max_norm = 1.0
    grads = _grads(jax.random.key(6), _params(jax.random.key(7)), scale)
    ref, _ = optax.clip_by_global_norm(max_norm).update(grads, optax.EmptyState())
    clipped, norm = jax.jit(clip_by_global_norm, static_argnums=1)(grads, max_norm)
    chex.assert_tree_all_finite(clipped)
    chex.assert_trees_all_close(clipped, ref, rtol=1e-6, atol=0)
    chex.assert_trees_all_close(norm, optax.tree.norm(grads), rtol=1e-6)
    flat = jnp.concatenate([x.ravel() for x in jax.tree.leaves(grads)])
    chex.assert_trees_all_close(global_norm(grads), jnp.linalg.norm(flat), rtol=1e-6)
    if scale == 100.0:
        assert float(norm) > max_norm
        chex.assert_trees_all_close(global_norm(clipped), max_norm, rtol=1e-5)
    else:
        assert float(norm) < max_norm
        chex.assert_trees_all_equal(clipped, grads)        # untouched, and no 0/0 for zero grads


# ----------------------------------------------------------------------------- schedule

SCHEDULES = [  # peak, warmup, total, end
    (1e-3, 10, 50, 1e-4),
    (3e-4, 0, 30, 0.0),        # no warmup: starts at the peak
    (1.0, 5, 6, 0.25),         # a one-step decay
    (2e-3, 1, 40, 2e-3),       # end == peak: flat after warmup
]


@pytest.mark.parametrize("peak,warmup,total,end", SCHEDULES)
def test_warmup_cosine_equals_optax(peak, warmup, total, end):
    ref = optax.warmup_cosine_decay_schedule(init_value=0.0, peak_value=peak, warmup_steps=warmup,
                                             decay_steps=total, end_value=end)
    steps = jnp.arange(total + 6)
    ours = warmup_cosine(steps, peak_lr=peak, warmup_steps=warmup, total_steps=total, end_lr=end)
    theirs = jax.vmap(ref)(steps)                   # optax one scalar step at a time
    chex.assert_trees_all_close(ours, theirs, rtol=1e-6, atol=1e-7 * peak)
    for s in (0, warmup, total - 1, total + 3):     # plain Python ints, as well as arrays
        chex.assert_trees_all_close(
            warmup_cosine(s, peak_lr=peak, warmup_steps=warmup, total_steps=total, end_lr=end),
            ref(s), rtol=1e-6, atol=1e-7 * peak)
    # Independent anchor points, not taken from optax.
    np.testing.assert_allclose(float(ours[0]), 0.0 if warmup else peak, rtol=1e-6)
    np.testing.assert_allclose(float(ours[warmup]), peak, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(ours[total:]), end, rtol=1e-6, atol=1e-7 * peak)


def test_warmup_cosine_rejects_empty_decay():
    with pytest.raises(ValueError, match="total_steps > warmup_steps"):
        warmup_cosine(0, peak_lr=1.0, warmup_steps=10, total_steps=10)


def test_make_schedule_matches_config():
    cfg = OptimConfig(lr=1e-3, min_lr_ratio=0.1, warmup_steps=5)
    sched = make_schedule(cfg, 25)
    for s in range(31):
        chex.assert_trees_all_close(
            sched(s), warmup_cosine(s, peak_lr=1e-3, warmup_steps=5, total_steps=25, end_lr=1e-4),
            rtol=1e-6, atol=1e-10)
    # warmup_steps == train.steps is a valid config: the whole run is warmup, optax must not raise.
    full = make_schedule(dataclasses.replace(cfg, warmup_steps=25), 25)
    chex.assert_trees_all_close(jnp.stack([full(s) for s in range(25)]), 1e-3 * jnp.arange(25) / 25,
                                rtol=1e-6, atol=1e-10)


# ----------------------------------------------------------------------------- make_optimizer

def test_make_optimizer_respects_mask():
    cfg = OptimConfig(lr=1e-2, warmup_steps=0, weight_decay=0.5, clip_norm=1.0)
    params = _params(jax.random.key(8))
    zero = jax.tree.map(jnp.zeros_like, params)
    opt = make_optimizer(cfg, 10, MASK)
    updates, _ = opt.update(zero, opt.init(params), params)
    new = _apply(params, updates)
    chex.assert_trees_all_equal(new["bias"], params["bias"])                      # masked: unchanged
    chex.assert_trees_all_equal(new["embedding"], params["embedding"])
    chex.assert_trees_all_close(new["kernel"], params["kernel"] * (1 - cfg.lr * cfg.weight_decay),
                                rtol=1e-6)                                          # decays
    # No mask: every leaf decays.
    opt_all = make_optimizer(cfg, 10, None)
    updates, _ = opt_all.update(zero, opt_all.init(params), params)
    chex.assert_trees_all_close(_apply(params, updates),
                                jax.tree.map(lambda p: p * (1 - cfg.lr * cfg.weight_decay), params), rtol=1e-6)


def test_make_optimizer_clip_norm_zero_disables_clipping():
    cfg = OptimConfig(lr=1e-2, warmup_steps=0, weight_decay=0.0, clip_norm=0.0)
    params = _params(jax.random.key(9))
    opt = make_optimizer(cfg, 10, MASK)
    state = opt.init(params)
    teach = adamw_init(params)
    # Two steps with a huge gradient then a small one: clipping the first would change the moments.
    for scale in (1e3, 1e-2):
        g = _grads(jax.random.key(int(scale * 100)), params, scale)
        u_ref, state = opt.update(g, state, params)
        u, teach = adamw_update(g, teach, params, lr=make_schedule(cfg, 10), b1=cfg.b1, b2=cfg.b2,
                                eps=cfg.eps)
        _assert_close(u, u_ref)
    clipped_opt = make_optimizer(dataclasses.replace(cfg, clip_norm=1.0), 10, MASK)
    cstate = clipped_opt.init(params)
    for scale in (1e3, 1e-2):
        g = _grads(jax.random.key(int(scale * 100)), params, scale)
        u_clip, cstate = clipped_opt.update(g, cstate, params)
    assert float(jnp.max(jnp.abs(u_clip["kernel"] - u_ref["kernel"]))) > 1e-4


def test_a_warmup_longer_than_the_run_is_clamped_to_it():
    """``lineage train train.steps=10`` on a preset with 50 warmup steps warms up over the 10 (issue 15, 10)."""
    long, exact = (make_schedule(OptimConfig(lr=1e-3, warmup_steps=w, min_lr_ratio=0.1), 10) for w in (50, 10))
    lrs = [float(long(s)) for s in range(12)]
    assert lrs == [float(exact(s)) for s in range(12)]
    assert lrs[0] == 0.0 and lrs[9] == pytest.approx(0.9e-3)          # the ramp reaches 90% of the peak
