"""Approach 3 (Huber on log-loss, LSE parameterisation, L-BFGS from a grid) recovers the constants
of a known law, and its gradient is exact."""
import numpy as np
import pytest

from lineage_jax.scaling import parametric as P
from lineage_jax.scaling.fit import Point, ScalingError
from lineage_jax.scaling.laws import CHINCHILLA, Parametric
from tests.scaling.test_fit import HELD_OUT, isoflop_points


def test_huber_is_quadratic_inside_delta_and_linear_outside():
    d = P.DELTA
    assert P.huber(np.array(d / 2)) == pytest.approx(0.5 * (d / 2) ** 2)
    assert P.huber(np.array(-3 * d)) == pytest.approx(d * (3 * d - d / 2))


def test_gradient_matches_finite_differences():
    pts = isoflop_points(CHINCHILLA, noise=0.02)
    ln, ld, ll = (np.log([getattr(p, k) for p in pts]) for k in ("params", "tokens", "loss"))
    theta = np.array([6.0, 6.0, 0.5, 0.3, 0.3])
    _, g = P._value_and_grad(theta, ln, ld, ll, 0.05)    # a wide δ: smooth where the check steps
    eps = 1e-6
    fd = [(P.objective(theta + eps * e, ln, ld, ll, 0.05) - P.objective(theta - eps * e, ln, ld, ll, 0.05)) / (2 * eps)
          for e in np.eye(5)]
    assert np.allclose(g, fd, rtol=1e-4, atol=1e-8)


@pytest.mark.parametrize("law", [CHINCHILLA, HELD_OUT])
def test_recovers_known_constants(law):
    """Within 0.03 for E, 0.02 for α and β, 20% for A and B (they trade off against α, β), 0.03 for a."""
    r = P.approach3(isoflop_points(law, noise=0.003, budgets=np.logspace(18, 22, 5), spread=0.7), starts=4)
    assert abs(r["E"] - law.E) < 0.03 and abs(r["alpha"] - law.alpha) < 0.02 and abs(r["beta"] - law.beta) < 0.02
    assert abs(np.log(r["A"] / law.A)) < 0.2 and abs(np.log(r["B"] / law.B)) < 0.2
    assert abs(r["a"] - law.a) < 0.03


def test_refuses_too_few_runs():
    with pytest.raises(ScalingError, match="5 or more runs"):
        P.approach3([Point(1e6, 1e6, 3.0), Point(2e6, 1e6, 2.9)])
    assert isinstance(Parametric(1, 1, 1, 1, 1).a, float)
