"""Diffusion (Ho et al. 2020; Song et al. 2021; Ho & Salimans 2022) as pure functions.

``schedules``: a noise schedule as a value (betas, alphas_cumprod), the closed-form forward
process q(x_t | x_0) and the posterior q(x_{t-1} | x_t, x_0). ``samplers``: one DDPM ancestral
step, one DDIM step (eta), the DDIM timestep grid and classifier-free guidance. Everything takes
arrays and returns arrays, so it composes with ``jit``/``vmap``; ``tests/diffusion`` compares
each number with diffusers' ``DDPMScheduler`` / ``DDIMScheduler``. ``training``: the simple ε-loss
(with CFG's label dropout) and the DDPM / DDIM sampling loops over any ε-model function.
"""
from lineage_jax.diffusion.samplers import cfg_combine, ddim_step, ddim_timesteps, ddpm_step, predict_x0
from lineage_jax.diffusion.training import SAMPLERS, ddpm_loss, drop_condition, guided_eps, sample
from lineage_jax.diffusion.schedules import (
    SCHEDULES, Schedule, add_noise, make_schedule, posterior_mean_variance)

__all__ = ["SAMPLERS", "ddpm_loss", "drop_condition", "guided_eps", "sample", "SCHEDULES", "Schedule", "add_noise", "cfg_combine", "ddim_step", "ddim_timesteps", "ddpm_step",
           "make_schedule", "posterior_mean_variance", "predict_x0"]
