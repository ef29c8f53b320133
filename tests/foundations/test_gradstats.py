"""Activation gradients against fp16's range (Micikevicius et al. 2018, §3.2): the low-precision backward,
what flushes to zero, and what a loss scale recovers."""
import jax
import jax.numpy as jnp
import numpy as np

from lineage_jax.foundations import gradstats, mlp


def _net():
    params = mlp.init(jax.random.key(0), [5, 12, 12, 3], "he")
    x = jax.random.normal(jax.random.key(1), (16, 5))
    return params, x, jax.random.randint(jax.random.key(2), (16,), 0, 3)


def test_float32_deltas_are_the_hand_deltas_and_scale_linearly():
    params, x, y = _net()
    ref = gradstats.deltas(params, x, y, "relu")
    for a, b in zip(ref, mlp.input_deltas(params, x, y, "relu")):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9)
    for a, b in zip(gradstats.deltas(params, x, y, "relu", scale=1024.0), ref):
        np.testing.assert_allclose(a, 1024.0 * b, rtol=1e-5, atol=1e-9)


def test_fp16_flushes_what_is_below_its_range_and_the_scale_recovers_it():
    params, x, y = _net()
    # a confident net: the logits' margins ~30, so δ_L = softmax − onehot ~ e^-30/B ≈ 1e-14: below 2^-24
    params = [*params[:-1], {"w": params[-1]["w"], "b": jnp.array([30.0, 0.0, 0.0])}]
    y = jnp.zeros_like(y)
    ref = gradstats.deltas(params, x, y, "relu")
    fp16 = gradstats.deltas(params, x, y, "relu", jnp.float16)
    assert fp16[0].dtype == jnp.float16 and gradstats.below_fraction(ref, gradstats.FP16_MIN_SUBNORMAL) == 1.0
    assert gradstats.flushed_fraction(ref, fp16) == 1.0                     # every δ lost
    scaled = gradstats.deltas(params, x, y, "relu", jnp.float16, 2.0 ** 36)   # S·δ ~ 1e-3: fp16 normals
    assert gradstats.flushed_fraction(ref, scaled) == 0.0
    for a, b in zip(scaled, ref):                                            # and ÷S they are the float32 values
        np.testing.assert_allclose(np.asarray(a, np.float32) / 2.0 ** 36, b, rtol=1e-2, atol=1e-3 * float(jnp.abs(b).max()))
    bf16 = gradstats.deltas(params, x, y, "relu", jnp.bfloat16)
    assert gradstats.flushed_fraction(ref, bf16) == 0.0                      # float32's exponent range


def test_counting_by_hand():
    ref = [np.array([0.0, 1e-9, 1e-3, 2.0])]
    low = [np.array([0.0, 0.0, 1e-3, 2.0])]
    assert gradstats.flushed_fraction(ref, low) == 1 / 3                    # zeros of ref are not counted
    assert gradstats.below_fraction(ref, gradstats.FP16_MIN_SUBNORMAL) == 1 / 3
    counts, edges = gradstats.log2_histogram([np.array([0.5, 0.75, 4.0, -4.0, 0.0, 2.0 ** -80])], lo=-10, hi=5)
    assert edges[0] == -10 and counts.sum() == 5
    assert counts[list(edges).index(-1)] == 2 and counts[list(edges).index(2)] == 2 and counts[0] == 1
    assert float(jnp.float16(gradstats.FP16_MIN_SUBNORMAL)) > 0 and float(jnp.float16(gradstats.FP16_MIN_SUBNORMAL / 2.1)) == 0
    with np.errstate(over="ignore"):                                       # 65,520 rounds up to inf: the point
        assert float(jnp.float16(gradstats.FP16_MAX)) == 65504.0 and np.isinf(float(jnp.float16(65520.0)))
