"""nn/norms.py and nn/mlp.py: each layer is its paper's formula, checked in numpy."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lineage_jax.nn import GeluMLP, LayerNorm, RMSNorm, SwiGLU


def test_rmsnorm_is_its_formula():
    x = jax.random.normal(jax.random.key(0), (3, 5, 48)) * 4 + 1
    g = jax.random.normal(jax.random.key(1), (48,))
    y = RMSNorm(1e-5).apply({"params": {"scale": g}}, x)
    xn = np.asarray(x, np.float64)
    want = xn / np.sqrt((xn ** 2).mean(-1, keepdims=True) + 1e-5) * np.asarray(g, np.float64)
    np.testing.assert_allclose(np.asarray(y), want, rtol=1e-5, atol=1e-5)
    ones = RMSNorm(1e-5).apply({"params": {"scale": jnp.ones(48)}}, x)          # unit RMS, mean not removed
    np.testing.assert_allclose(np.sqrt(np.mean(np.asarray(ones) ** 2, -1)), 1.0, rtol=1e-4)
    assert abs(float(np.mean(np.asarray(ones)))) > 0.05


def test_swiglu_is_its_formula():
    ffn = SwiGLU(hidden=72, width=48)
    x = jax.random.normal(jax.random.key(0), (2, 3, 48))
    p = ffn.init(jax.random.key(1), x)["params"]
    y = ffn.apply({"params": p}, x)
    p = nn.unbox(p)
    a, b = np.asarray(x) @ np.asarray(p["gate"]["kernel"]), np.asarray(x) @ np.asarray(p["up"]["kernel"])
    want = (a / (1 + np.exp(-a)) * b) @ np.asarray(p["down"]["kernel"])      # Swish₁(xW) ⊙ xV, then W₂
    np.testing.assert_allclose(np.asarray(y), want, rtol=1e-4, atol=1e-5)


def test_layernorm_equals_flax_and_its_gradient_equals_autodiff():
    x = jax.random.normal(jax.random.key(0), (4, 6, 32)) * 3 + 2
    params = {"scale": jax.random.normal(jax.random.key(1), (32,)), "bias": jax.random.normal(jax.random.key(2), (32,))}
    ours = lambda p, x: LayerNorm(1e-5).apply({"params": p}, x)
    flax_ln = lambda p, x: nn.LayerNorm(1e-5).apply({"params": p}, x)
    np.testing.assert_allclose(ours(params, x), flax_ln(params, x), rtol=1e-5, atol=1e-5)
    loss = lambda f: lambda p, x: jnp.sum(jnp.sin(f(p, x)))
    g_ours, g_flax = jax.grad(loss(ours), (0, 1))(params, x), jax.grad(loss(flax_ln), (0, 1))(params, x)
    for a, b in zip(jax.tree.leaves(g_ours), jax.tree.leaves(g_flax)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_gelu_mlp_is_its_formula():
    ffn = GeluMLP(hidden=64, width=16)
    x = jax.random.normal(jax.random.key(0), (2, 3, 16))
    p = ffn.init(jax.random.key(1), x)["params"]
    y = ffn.apply({"params": p}, x)
    p = nn.unbox(p)
    h = np.asarray(x) @ np.asarray(p["fc"]["kernel"]) + np.asarray(p["fc"]["bias"])
    h = 0.5 * h * (1 + np.tanh(np.sqrt(2 / np.pi) * (h + 0.044715 * h ** 3)))     # GELU, tanh form
    want = h @ np.asarray(p["proj"]["kernel"]) + np.asarray(p["proj"]["bias"])
    np.testing.assert_allclose(np.asarray(y), want, rtol=1e-4, atol=1e-5)

