"""Toolformer's filter: the weights are the paper's (1, .8, .6, .4, .2, then 0, normalised), L⁻ takes the
better of no call and a call without result, and a call is kept exactly when L⁻ − L⁺ ≥ τ_f."""
import numpy as np
import pytest

from lineage_jax.reasoning import toolformer


def test_weights_are_the_papers():
    np.testing.assert_allclose(toolformer.weights(7), np.array([1, .8, .6, .4, .2, 0, 0]) / 3.0)
    np.testing.assert_allclose(toolformer.weights(2), np.array([1, .8]) / 1.8)
    with pytest.raises(ValueError, match="n=0"):
        toolformer.weights(0)


def test_keep_compares_the_best_baseline_to_the_call_with_its_result():
    plus = np.array([[0.1, 0.1, 0.1], [2.0, 2.0, 2.0], [1.0, 1.0, 1.0]])
    none = np.array([[3.0, 3.0, 3.0], [2.0, 2.0, 2.0], [1.5, 1.5, 1.5]])
    call_only = np.array([[5.0, 5.0, 5.0], [1.0, 1.0, 1.0], [1.2, 1.2, 1.2]])
    kept, gain = toolformer.keep(plus, none, call_only, tau=0.5)
    np.testing.assert_allclose(gain, [2.9, -1.0, 0.2])
    assert kept.tolist() == [True, False, False]
    assert toolformer.keep(plus, none, call_only, tau=0.1)[0].tolist() == [True, False, True]
    # the weighting: a gain only on a late token counts less than the same gain on the first
    early = toolformer.weighted_loss(np.array([0.0, 1.0, 1.0, 1.0]))
    late = toolformer.weighted_loss(np.array([1.0, 1.0, 1.0, 0.0]))
    assert early < late
