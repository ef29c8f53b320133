"""Approaches 1 and 2 recover the allocation exponent of a known law from noisy synthetic runs,
and refuse degenerate input in one line."""
import math

import numpy as np
import pytest

from lineage_jax.scaling.fit import Curve, Point, ScalingError, approach1, approach2, bootstrap, budget_of, budgets
from lineage_jax.scaling.laws import CHINCHILLA, EPOCH, Parametric

HELD_OUT = Parametric(E=2.0, A=250.0, B=1500.0, alpha=0.32, beta=0.36)   # a = 0.529: no paper's law


def isoflop_points(law, noise=0.003, seed=0, budgets=np.logspace(18, 21, 4), spread=0.6, sizes=7):
    rng = np.random.default_rng(seed)
    pts = []
    for c in budgets:
        for n in law.n_opt(c) * np.logspace(-spread, spread, sizes):
            d = c / (6 * n)
            pts.append(Point(n, d, float(law.loss(n, d) * math.exp(rng.normal(0, noise))), budget=c))
    return pts


def curves_of(law, noise=0.001, seed=0):   # a logged loss is a mean over a window: smoother than a point
    rng = np.random.default_rng(seed)
    out = []
    for n in np.logspace(7.5, 10.5, 25):
        tokens = np.logspace(math.log10(n) - 0.5, math.log10(n) + 3, 40)
        loss = law.loss(n, tokens) * np.exp(rng.normal(0, noise, tokens.size))
        out.append(Curve(n, tuple(tokens), tuple(loss), run=f"n{n:.3g}"))
    return out


@pytest.mark.parametrize("law", [CHINCHILLA, EPOCH, HELD_OUT])
def test_approach2_recovers_the_exponents(law):
    r = approach2(isoflop_points(law))
    assert abs(r["a"] - law.a) < 0.03 and abs(r["b"] - law.b) < 0.03, (r["a"], law.a)
    assert all(b["interior"] for b in r["budgets"])


@pytest.mark.parametrize("law", [CHINCHILLA, HELD_OUT])
def test_approach1_recovers_a_from_the_envelope(law):
    r = approach1(curves_of(law))
    assert abs(r["a"] - law.a) < 0.03, (r["a"], law.a)


def test_budgets_group_unplanned_points_by_flops():
    pts = [Point(1e6, 1e6, 3.0), Point(2e6, 0.52e6, 2.9), Point(1e6, 1e7, 2.5)]
    assert [len(g) for _, g in budgets(pts)] == [2, 1]


@pytest.mark.parametrize("pts,match", [
    ([Point(1e6 * k, 1e7 / k, 3.0 + 0.1 * k * k, budget=6e13) for k in (1, 2, 3, 4)], "2 or more FLOP budgets"),
    ([Point(1e6, 1e6 * k, 3.0 / k, budget=6e12 * k) for k in (1, 2, 3)], "1 model size"),
    ([Point(1e6, 1e6, float("nan"), run="runs/x")], "runs/x has loss=nan"),
])
def test_degenerate_input_is_one_line(pts, match):
    with pytest.raises(ScalingError, match=match) as e:
        approach2(pts)
    assert "\n" not in str(e.value)


def test_approach1_refuses_one_size_and_nan():
    one = [Curve(1e6, (1e6, 1e7), (3.0, 2.5), "a"), Curve(1e6, (1e6, 1e7), (3.1, 2.4), "b")]
    with pytest.raises(ScalingError, match="2 or more model sizes"):
        approach1(one)
    with pytest.raises(ScalingError, match="loss=nan"):
        approach1([Curve(1e6, (1e6,), (float("nan"),), "a"), Curve(2e6, (1e6,), (2.0,), "b")])


def test_bootstrap_interval_covers_the_fit():
    pts = isoflop_points(CHINCHILLA, noise=0.01)
    r = approach2(pts)
    ci = bootstrap(approach2, pts, ["a"], n=40, group=budget_of(pts))   # resampled within each budget
    assert ci["a_ci"][0] < r["a"] < ci["a_ci"][1] and ci["a_ci"][1] - ci["a_ci"][0] < 0.2
    assert ci["bootstrap"]["used"] > 20
