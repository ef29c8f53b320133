r"""Approach 3: fit L(N, D) = E + A/N^α + B/D^β the way Hoffmann et al. 2022 (App. D.2) did.

With A = e^a, B = e^b, E = e^e the model's log-loss is a log-sum-exp, which keeps every term
positive without constraints::

    log L̂(N, D) = LSE(a − α·log N,  b − β·log D,  e)

and the fit minimises Σ Huber_δ(log L̂ − log L) with δ = 1e-3 (robust to outlying runs) by
L-BFGS, started from the best points of their grid α, β ∈ {0, .5, …, 2}, e ∈ {−1, −.5, …, 1},
a, b ∈ {0, 5, …, 25}. Besiroglu et al. 2024 found the original's optimiser stopped early; the
tolerances here are tight, and the gradient is exact (softmax weights of the LSE).
"""
from __future__ import annotations

import itertools
from typing import Sequence

import numpy as np

from lineage_jax.scaling.fit import Point, ScalingError, check_points

DELTA = 1e-3
GRID = np.array(list(itertools.product(
    np.arange(0, 30, 5.0), np.arange(0, 30, 5.0), np.arange(-1, 1.5, 0.5),
    np.arange(0, 2.5, 0.5), np.arange(0, 2.5, 0.5))))       # rows (a, b, e, alpha, beta): 4500 starts


def huber(r, delta: float = DELTA):
    """Huber's loss: r²/2 inside ±δ, δ(|r| − δ/2) outside."""
    r = np.abs(r)
    return np.where(r <= delta, 0.5 * r * r, delta * (r - 0.5 * delta))


def _terms(theta, log_n, log_d):
    a, b, e, alpha, beta = np.moveaxis(np.asarray(theta, float), -1, 0)
    return np.stack(np.broadcast_arrays(a[..., None] - alpha[..., None] * log_n,
                                        b[..., None] - beta[..., None] * log_d,
                                        e[..., None] + 0 * log_n), axis=-1)   # [..., points, 3]


def objective(theta, log_n, log_d, log_l, delta: float = DELTA):
    """Σ Huber(LSE(terms) − log L) for one θ = (a, b, e, α, β) or a stack of them [..., 5]."""
    t = _terms(theta, log_n, log_d)
    m = t.max(-1)
    lse = m + np.log(np.exp(t - m[..., None]).sum(-1))
    return huber(lse - log_l, delta).sum(-1)


def _value_and_grad(theta, log_n, log_d, log_l, delta):
    t = _terms(theta, log_n, log_d)
    m = t.max(-1)
    w = np.exp(t - m[..., None])
    s = w.sum(-1)
    r = m + np.log(s) - log_l
    w = w / s[..., None]                                  # softmax: d LSE / d term
    dr = np.clip(r, -delta, delta)                        # Huber'(r)
    grad = np.array([(dr * w[:, 0]).sum(), (dr * w[:, 1]).sum(), (dr * w[:, 2]).sum(),
                     -(dr * w[:, 0] * log_n).sum(), -(dr * w[:, 1] * log_d).sum()])
    return float(huber(r, delta).sum()), grad


def _polish(theta0, log_n, log_d, log_l, delta):
    from scipy.optimize import minimize
    res = minimize(_value_and_grad, theta0, args=(log_n, log_d, log_l, delta), jac=True, method="L-BFGS-B",
                   options={"maxiter": 2000, "ftol": 1e-15, "gtol": 1e-12, "maxcor": 20})
    return res.x, float(res.fun)


def fit_theta(points: Sequence[Point], starts: int = 8, delta: float = DELTA, init=None) -> np.ndarray:
    """θ = (a, b, e, α, β) of least Huber loss: L-BFGS from the ``starts`` best grid points (and ``init``)."""
    log_n = np.log([p.params for p in points])
    log_d = np.log([p.tokens for p in points])
    log_l = np.log([p.loss for p in points])
    values = objective(GRID, log_n, log_d, log_l, delta)
    candidates = list(GRID[np.argsort(values)[:starts]]) + ([np.asarray(init, float)] if init is not None else [])
    best, best_f = None, np.inf
    for theta0 in candidates:
        theta, f = _polish(theta0, log_n, log_d, log_l, delta)
        if f < best_f and np.all(np.isfinite(theta)):
            best, best_f = theta, f
    return best


def approach3(points: Sequence[Point], starts: int = 8, delta: float = DELTA, init=None) -> dict:
    """E, A, B, α, β and the allocation they imply (a = β/(α+β), b = α/(α+β), G)."""
    check_points(points)
    sizes, tokens = {p.params for p in points}, {p.tokens for p in points}
    if len(sizes) < 2 or len(tokens) < 2 or len(points) < 5:
        raise ScalingError(f"approach 3 fits 5 constants: it needs 5 or more runs spanning 2 or more sizes and 2 or "
                           f"more token counts; got {len(points)} runs, {len(sizes)} sizes, {len(tokens)} token counts")
    a, b, e, alpha, beta = fit_theta(points, starts, delta, init)
    A, B, E = float(np.exp(a)), float(np.exp(b)), float(np.exp(e))
    out = {"E": E, "A": A, "B": B, "alpha": float(alpha), "beta": float(beta), "theta": [float(v) for v in (a, b, e,
                                                                                                         alpha, beta)]}
    if alpha > 0 and beta > 0:
        out["a"] = float(beta / (alpha + beta))
        out["b"] = float(alpha / (alpha + beta))
        out["G"] = float((alpha * A / (beta * B)) ** (1 / (alpha + beta)))
    return out
