"""The ε-objective and the sampling loops, checked with oracle denoisers that know the data:
L_simple is 0 at the true noise; DDPM (1000 steps) and DDIM (20 steps) both land on a point-mass
data distribution; guidance's limits; a seed fixes the sample."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lineage_jax import diffusion as D
from lineage_jax.config import ConfigError

SCHED = D.make_schedule("linear", 1000)
X0 = jnp.array([[0.5, -0.25, 0.9], [-0.8, 0.1, 0.0]])   # two "images" of 3 pixels, within [-1, 1]


def oracle(params, xt, t, cond):
    """The exact ε for data that is the point params[cond] (or params when no cond)."""
    x0 = params if cond is None else params[cond]
    a = SCHED.alphas_cumprod[t][:, None]
    return (xt - jnp.sqrt(a) * x0) / jnp.sqrt(1 - a)


def test_simple_loss_is_zero_for_the_true_noise_and_one_for_zero():
    key = jax.random.key(0)
    assert float(D.ddpm_loss(oracle, X0, SCHED, X0, key)) < 1e-8
    zero = lambda p, x, t, c: jnp.zeros_like(x)
    x0 = jnp.zeros((512, 16))
    assert abs(float(D.ddpm_loss(zero, None, SCHED, x0, key)) - 1.0) < 0.05   # E ε² = 1


@pytest.mark.parametrize("sampler, steps", [("ddpm", None), ("ddim", 20)])
def test_samplers_land_on_point_mass_data(sampler, steps):
    out = D.sample(oracle, X0, SCHED, X0.shape, jax.random.key(1), sampler=sampler, steps=steps)
    np.testing.assert_allclose(np.asarray(out), np.asarray(X0), atol=1e-4)


def test_seed_fixes_the_sample_and_eta_adds_noise():
    eps = lambda p, x, t, c: 0.5 * x      # any deterministic model
    run = lambda seed, eta=0.0: np.asarray(D.sample(eps, None, SCHED, (2, 3), jax.random.key(seed), sampler="ddim",
                                                    steps=10, eta=eta, clip=None))
    np.testing.assert_array_equal(run(3), run(3))
    assert not np.allclose(run(3), run(4))
    assert not np.allclose(run(3, eta=1.0), run(3))


def test_guidance_limits_pick_the_conditional_or_unconditional_model():
    table = jnp.stack([jnp.zeros(3), X0[0], X0[1]])          # label 0 is the null label
    cond = jnp.array([1, 2])
    run = lambda g, c=cond: np.asarray(D.sample(oracle, table, SCHED, (2, 3), jax.random.key(5), sampler="ddim",
                                                steps=10, cond=c, null=0, guidance=g))
    np.testing.assert_allclose(run(1.0), np.asarray(X0), atol=1e-4)                  # w = 1: ε(x, c)
    np.testing.assert_allclose(run(0.0), 0.0, atol=1e-4)                             # w = 0: ε(x, ∅)
    np.testing.assert_allclose(run(None), run(1.0), atol=1e-6)


def test_condition_dropout_rate():
    c = jnp.arange(1, 10001) % 7 + 1
    dropped = D.drop_condition(jax.random.key(0), c, 0, 0.2)
    assert abs(float(jnp.mean(dropped == 0)) - 0.2) < 0.02 and bool(jnp.all((dropped == 0) | (dropped == c)))


@pytest.mark.parametrize("kw, msg", [(dict(sampler="euler"), "allowed ddpm, ddim"),
                                     (dict(sampler="ddpm", steps=50), "use --sampler ddim"),
                                     (dict(sampler="ddim", steps=5000), "steps=5000"),
                                     (dict(sampler="ddim", eta=2.0), "eta=2.0")])
def test_bad_sampler_args_are_one_line(kw, msg):
    with pytest.raises(ConfigError, match=msg):
        D.sample(oracle, X0, SCHED, X0.shape, jax.random.key(0), **kw)
