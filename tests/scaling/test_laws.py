"""The laws' closed forms against a brute-force minimisation, and the published allocations."""
import math

import numpy as np
import pytest

from lineage_jax.config import ConfigError
from lineage_jax.scaling import laws
from lineage_jax.scaling.laws import CHINCHILLA, EPOCH, KAPLAN, PF_DAY


@pytest.mark.parametrize("law", [CHINCHILLA, EPOCH])
def test_allocation_exponents_and_budget(law):
    assert law.a == pytest.approx(law.beta / (law.alpha + law.beta))
    assert law.b == pytest.approx(law.alpha / (law.alpha + law.beta))
    cs = np.logspace(18, 26, 9)
    n, d = law.n_opt(cs), law.d_opt(cs)
    assert np.allclose(6 * n * d, cs, rtol=1e-12)
    assert np.polyfit(np.log(cs), np.log(n), 1)[0] == pytest.approx(law.a, abs=1e-9)
    assert np.polyfit(np.log(cs), np.log(d), 1)[0] == pytest.approx(law.b, abs=1e-9)


@pytest.mark.parametrize("law", [CHINCHILLA, EPOCH])
def test_n_opt_is_the_minimum_of_the_loss_on_the_isoflop(law):
    """Eq. 4 is where L(N, C/6N) is least: checked on a fine grid of N, not by the formula."""
    for c in (1e20, 5.76e23):
        grid = law.n_opt(c) * np.logspace(-1, 1, 20001)
        best = grid[np.argmin(law.loss(grid, c / (6 * grid)))]
        assert best == pytest.approx(law.n_opt(c), rel=1e-3)


def test_published_ratios():
    """Chinchilla's rounded constants give N_opt ~ C^0.45 (~32B at Gopher's 5.76e23, where its Table 3
    Approach 3 says 40B: rounding, as Besiroglu et al. 2024 note); Epoch's refit gives ~20 tokens/param."""
    c = 5.76e23
    assert 25e9 < CHINCHILLA.n_opt(c) < 45e9
    r = laws.predict(EPOCH, flops=c)
    assert 15 < r["tokens_per_param"] < 25 and 5e10 < r["n_opt"] < 9e10


def test_kaplan_n_opt_grows_as_c_to_the_073():
    cs = np.logspace(19, 25, 7)
    assert np.polyfit(np.log(cs), np.log(KAPLAN.n_opt(cs)), 1)[0] == pytest.approx(0.73, abs=1e-9)
    assert KAPLAN.n_opt(PF_DAY) == pytest.approx(1.3e9)
    assert np.allclose(6 * KAPLAN.n_opt(cs) * KAPLAN.d_opt(cs), cs)


def test_kaplan_eq_1_5_reduces_to_eq_1_1_and_1_2():
    assert KAPLAN.loss(1e9, 1e30) == pytest.approx(KAPLAN.loss_n(1e9), rel=1e-6)
    assert KAPLAN.loss(1e30, 1e10) == pytest.approx(KAPLAN.loss_d(1e10), rel=1e-6)
    assert KAPLAN.loss_c(PF_DAY) == pytest.approx(3.1e8 ** 0.05)


@pytest.mark.parametrize("law", [CHINCHILLA, EPOCH, KAPLAN])
def test_predict_params_inverts_flops(law):
    r = laws.predict(law, flops=1e22)
    back = laws.predict(law, params=r["n_opt"])
    assert back["flops"] == pytest.approx(1e22, rel=1e-9) and back["d_opt"] == pytest.approx(r["d_opt"], rel=1e-9)
    assert set(r) >= {"n_opt", "d_opt", "tokens_per_param", "loss", "constants"}
    assert r["tokens_per_param"] == pytest.approx(r["d_opt"] / r["n_opt"])


def test_constants_refuse_unknown_names_and_bad_budgets(tmp_path):
    with pytest.raises(ConfigError, match="allowed kaplan, chinchilla, epoch"):
        laws.constants("gopher")
    with pytest.raises(ConfigError, match="positive finite"):
        laws.predict(CHINCHILLA, flops=math.nan)
    with pytest.raises(ConfigError, match="one of"):
        laws.predict(CHINCHILLA, flops=1e20, params=1e9)
    (tmp_path / "scaling.json").write_text('{"skipped": {}}')
    with pytest.raises(ConfigError, match="no fitted law"):
        laws.constants(str(tmp_path / "scaling.json"))
