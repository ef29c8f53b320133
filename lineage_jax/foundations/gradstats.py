"""Activation gradients against a float format's range (Micikevicius et al. 2018, §3.2 and Fig. 3).

fp16 has 5 exponent bits: normal numbers from 2^-14 ≈ 6.1e-5 to 65,504, subnormals down to 2^-24 ≈ 6.0e-8;
a gradient smaller than half of 2^-24 rounds to zero ("flushes"). The paper's Fig. 3 histograms the
activation gradients of a real network and finds most of them below 2^-24: without loss scaling they are
lost. Multiplying the loss by S multiplies every δ by S (chain rule) and shifts the histogram right by
log2 S. bf16 has float32's 8 exponent bits (normals down to 2^-126), so it flushes nothing in this range.

``deltas`` runs the MLP's backward (``foundations.mlp``'s delta rule) in a compute dtype the way mixed
precision does: the loss and its gradient δ_L in float32 (§3.3), scaled by S, then cast down.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from lineage_jax.foundations import mlp

FP16_MIN_SUBNORMAL = 2.0 ** -24
FP16_MIN_NORMAL = 2.0 ** -14
FP16_MAX = 65504.0


def cast(tree, dtype):
    return jax.tree.map(lambda a: a.astype(dtype), tree)


def deltas(params, x, y, act: str, dtype=jnp.float32, scale: float = 1.0) -> list[jax.Array]:
    """δ_l = S · ∂E/∂a_l for every layer with the backward pass in ``dtype``: δ_L = S·(softmax − onehot)/B formed
    in float32 (§3.3), cast to ``dtype``, then δ_{l-1} = (δ_l W_lᵀ) ⊙ f'(a_{l-1}) with W and f' cast to ``dtype``.
    The forward runs in float32, so every format sees the same active units and only the gradients' range
    differs (a low-precision forward would also flip a few ReLU masks)."""
    logits, cache = mlp.forward(params, x, act)
    _, delta = mlp.softmax_cross_entropy(logits, y)
    df = mlp.ACTIVATIONS[act][1]
    delta = (delta * scale).astype(dtype)
    out = [delta]
    for l in range(len(params) - 1, 0, -1):
        delta = (delta @ params[l]["w"].T.astype(dtype)) * df(cache[l - 1][1]).astype(dtype)
        out.append(delta)
    return out[::-1]


def flushed_fraction(reference, low) -> float:
    """Of the entries that are non-zero in ``reference`` (e.g. float32), the fraction that are exactly zero
    in ``low`` (the same gradients computed in a narrower format)."""
    ref = np.concatenate([np.asarray(r, np.float32).ravel() for r in reference])
    got = np.concatenate([np.asarray(g, np.float32).ravel() for g in low])
    nonzero = ref != 0
    return float(((got == 0) & nonzero).sum() / max(int(nonzero.sum()), 1))


def norm_lost(reference, low, scale: float = 1.0) -> float:
    """‖δ_ref − δ_low/S‖ / ‖δ_ref‖ over all layers: how much of the gradient (by size, not count) the format
    loses — small when only values far below the largest ones flush."""
    ref = np.concatenate([np.asarray(r, np.float64).ravel() for r in reference])
    got = np.concatenate([np.asarray(g, np.float64).ravel() for g in low]) / scale
    return float(np.linalg.norm(ref - got) / max(np.linalg.norm(ref), 1e-300))


def below_fraction(values, threshold: float) -> float:
    """Of the non-zero entries, the fraction with |v| < threshold."""
    v = np.abs(np.concatenate([np.asarray(a, np.float32).ravel() for a in values]))
    v = v[v != 0]
    return float((v < threshold).mean()) if v.size else 0.0


def log2_histogram(values, lo: int = -60, hi: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Counts of log2|v| of the non-zero entries in unit bins [lo, hi) (values outside land in the end bins)."""
    v = np.abs(np.concatenate([np.asarray(a, np.float64).ravel() for a in values]))
    e = np.clip(np.log2(v[v != 0]), lo, hi - 1e-9)
    edges = np.arange(lo, hi + 1)
    return np.histogram(e, bins=edges)[0], edges
