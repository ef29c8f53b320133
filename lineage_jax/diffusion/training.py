"""DDPM's training objective and the sampling loops, over any ε-model given as a function.

``eps_fn(params, x_t, t, cond) -> ε̂`` is whatever network predicts the noise (a U-Net, an MLP);
this module never builds one, so the objective and the samplers are tested against oracles
and reused by any model. Randomness comes only from the keys passed in: sampling is a pure
function of (params, key), hence deterministic given a seed.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from lineage_jax.config.errors import ConfigError, one_of
from lineage_jax.diffusion.samplers import cfg_combine, ddim_step, ddim_timesteps, ddpm_step
from lineage_jax.diffusion.schedules import Schedule, add_noise

EpsFn = Callable[..., jax.Array]
SAMPLERS = ("ddpm", "ddim")


def drop_condition(key: jax.Array, cond: jax.Array, null: int, p_uncond: float) -> jax.Array:
    """Classifier-free guidance's training trick (Ho & Salimans 2022, Alg. 1): each label is
    replaced by the null label with probability p_uncond, so one network learns both ε(x, c) and ε(x, ∅)."""
    return jnp.where(jax.random.uniform(key, cond.shape) < p_uncond, null, cond)


def ddpm_loss(eps_fn: EpsFn, params, sched: Schedule, x0: jax.Array, key: jax.Array,
              cond: jax.Array | None = None, null: int = 0, p_uncond: float = 0.0) -> jax.Array:
    """L_simple = E_{t, x_0, ε} ‖ε - ε_θ(√ᾱ_t x_0 + √(1-ᾱ_t) ε, t)‖² (Ho et al. 2020, eq. 14; Alg. 1),
    t uniform over 0 … T-1, the mean over every element."""
    k_t, k_eps, k_drop = jax.random.split(key, 3)
    t = jax.random.randint(k_t, (x0.shape[0],), 0, sched.timesteps)
    eps = jax.random.normal(k_eps, x0.shape, x0.dtype)
    if cond is not None and p_uncond > 0:
        cond = drop_condition(k_drop, cond, null, p_uncond)
    pred = eps_fn(params, add_noise(sched, x0, eps, t), t, cond)
    return jnp.mean(jnp.square(pred.astype(jnp.float32) - eps.astype(jnp.float32)))


def guided_eps(eps_fn: EpsFn, params, x, t, cond, null: int, guidance: float | None) -> jax.Array:
    """ε̂ at (x, t): the model's own, or with guidance w the CFG combination of ε(x, c) and ε(x, ∅)."""
    if guidance is None or cond is None:
        return eps_fn(params, x, t, cond)
    return cfg_combine(eps_fn(params, x, t, jnp.full_like(cond, null)), eps_fn(params, x, t, cond), guidance)


def check_sample_args(sched: Schedule, sampler: str, steps: int | None, eta: float) -> None:
    """One ConfigError line for a bad sampler, step count or η, before anything compiles."""
    one_of("sampler", sampler, SAMPLERS)
    if sampler == "ddpm" and steps not in (None, sched.timesteps):
        raise ConfigError(f"steps={steps}: the ddpm sampler takes all {sched.timesteps} steps; use --sampler ddim")
    if sampler == "ddim" and steps is not None and not 1 <= steps <= sched.timesteps:
        raise ConfigError(f"steps={steps}: must be between 1 and {sched.timesteps}")
    if not 0.0 <= eta <= 1.0:
        raise ConfigError(f"eta={eta}: must be between 0 (deterministic DDIM) and 1 (DDPM's variance)")


def sample(eps_fn: EpsFn, params, sched: Schedule, shape: tuple[int, ...], key: jax.Array, *,
           sampler: str = "ddpm", steps: int | None = None, eta: float = 0.0, cond: jax.Array | None = None,
           null: int = 0, guidance: float | None = None, clip: float | None = 1.0,
           recompute_eps: bool = False) -> jax.Array:
    """x_T ~ N(0, I), then the reverse chain in one ``lax.scan``: DDPM's T ancestral steps
    (Alg. 2) or DDIM's ``steps`` strided steps with η (Song et al. 2021, §4.2). Returns x_0.
    ``recompute_eps`` (DDIM only): ε̂ re-derived from the clipped x̂_0 (see ``ddim_step``)."""
    check_sample_args(sched, sampler, steps, eta)
    k_init, k_steps = jax.random.split(key)
    x = jax.random.normal(k_init, shape)
    if sampler == "ddpm":
        ts = jnp.arange(sched.timesteps - 1, -1, -1, dtype=jnp.int32)
        stride = 1
    else:
        steps = min(50, sched.timesteps) if steps is None else steps
        ts, stride = ddim_timesteps(sched.timesteps, steps), sched.timesteps // steps

    def body(x, i_t):
        i, t = i_t
        tb = jnp.full((shape[0],), t, jnp.int32)
        eps = guided_eps(eps_fn, params, x, tb, cond, null, guidance)
        noise = jax.random.normal(jax.random.fold_in(k_steps, i), shape)
        if sampler == "ddpm":
            return ddpm_step(sched, eps, t, x, noise, clip=clip), None
        return ddim_step(sched, eps, t, t - stride, x, eta=eta, noise=noise, clip=clip,
                         recompute_eps=recompute_eps), None

    x, _ = jax.lax.scan(body, x, (jnp.arange(ts.shape[0]), ts))
    return x
