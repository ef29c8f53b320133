"""What the formulas promise, without a peer: DDPM's endpoints, the forward marginal, the
posterior's consistency with the forward process, DDIM's limits and guidance's limits."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lineage_jax import diffusion as D
from lineage_jax.config import ConfigError


def test_ddpm_linear_endpoints_and_signal_destroyed():
    s = D.make_schedule("linear", 1000)
    assert np.isclose(float(s.betas[0]), 1e-4) and np.isclose(float(s.betas[-1]), 0.02)
    assert float(s.alphas_cumprod[-1]) < 1e-4 < float(s.alphas_cumprod[0])   # x_T is almost pure noise
    c = D.make_schedule("cosine", 1000)
    assert np.all(np.diff(np.asarray(c.alphas_cumprod)) < 0) and float(c.betas.max()) <= np.float32(0.999)
    # the cosine ᾱ falls more slowly in the middle (Nichol & Dhariwal Fig. 5)
    assert float(c.alphas_cumprod[500]) > float(s.alphas_cumprod[500])


def test_forward_marginal_moments():
    s = D.make_schedule("linear", 100)
    t = 40
    x0 = jnp.full((20000,), 0.7)
    xt = D.add_noise(s, x0, jax.random.normal(jax.random.key(0), x0.shape), t)
    a = float(s.alphas_cumprod[t])
    assert abs(float(xt.mean()) - np.sqrt(a) * 0.7) < 0.02 and abs(float(xt.var()) - (1 - a)) < 0.03


def test_posterior_matches_bayes_on_one_step():
    """q(x_{t-1}|x_t,x_0) ∝ q(x_t|x_{t-1}) q(x_{t-1}|x_0): precision-weighted Gaussian product."""
    s = D.make_schedule("cosine", 50)
    x0, xt = jnp.array([0.3, -1.2]), jnp.array([1.0, 0.4])
    for t in (1, 10, 49):
        a_prev, alpha, beta = (float(s.alphas_cumprod[t - 1]), float(s.alphas[t]), float(s.betas[t]))
        prec = alpha / beta + 1 / (1 - a_prev)
        mean = (np.sqrt(alpha) / beta * np.asarray(xt) + np.sqrt(a_prev) / (1 - a_prev) * np.asarray(x0)) / prec
        m, v = D.posterior_mean_variance(s, x0, xt, t)
        np.testing.assert_allclose(np.asarray(m), mean, rtol=2e-4, atol=1e-5)
        np.testing.assert_allclose(float(v), 1 / prec, rtol=2e-4)


def test_ddim_eta0_is_deterministic_and_exact_inverse_of_add_noise():
    """With the true ε, DDIM (η = 0, no clip) lands on x_{t'} = add_noise(x_0, ε, t') exactly."""
    s = D.make_schedule("linear", 1000)
    k0, k1 = jax.random.split(jax.random.key(1))
    x0, eps = 0.5 * jax.random.normal(k0, (4, 8)), jax.random.normal(k1, (4, 8))
    xt = D.add_noise(s, x0, eps, 900)
    out = D.ddim_step(s, eps, 900, 880, xt, clip=None)
    np.testing.assert_allclose(np.asarray(out), np.asarray(D.add_noise(s, x0, eps, 880)), atol=2e-5)
    np.testing.assert_allclose(np.asarray(D.ddim_step(s, eps, 20, -1, D.add_noise(s, x0, eps, 20), clip=None)),
                               np.asarray(x0), atol=2e-5)


def test_ddpm_step_adds_no_noise_at_t0_and_jits():
    s = D.make_schedule("linear", 100)
    x, e, z = jnp.ones((2, 3)), jnp.zeros((2, 3)), jnp.ones((2, 3))
    step = jax.jit(D.ddpm_step)
    np.testing.assert_allclose(np.asarray(step(s, e, 0, x, z)), np.asarray(step(s, e, 0, x, 0 * z)))
    assert not np.allclose(np.asarray(step(s, e, 5, x, z)), np.asarray(step(s, e, 5, x, 0 * z)))


def test_guidance_limits():
    u, c = jnp.array([1.0, 2.0]), jnp.array([3.0, -1.0])
    np.testing.assert_allclose(np.asarray(D.cfg_combine(u, c, 0.0)), np.asarray(u))
    np.testing.assert_allclose(np.asarray(D.cfg_combine(u, c, 1.0)), np.asarray(c))
    np.testing.assert_allclose(np.asarray(D.cfg_combine(u, c, 3.0)), np.asarray(u + 3 * (c - u)))


@pytest.mark.parametrize("kw, msg", [(dict(schedule="sigmoid"), "allowed linear, cosine"),
                                     (dict(timesteps=1), "timesteps=1"),
                                     (dict(beta_start=0.1, beta_end=0.01), "beta_start=0.1")])
def test_bad_schedule_is_one_line(kw, msg):
    with pytest.raises(ConfigError, match=msg):
        D.make_schedule(**kw)
    with pytest.raises(ConfigError, match="steps=0"):
        D.ddim_timesteps(100, 0)
