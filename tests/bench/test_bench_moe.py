"""``lineage bench moe`` (quick): the FLOPs accounting of MoE vs the dense-active feed-forward."""
import types

import pytest

from lineage_jax.bench import moe


@pytest.fixture(scope="module")
def result():
    return moe.run(types.SimpleNamespace(quick=True, steps=3))


def test_capacity_flops_follow_the_capacity_formula(result):
    s, rows = result["shape"], {r["name"]: r for r in result["moe"]}
    cap = rows["capacity"]
    # E·C = cf·S expert rows per group against k·S for the dense-active layer, plus routing
    assert s["capacity_factor"] / s["k"] <= cap["train_flops_ratio"] <= result["targets"]["flops_ratio_max"]
    full = rows[f"capacity cf={s['k'] * s['capacity_factor']:g}"]
    assert full["dropped_fraction"] < cap["dropped_fraction"]
    assert s["capacity_factor"] <= full["train_flops_ratio"] <= s["capacity_factor"] + 0.1
    assert rows["dropless"]["dropped_fraction"] == 0.0


def test_report_names_every_backend(result):
    text = moe.report(result)
    assert all(name in text for name in ("capacity", "dropless", "time×", "FLOPs×"))
