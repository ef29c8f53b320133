"""The Fréchet distance: zero between a set and itself, the written-out closed form for commuting
(diagonal) covariances and in one dimension, symmetric, and it grows as one set moves away."""
import numpy as np
import pytest

from lineage_jax.diffusion.metrics import frechet_distance, frechet_from_features, gaussian_stats


def test_identical_sets_are_at_distance_zero_and_the_distance_is_symmetric():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(300, 6)), rng.normal(size=(300, 6)) @ rng.normal(size=(6, 6))
    assert frechet_from_features(a, a) == pytest.approx(0.0, abs=1e-8)
    assert frechet_from_features(a, b) == pytest.approx(frechet_from_features(b, a), rel=1e-6)


def test_closed_form_for_diagonal_covariances():
    """Commuting covariances: d² = ‖μ₁-μ₂‖² + Σ_i (√σ1_i - √σ2_i)² (written out by hand)."""
    mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([0.5, 1.0, 0.0])
    v1, v2 = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    want = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(v1) - np.sqrt(v2)) ** 2)
    assert frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2)) == pytest.approx(want, rel=1e-10)
    assert frechet_distance(0.0, 4.0, 3.0, 1.0) == pytest.approx(9.0 + 1.0, rel=1e-10)   # 1-D: (μ diff)² + (σ1-σ2)²


def test_stats_and_monotone_in_a_shift():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(2000, 4))
    mu, sigma = gaussian_stats(a)
    np.testing.assert_allclose(sigma, np.eye(4), atol=0.1)
    d = [frechet_from_features(a, rng.normal(size=(2000, 4)) + s) for s in (0.0, 0.5, 1.0, 2.0)]
    assert d == sorted(d) and d[-1] == pytest.approx(4 * 4.0, rel=0.1)    # shift 2 in 4 dims: 16
    with pytest.raises(ValueError, match="features must be"):
        gaussian_stats(np.zeros((1, 3)))
