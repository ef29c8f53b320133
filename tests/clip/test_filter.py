"""CLIP-score filtering as a pure stage: pair cosines, the keep mask, precision / recall on planted
noise, average precision equal to scikit-learn's, and the two-mode threshold (EM, = scikit-learn's GaussianMixture)."""
import numpy as np
import pytest

from lineage_jax.clip import filter as clip_filter


def test_pair_scores_keep_and_quality():
    img = np.array([[1.0, 0], [0, 2.0], [1.0, 1.0], [3.0, 0]])
    txt = np.array([[2.0, 0], [0, 1.0], [-1.0, 1.0], [0, 1.0]])
    s = clip_filter.pair_scores(img, txt)
    np.testing.assert_allclose(s, [1, 1, 0, 0], atol=1e-12)
    keep = clip_filter.keep_mask(s, 0.5)
    assert list(keep) == [True, True, False, False]
    q = clip_filter.removal_quality(keep, noisy=[False, True, True, False])
    assert q == {"precision": 0.5, "recall": 0.5, "kept_fraction": 0.5, "kept_noise": 0.5}


def test_average_precision_equals_sklearn():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(1)
    y = rng.random(200) < 0.2
    s = np.round(rng.standard_normal(200) + y, 1)        # rounded: ties, as the reference handles them
    assert clip_filter.average_precision(s, y) == pytest.approx(metrics.average_precision_score(y, s), rel=1e-12)


def test_two_mode_threshold_splits_rare_noise_from_the_pairs():
    mixture = pytest.importorskip("sklearn.mixture")
    rng = np.random.default_rng(2)
    s = np.r_[rng.normal(0.1, 0.05, 100), rng.normal(0.7, 0.08, 900)]
    t, fit = clip_filter.two_mode_threshold(s)
    assert 0.2 < t < 0.5
    ref = mixture.GaussianMixture(2, tol=1e-10, max_iter=1000, random_state=0).fit(s[:, None])
    np.testing.assert_allclose(fit["means"], np.sort(ref.means_[:, 0]), atol=1e-4)
    q = clip_filter.removal_quality(clip_filter.keep_mask(s, t), np.arange(1000) < 100)
    assert q["recall"] == 1.0 and q["precision"] > 0.95
