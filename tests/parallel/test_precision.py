"""Mixed precision (Micikevicius et al. 2018): policies, loss scaling, dynamic schedule."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from parallel import precision as mp


# ----------------------------------------------------------------------------- policies

@pytest.mark.parametrize("name, compute", [("fp32", jnp.float32), ("bf16", jnp.bfloat16), ("fp16", jnp.float16)])
def test_policy_dtypes(name, compute):
    """Paper §3.1: f32 master weights in every policy; only the compute dtype changes."""
    p = mp.policy_for(name)
    assert (p.param_dtype, p.compute_dtype, p.output_dtype) == (jnp.float32, compute, jnp.float32)


def test_casts_touch_floating_leaves_only():
    p = mp.policy_for("fp16")
    tree = {"w": jnp.ones((2, 3)), "step": jnp.arange(3, dtype=jnp.int32), "ok": jnp.array(True)}
    c = p.cast_to_compute(tree)
    assert c["w"].dtype == jnp.float16 and c["step"].dtype == jnp.int32 and c["ok"].dtype == jnp.bool_
    assert p.cast_to_param(c)["w"].dtype == jnp.float32
    assert p.cast_to_output(c)["step"].dtype == jnp.int32
    chex.assert_trees_all_equal(c["step"], tree["step"])


def test_bad_policy_name_is_one_line():
    with pytest.raises(ValueError) as e:
        mp.policy_for("fp8")
    msg = str(e.value)
    assert "\n" not in msg and all(n in msg for n in ("fp32", "bf16", "fp16"))


# ----------------------------------------------------------------------------- underflow

def _mlp_loss(params, x):
    return jnp.sum(jnp.tanh(x @ params["w1"]) @ params["w2"])


def _tiny_problem():
    """Per-example ∂L/∂w1 = x_i · w2_j · (1 − h²) with x, w2 ~ 1e-4: true gradients ≈ 1e-8,
    below half of float16's smallest subnormal (2^-24 ≈ 6e-8), so they round to zero."""
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    params = {"w1": jax.random.uniform(k1, (8, 16), minval=0.5, maxval=1.0),
              "w2": jax.random.uniform(k2, (16, 1), minval=0.6e-4, maxval=1.0e-4)}
    x = jax.random.uniform(k3, (2, 8), minval=0.6e-4, maxval=1.0e-4)
    return params, x


def test_loss_scaling_recovers_fp16_underflow():
    """Paper §3.2: small gradients flush to zero in FP16; scaling the loss by S before the
    backward pass and dividing by S in f32 afterwards recovers them."""
    params, x = _tiny_problem()
    policy = mp.policy_for("fp16")
    ref = jax.jit(jax.grad(_mlp_loss))(params, x)                       # float32 reference
    w1_ref = np.abs(np.asarray(ref["w1"]))
    assert w1_ref.max() < 2.5e-8 and w1_ref.min() > 0                    # all tiny, all nonzero

    @jax.jit
    def grads_fp16(params, x, ls):
        def scaled(p):
            return mp.scale_loss(_mlp_loss(policy.cast_to_compute(p), policy.cast_to_compute(x)), ls)
        g = jax.grad(scaled)(params)          # cotangents flow through the f16 region in f16
        return mp.unscale(g, ls)

    # Without scaling (S = 1): every w1 gradient underflows to exactly zero.
    plain = grads_fp16(params, x, mp.static_loss_scale(1.0))
    assert np.all(np.asarray(plain["w1"]) == 0.0)

    # With S = 2^15: the same f16 backward pass matches the f32 reference to ~1e-2 relative.
    scaled = grads_fp16(params, x, mp.loss_scale_init(2.0 ** 15))
    chex.assert_trees_all_equal_dtypes(scaled, ref)
    chex.assert_trees_all_close(scaled, ref, rtol=1e-2, atol=0)


# ----------------------------------------------------------------------------- overflow / growth

def test_overflow_skips_update_and_backs_off():
    """Paper §3.2: on inf/nan gradients the update is skipped and the scale reduced."""
    old = {"w": jnp.arange(4.0), "mu": jnp.full((4,), 0.5)}
    new = {"w": jnp.arange(4.0) - 1.0, "mu": jnp.zeros(4)}
    ls = mp.LossScale(jnp.float32(1024.0), jnp.int32(7), jnp.int32(3))

    @jax.jit
    def step(grads, ls):
        finite = mp.all_finite(grads)
        return finite, mp.adjust(ls, finite, period=2000), mp.select_update(finite, new, old)

    for bad in (jnp.inf, jnp.nan):
        finite, ls2, kept = step({"a": jnp.ones(3), "b": jnp.array([1.0, bad])}, ls)
        assert not bool(finite)
        assert float(ls2.scale) == 512.0 and int(ls2.good_steps) == 0 and int(ls2.skipped) == 4
        chex.assert_trees_all_equal(kept, old)                       # old params bitwise

    finite, ls2, kept = step({"a": jnp.ones(3), "b": jnp.ones(2)}, ls)
    assert bool(finite) and float(ls2.scale) == 1024.0 and int(ls2.good_steps) == 8 and int(ls2.skipped) == 3
    chex.assert_trees_all_equal(kept, new)


def test_scale_grows_after_period_and_respects_min_scale():
    period = 5

    @jax.jit
    def run(ls, finite_seq):
        def body(ls, f):
            ls = mp.adjust(ls, f, period=period, factor=2.0, min_scale=1.0)
            return ls, ls.scale
        return jax.lax.scan(body, ls, finite_seq)

    ls, scales = run(mp.loss_scale_init(2.0 ** 15), jnp.ones(2 * period + 1, bool))
    np.testing.assert_array_equal(scales[:period - 1], 2.0 ** 15)
    assert float(scales[period - 1]) == 2.0 ** 16                   # doubled at the period-th clean step
    assert float(scales[2 * period - 1]) == 2.0 ** 17
    assert int(ls.good_steps) == 1 and int(ls.skipped) == 0

    ls, scales = run(mp.loss_scale_init(8.0), jnp.zeros(10, bool))  # repeated overflow
    np.testing.assert_array_equal(scales, [4.0, 2.0] + [1.0] * 8)
    assert int(ls.skipped) == 10 and int(ls.good_steps) == 0


def test_static_scale_never_moves():
    ls = mp.loss_scale_for("bf16")
    assert not ls.dynamic and mp.loss_scale_for("fp16").dynamic
    adj = jax.jit(lambda ls, f: mp.adjust(ls, f, period=1))
    assert float(adj(ls, jnp.array(True)).scale) == 1.0
    assert float(adj(ls, jnp.array(False)).scale) == 1.0
    g = {"w": jnp.array([1e-3, 3.0])}
    chex.assert_trees_all_equal(mp.unscale(g, ls), g)                # S = 1 is bitwise the identity
