"""Sample quality as numbers: the Fréchet distance between two sets of features (Heusel et al. 2017, FID).

FID fits a Gaussian to each set of features of a fixed classifier (Inception's pool features in the paper;
here the penultimate layer of the digit classifier, ``lineage_jax/vision/classifier.py``) and measures
d² = ‖μ₁ - μ₂‖² + Tr(Σ₁ + Σ₂ - 2 (Σ₁ Σ₂)^{1/2}) (the 2-Wasserstein distance of the two Gaussians,
Dowson & Landau 1982). The matrix square root is scipy's ``sqrtm``, as in the reference implementations;
everything is float64 numpy, outside ``jit``: it is a metric, not a training signal.
"""
from __future__ import annotations

import warnings

import numpy as np


def gaussian_stats(features) -> tuple[np.ndarray, np.ndarray]:
    """(μ [D], Σ [D, D]) of features [N, D] in float64; Σ the unbiased sample covariance (N - 1)."""
    f = np.asarray(features, np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"gaussian_stats: features must be [N >= 2, D], got shape {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1])


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """d² between N(μ₁, Σ₁) and N(μ₂, Σ₂). A singular product (few samples for the dimension) gets ``eps``
    on both diagonals before the square root, as pytorch-fid does; sqrtm's tiny imaginary part is dropped."""
    from scipy import linalg
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    with warnings.catch_warnings():      # a singular product warns; it is handled just below
        warnings.simplefilter("ignore")
        covmean = linalg.sqrtm(s1 @ s2)
        if not np.isfinite(covmean).all():
            offset = np.eye(s1.shape[0]) * eps
            covmean = linalg.sqrtm((s1 + offset) @ (s2 + offset))
    covmean = np.real(covmean)
    diff = mu1 - mu2
    return float(max(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean), 0.0))


def frechet_from_features(a, b) -> float:
    """The Fréchet distance between the Gaussians fitted to feature sets a [N, D] and b [M, D]."""
    return frechet_distance(*gaussian_stats(a), *gaussian_stats(b))
