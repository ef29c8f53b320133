"""Toolformer's filter (Schick et al. 2023, §2, "Filtering API Calls"): keep a sampled call only if it helps.

For a call c_i inserted at position i with result r_i, and the per-token negative log-likelihoods of the
tokens x_i, x_{i+1}, … that follow it under three prefixes,

    L_i(z) = Σ_j w_{j−i} · nll(x_j | z, x_{<j}),     w̃_t = max(0, 1 − 0.2·t),  w_t = w̃_t / Σ_s w̃_s

    L⁺ = L_i(e(c_i, r_i))                      the call and its result
    L⁻ = min(L_i(ε), L_i(e(c_i, ε)))           no call, or the call without its result

the call is kept when L⁻ − L⁺ ≥ τ_f: the result must make the next tokens easier to predict by at least τ_f.
"""
from __future__ import annotations

import numpy as np


def weights(n: int, decay: float = 0.2) -> np.ndarray:
    """w_0 … w_{n−1}: max(0, 1 − decay·t), normalised to sum 1 (the next few tokens count most)."""
    w = np.maximum(0.0, 1.0 - decay * np.arange(n))
    if n < 1 or w.sum() == 0:
        raise ValueError(f"n={n}: at least one following token is needed")
    return w / w.sum()


def weighted_loss(nll: np.ndarray, decay: float = 0.2) -> np.ndarray:
    """L_i: nll [..., n] of the n tokens after the call position, weighted by ``weights`` -> [...]."""
    nll = np.asarray(nll, np.float64)
    return nll @ weights(nll.shape[-1], decay)


def keep(nll_with_result: np.ndarray, nll_without_call: np.ndarray, nll_call_only: np.ndarray, tau: float,
         decay: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """(keep [...] bool, L⁻ − L⁺ [...]) for each candidate call, from the three nll arrays [..., n]."""
    plus = weighted_loss(nll_with_result, decay)
    minus = np.minimum(weighted_loss(nll_without_call, decay), weighted_loss(nll_call_only, decay))
    gain = minus - plus
    return gain >= tau, gain
