"""One reverse step of DDPM (ancestral) and DDIM, and classifier-free guidance.

Every function takes the schedule, the model's ε-prediction and the noise it needs as arguments
(no hidden RNG), so a step is a pure function: the sampler loop owns the keys.
"""
from __future__ import annotations

import jax.numpy as jnp

from lineage_jax.config.errors import ConfigError
from lineage_jax.diffusion.schedules import Schedule, _bcast, alpha_prev, posterior_mean_variance


def predict_x0(sched: Schedule, xt: jnp.ndarray, eps: jnp.ndarray, t: jnp.ndarray,
               clip: float | None = 1.0) -> jnp.ndarray:
    """x̂_0 = (x_t - √(1-ᾱ_t) ε̂) / √ᾱ_t (DDPM eq. 15 inverted), clipped to [-clip, clip] unless None."""
    a_t = sched.alphas_cumprod[t]
    x0 = (xt - _bcast(jnp.sqrt(1.0 - a_t), xt) * eps) / _bcast(jnp.sqrt(a_t), xt)
    return x0 if clip is None else jnp.clip(x0, -clip, clip)


def ddpm_step(sched: Schedule, eps: jnp.ndarray, t: jnp.ndarray, xt: jnp.ndarray, noise: jnp.ndarray,
              t_prev: jnp.ndarray | None = None, clip: float | None = 1.0) -> jnp.ndarray:
    """x_{t-1} ~ q(x_{t-1} | x_t, x̂_0): DDPM's ancestral step (Algorithm 2 via eq. 7, σ² = β̃_t).

    The mean is the posterior mean at the predicted (optionally clipped) x̂_0; no noise is added at
    t = 0. Equals diffusers' ``DDPMScheduler.step`` (variance_type ``fixed_small``) given its noise.
    """
    t = jnp.asarray(t)
    x0 = predict_x0(sched, xt, eps, t, clip)
    mean, var = posterior_mean_variance(sched, x0, xt, t, t_prev)
    sigma = jnp.where(t > 0, jnp.sqrt(var), 0.0)
    return mean + _bcast(sigma, xt) * noise


def ddim_timesteps(timesteps: int, steps: int, offset: int = 0) -> jnp.ndarray:
    """The DDIM sub-sequence τ, descending: multiples of T // steps (diffusers' ``leading`` spacing)."""
    if not 1 <= steps <= timesteps:
        raise ConfigError(f"steps={steps}: must be between 1 and the schedule's {timesteps} timesteps")
    stride = timesteps // steps
    return jnp.arange(steps, dtype=jnp.int32)[::-1] * stride + offset


def ddim_step(sched: Schedule, eps: jnp.ndarray, t: jnp.ndarray, t_prev: jnp.ndarray, xt: jnp.ndarray,
              eta: float = 0.0, noise: jnp.ndarray | None = None, clip: float | None = 1.0,
              final_alpha: float | None = 1.0, recompute_eps: bool = False) -> jnp.ndarray:
    """Song et al. 2021 eq. 12: x_{t'} = √ᾱ_{t'} x̂_0 + √(1-ᾱ_{t'}-σ²) ε̂ + σ z,
    σ = η √((1-ᾱ_{t'})/(1-ᾱ_t)) √(1-ᾱ_t/ᾱ_{t'}) (eq. 16). η = 0: deterministic; η = 1: DDPM's variance.

    By default ε̂ is the model's own prediction, as in diffusers' ``DDIMScheduler.step`` with its defaults.
    ``recompute_eps``: after clipping, ε̂ is re-derived from the clipped x̂_0, ε̂ = (x_t - √ᾱ_t x̂_0) / √(1-ᾱ_t)
    (diffusers' ``use_clipped_model_output=True``), so the step stays on the line through x_t that DDIM's
    deterministic ODE view follows; without it a clipped x̂_0 is paired with the unclipped ε̂, which no
    longer explains x_t. A no-op when nothing is clipped. ``final_alpha``: ᾱ past the last step (None: ᾱ_0).
    """
    t, t_prev = jnp.asarray(t), jnp.asarray(t_prev)
    a_t = sched.alphas_cumprod[t]
    a_prev = alpha_prev(sched, t_prev, final_alpha)
    x0 = predict_x0(sched, xt, eps, t, clip)
    if recompute_eps and clip is not None:
        eps = (xt - _bcast(jnp.sqrt(a_t), xt) * x0) / _bcast(jnp.sqrt(1.0 - a_t), xt)
    var = (1.0 - a_prev) / (1.0 - a_t) * (1.0 - a_t / a_prev)
    sigma = eta * jnp.sqrt(var)
    out = _bcast(jnp.sqrt(a_prev), xt) * x0 + _bcast(jnp.sqrt(1.0 - a_prev - sigma ** 2), xt) * eps
    if eta > 0:
        if noise is None:
            raise ValueError("ddim_step: eta > 0 needs noise")
        out = out + _bcast(sigma, xt) * noise
    return out


def cfg_combine(eps_uncond: jnp.ndarray, eps_cond: jnp.ndarray, scale: float) -> jnp.ndarray:
    """Classifier-free guidance (Ho & Salimans 2022): ε̃ = ε_∅ + w (ε_c - ε_∅).

    w is diffusers' / Stable Diffusion's ``guidance_scale``: w = 1 is the conditional model alone,
    w = 0 the unconditional one; the paper's (1 + w') ε_c - w' ε_∅ is the same with w = 1 + w'.
    """
    return eps_uncond + scale * (eps_cond - eps_uncond)
