"""CLIP-score filtering (Schuhmann et al. 2022, LAION-5B §3.2): keep an image-text pair only when the
cosine similarity of its CLIP embeddings is above a threshold (LAION used 0.28 with ViT-B/32 for
English pairs). A pure stage: scores in, keep-mask out; and how well it finds planted noise.

``Scorer`` (``clip.store``) wraps a trained run as a plain function ``(image, text) -> cosine``, with
``keep(document, threshold)`` for a data pipeline that passes documents {"image", "caption"} along.
Without labels to tune on, ``two_mode_threshold`` picks the cut between the two modes of the score
histogram (matched pairs high, mismatched low) from a two-Gaussian mixture fitted by EM.
"""
from __future__ import annotations

import numpy as np


def pair_scores(image_emb, text_emb) -> np.ndarray:
    """[N] cosine similarity of each aligned pair (row i with row i)."""
    a, b = np.asarray(image_emb, np.float64), np.asarray(text_emb, np.float64)
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return np.sum(a * b, axis=1)


def keep_mask(scores, threshold: float) -> np.ndarray:
    """The filter: True where score >= threshold (the pair stays in the data set)."""
    return np.asarray(scores) >= threshold


def removal_quality(keep, noisy) -> dict:
    """How the removed pairs match the planted noise: precision = noisy / removed, recall = removed noisy /
    all noisy (the pairs the filter was meant to catch), and the fraction kept."""
    keep, noisy = np.asarray(keep, bool), np.asarray(noisy, bool)
    removed = ~keep
    tp = int(np.sum(removed & noisy))
    return {"precision": tp / max(int(removed.sum()), 1), "recall": tp / max(int(noisy.sum()), 1),
            "kept_fraction": float(keep.mean()), "kept_noise": float(noisy[keep].mean()) if keep.any() else 0.0}


def average_precision(scores, positive) -> float:
    """Area under the precision-recall curve of ranking by ``scores`` (higher = more likely positive):
    Σ_k (R_k − R_{k−1}) P_k over the distinct thresholds (scikit-learn's ``average_precision_score``)."""
    s, y = np.asarray(scores, np.float64), np.asarray(positive, bool)
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]      # the last index of each run of equal scores
    tp = np.cumsum(y)[last]
    precision, recall = tp / (last + 1), tp / max(int(y.sum()), 1)
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def two_mode_threshold(scores, iters: int = 200) -> tuple[float, dict]:
    """The cut between the two modes of the scores, fitted without labels: a two-component 1-D Gaussian
    mixture by EM (started at the 10th and 90th percentiles), and the score between the two means where
    the weighted densities are equal (the Bayes boundary). Unlike Otsu's between-class variance it is
    not pulled toward the small group when the noise is rare. Returns (threshold, the mixture)."""
    s = np.asarray(scores, np.float64)
    mu = np.percentile(s, [10, 90]).astype(np.float64)
    var = np.full(2, max(s.var(), 1e-12) / 4)
    w = np.array([0.5, 0.5])
    for _ in range(iters):
        logp = np.log(w) - 0.5 * np.log(2 * np.pi * var) - 0.5 * (s[:, None] - mu) ** 2 / var
        r = np.exp(logp - logp.max(1, keepdims=True))
        r /= r.sum(1, keepdims=True)
        n = r.sum(0) + 1e-12
        w, mu = n / len(s), (r * s[:, None]).sum(0) / n
        var = np.maximum((r * (s[:, None] - mu) ** 2).sum(0) / n, 1e-8)
    lo, hi = np.argsort(mu)
    grid = np.linspace(mu[lo], mu[hi], 2001)
    dens = lambda k: np.log(w[k]) - 0.5 * np.log(var[k]) - 0.5 * (grid - mu[k]) ** 2 / var[k]   # noqa: E731
    t = float(grid[np.argmax(dens(hi) >= dens(lo))])
    return t, {"means": [float(mu[lo]), float(mu[hi])], "stds": [float(np.sqrt(var[lo])), float(np.sqrt(var[hi]))],
               "weights": [float(w[lo]), float(w[hi])]}
