"""Noise schedules and the closed-form forward / posterior distributions of DDPM.

Ho et al. 2020 (DDPM): linear betas from 1e-4 to 0.02 over T = 1000 steps; alphas_cumprod
ᾱ_t = ∏_{s<=t} (1 - β_s); q(x_t | x_0) = N(√ᾱ_t x_0, (1 - ᾱ_t) I) (eq. 4) and the posterior
q(x_{t-1} | x_t, x_0) with mean μ̃_t and variance β̃_t (eqs. 6-7). Nichol & Dhariwal 2021: the
cosine schedule ᾱ(t) = cos²((t/T + s)/(1 + s) · π/2), s = 0.008, betas clipped at 0.999.

A schedule is a value (``Schedule``: float32 arrays, computed in float64 then rounded, so the
table is as exact as float32 allows); the functions take it and arrays, and ``jit`` through.
Timestep indices are 0-based (t = 0 … T-1), as in diffusers.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from lineage_jax.config.errors import ConfigError, one_of

SCHEDULES = ("linear", "cosine")


class Schedule(NamedTuple):
    """β_t, α_t = 1 - β_t and ᾱ_t for t = 0 … T-1 (float32 arrays, shape [T])."""
    betas: jnp.ndarray
    alphas: jnp.ndarray
    alphas_cumprod: jnp.ndarray

    @property
    def timesteps(self) -> int:
        return int(self.betas.shape[0])


def linear_betas(timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> np.ndarray:
    """DDPM's linear β (Ho et al. 2020, §4): evenly spaced from beta_start to beta_end (float64)."""
    return np.linspace(beta_start, beta_end, timesteps, dtype=np.float64)


def cosine_betas(timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
    """Nichol & Dhariwal 2021 eq. 17: β_t = 1 - ᾱ(t+1)/ᾱ(t), ᾱ(t) = cos²((t/T + s)/(1+s)·π/2), ≤ max_beta."""
    def abar(u):
        return math.cos((u + s) / (1 + s) * math.pi / 2) ** 2
    return np.array([min(1 - abar((i + 1) / timesteps) / abar(i / timesteps), max_beta)
                     for i in range(timesteps)], dtype=np.float64)


def check_schedule_args(schedule: str, timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> None:
    """One ConfigError line for a bad schedule name, step count or β range (before any array is built)."""
    one_of("schedule", schedule, SCHEDULES)
    if not isinstance(timesteps, int) or timesteps < 2:
        raise ConfigError(f"timesteps={timesteps}: must be an integer >= 2")
    if schedule == "linear" and not 0 < beta_start <= beta_end < 1:
        raise ConfigError(f"beta_start={beta_start}, beta_end={beta_end}: need 0 < beta_start <= beta_end < 1")


def make_schedule(schedule: str = "linear", timesteps: int = 1000, beta_start: float = 1e-4,
                  beta_end: float = 0.02) -> Schedule:
    """The table of a named schedule (``linear`` as DDPM, ``cosine`` as improved DDPM)."""
    check_schedule_args(schedule, timesteps, beta_start, beta_end)
    betas = linear_betas(timesteps, beta_start, beta_end) if schedule == "linear" else cosine_betas(timesteps)
    alphas = 1.0 - betas
    return Schedule(jnp.asarray(betas, jnp.float32), jnp.asarray(alphas, jnp.float32),
                    jnp.asarray(np.cumprod(alphas), jnp.float32))


def _bcast(v: jnp.ndarray, x: jnp.ndarray) -> jnp.ndarray:
    """Per-example scalars [B] (or a scalar) -> broadcastable against x [B, ...]."""
    v = jnp.asarray(v, x.dtype)
    return v.reshape(v.shape + (1,) * (x.ndim - v.ndim))


def add_noise(sched: Schedule, x0: jnp.ndarray, noise: jnp.ndarray, t: jnp.ndarray) -> jnp.ndarray:
    """x_t = √ᾱ_t x_0 + √(1 - ᾱ_t) ε: a sample of q(x_t | x_0) in closed form (DDPM eq. 4). t: [B] or scalar."""
    acp = sched.alphas_cumprod[t]
    return _bcast(jnp.sqrt(acp), x0) * x0 + _bcast(jnp.sqrt(1.0 - acp), x0) * noise


def alpha_prev(sched: Schedule, t_prev: jnp.ndarray, final: float | None = 1.0) -> jnp.ndarray:
    """ᾱ at the previous timestep; for t_prev < 0 ``final`` (1.0: the clean end), or ᾱ_0 when None."""
    end = sched.alphas_cumprod[0] if final is None else jnp.asarray(final, jnp.float32)
    return jnp.where(t_prev >= 0, sched.alphas_cumprod[jnp.maximum(t_prev, 0)], end)


def posterior_mean_variance(sched: Schedule, x0: jnp.ndarray, xt: jnp.ndarray, t: jnp.ndarray,
                            t_prev: jnp.ndarray | None = None):
    """q(x_{t'} | x_t, x_0) for t' = t_prev (default t - 1): (mean, variance), DDPM eqs. 6-7.

    With a stride (t' < t - 1) the one-step β_t becomes 1 - ᾱ_t/ᾱ_{t'}, as for a sampler that
    skips steps: mean = √ᾱ_{t'} β / (1-ᾱ_t) · x_0 + √(ᾱ_t/ᾱ_{t'}) (1-ᾱ_{t'}) / (1-ᾱ_t) · x_t,
    variance β̃ = (1-ᾱ_{t'}) / (1-ᾱ_t) · β (floored at 1e-20, as diffusers does).
    """
    t = jnp.asarray(t)
    t_prev = t - 1 if t_prev is None else jnp.asarray(t_prev)
    a_t = sched.alphas_cumprod[t]
    a_prev = alpha_prev(sched, t_prev)
    alpha_step = a_t / a_prev
    beta_step = 1.0 - alpha_step
    c0 = jnp.sqrt(a_prev) * beta_step / (1.0 - a_t)
    ct = jnp.sqrt(alpha_step) * (1.0 - a_prev) / (1.0 - a_t)
    mean = _bcast(c0, x0) * x0 + _bcast(ct, xt) * xt
    var = jnp.maximum((1.0 - a_prev) / (1.0 - a_t) * beta_step, 1e-20)
    return mean, var
