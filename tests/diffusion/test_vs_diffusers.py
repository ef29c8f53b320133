"""The schedules, q(x_t | x_0), the posterior and one DDPM / DDIM step equal diffusers' schedulers,
for every t on a grid, on DDPM's configuration and on held-out ones (other T, β range, cosine)."""
import jax.numpy as jnp
import numpy as np
import pytest

from lineage_jax import diffusion as D

torch = pytest.importorskip("torch")
schedulers = pytest.importorskip("diffusers.schedulers")

# (our schedule, diffusers' beta_schedule, T, beta_start, beta_end)
CONFIGS = [("linear", "linear", 1000, 1e-4, 0.02),       # DDPM's own
           ("linear", "linear", 250, 5e-4, 0.03),        # held out: other T and range
           ("cosine", "squaredcos_cap_v2", 500, 1e-4, 0.02)]
IDS = ["ddpm-linear-1000", "linear-250", "cosine-500"]


def pair(cfg, cls):
    name, theirs, T, b0, b1 = cfg
    ours = D.make_schedule(name, T, b0, b1)
    ref = cls(num_train_timesteps=T, beta_schedule=theirs, beta_start=b0, beta_end=b1)
    return ours, ref


def grid(T, n=12):
    return sorted({0, 1, T - 1, *np.linspace(0, T - 1, n).astype(int).tolist()})


def data(shape=(2, 3, 4, 4), seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape).astype(np.float32) for _ in range(3)]


def close(ours, theirs, rtol=1e-4, atol=1e-5):
    """Float32 agreement: diffusers rounds its ᾱ cumprod in float32, ours in float64 (~1e-5 relative at t ~ T)."""
    np.testing.assert_allclose(np.asarray(ours), theirs.numpy() if hasattr(theirs, "numpy") else theirs,
                               rtol=rtol, atol=atol)


@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
def test_schedule_table_equals_diffusers(cfg):
    ours, ref = pair(cfg, schedulers.DDPMScheduler)
    close(ours.betas, ref.betas, rtol=1e-6)
    # diffusers' cumprod runs in float32, ours in float64: a few float32 ulps apart at most
    close(ours.alphas_cumprod, ref.alphas_cumprod, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
def test_add_noise_posterior_and_ddpm_step_equal_diffusers(cfg):
    ours, ref = pair(cfg, schedulers.DDPMScheduler)
    x0, xt, eps = data()
    for t in grid(ours.timesteps):
        tt = torch.full((x0.shape[0],), t, dtype=torch.long)
        close(D.add_noise(ours, x0, eps, jnp.full((x0.shape[0],), t)),
              ref.add_noise(torch.from_numpy(x0), torch.from_numpy(eps), tt))
        _, var = D.posterior_mean_variance(ours, x0, xt, t)
        close(var, ref._get_variance(t), rtol=1e-4, atol=5e-8)   # float32 1 - ᾱ_t/ᾱ_{t-1} cancels at small t, in both
        step = ref.step(torch.from_numpy(eps), t, torch.from_numpy(xt), generator=torch.Generator().manual_seed(t))
        noise = torch.randn(xt.shape, generator=torch.Generator().manual_seed(t)).numpy()   # the same draw
        # near t = T the cosine ᾱ is ~1e-8: the two float32 tables' rounding shows at ~1e-4 relative
        close(D.ddpm_step(ours, eps, t, xt, noise), step.prev_sample, rtol=5e-4, atol=5e-5)
        close(D.predict_x0(ours, xt, eps, t), step.pred_original_sample, rtol=1e-4, atol=2e-5)


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
def test_ddim_steps_equal_diffusers(cfg, eta):
    ours, ref = pair(cfg, schedulers.DDIMScheduler)
    steps = 50 if ours.timesteps >= 500 else 25
    ref.set_timesteps(steps)
    taus = D.ddim_timesteps(ours.timesteps, steps)
    np.testing.assert_array_equal(np.asarray(taus), ref.timesteps.numpy())
    x0, xt, eps = data(seed=1)
    stride = ours.timesteps // steps
    for i, t in enumerate(ref.timesteps.tolist()):
        if i % 5 and i != len(taus) - 1:    # every 5th step and the last (whose ᾱ_prev is the final 1.0)
            continue
        out = ref.step(torch.from_numpy(eps), t, torch.from_numpy(xt), eta=eta,
                       generator=torch.Generator().manual_seed(i))
        noise = torch.randn(xt.shape, generator=torch.Generator().manual_seed(i)).numpy()
        close(D.ddim_step(ours, eps, t, t - stride, xt, eta=eta, noise=noise), out.prev_sample, rtol=1e-4, atol=2e-5)


@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
def test_ddim_step_with_recomputed_eps_equals_diffusers_clipped_model_output(cfg):
    """``recompute_eps=True`` is diffusers' ``use_clipped_model_output=True`` (η = 0.5 so the variance term is in
    play); the inputs are wide enough that x̂_0 is clipped at most steps, so the option changes the result."""
    ours, ref = pair(cfg, schedulers.DDIMScheduler)
    steps = 50 if ours.timesteps >= 500 else 25
    ref.set_timesteps(steps)
    _, xt, eps = data(seed=2)
    stride = ours.timesteps // steps
    changed = 0
    for i, t in enumerate(ref.timesteps.tolist()):
        if i % 5 and i != steps - 1:
            continue
        out = ref.step(torch.from_numpy(eps), t, torch.from_numpy(xt), eta=0.5, use_clipped_model_output=True,
                       generator=torch.Generator().manual_seed(i))
        noise = torch.randn(xt.shape, generator=torch.Generator().manual_seed(i)).numpy()
        mine = D.ddim_step(ours, eps, t, t - stride, xt, eta=0.5, noise=noise, recompute_eps=True)
        close(mine, out.prev_sample, rtol=1e-4, atol=5e-5)
        plain = D.ddim_step(ours, eps, t, t - stride, xt, eta=0.5, noise=noise)
        changed += not np.allclose(np.asarray(plain), np.asarray(mine), atol=1e-3)
    assert changed >= 2, "the grid never clipped x0: the comparison would not test the option"
