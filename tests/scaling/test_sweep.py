"""The IsoFLOP sweep's plan (no training: default suite) and a real 2-budget × 2-size sweep (slow):
normal run directories, a schedule ending at each run's horizon, finished runs skipped on rerun."""
import dataclasses
import json
import math

import pytest

from lineage_jax.config import ConfigError, load_config
from lineage_jax.models.count import matmul_params
from lineage_jax.scaling.sweep import BASE, plan, run_config

BUDGETS = [1e11, 3e11, 1e12]


def test_plan_spends_each_budget_on_distinct_sizes_around_the_guess():
    base = load_config("tiny", BASE)
    runs = plan(BUDGETS, 5, base)
    assert runs[0].params == matmul_params(dataclasses.replace(base.model, layers=1, width=16, heads=1))
    per_step = base.train.batch_size * base.model.context
    assert len(runs) == 15
    for c in BUDGETS:
        mine = [r for r in runs if r.budget == c]
        assert len({r.params for r in mine}) == 5
        for r in mine:   # D = C / 6N to within a step's tokens
            assert abs(6 * r.params * r.tokens(per_step) - c) <= 6 * r.params * per_step / 2
        guess = math.sqrt(c / 120)
        assert min(r.params for r in mine) < guess < max(r.params for r in mine)


def test_run_config_ends_the_schedule_at_the_runs_horizon(tmp_path):
    base = load_config("tiny", BASE)
    r = plan(BUDGETS, 3, base)[0]
    cfg = run_config(base, r, tmp_path)
    assert cfg.train.steps == r.steps and cfg.train.eval_every == r.steps   # cosine over steps, eval at the end
    assert cfg.optim.warmup_steps < r.steps and (cfg.model.layers, cfg.model.width) == (r.layers, r.width)
    assert cfg.run_dir == str(tmp_path / r.name)


def test_plan_refuses_budgets_too_small_for_a_run():
    with pytest.raises(ConfigError, match="only .* steps"):
        plan([1e8, 2e8], 3, load_config("tiny", BASE))


@pytest.mark.slow
def test_tiny_sweep_trains_resumable_runs_and_fits(tmp_path, capsys):
    from lineage_jax import cli
    argv = ["scaling", "sweep", "--budgets", "3e9,6e9", "--sizes", "2", "--out", str(tmp_path), "--no-progress",
            "--tokens-per-param", "5"]
    assert cli.main(argv) == 0
    plan_ = json.loads((tmp_path / "sweep.json").read_text())
    assert len(plan_["runs"]) == 4
    for r in plan_["runs"]:
        rows = [json.loads(x) for x in (tmp_path / r["name"] / "metrics.jsonl").read_text().splitlines()]
        assert rows[-1]["step"] == r["steps"] and "eval_loss" in rows[-1]
        assert (tmp_path / r["name"] / "config.yaml").is_file()
    capsys.readouterr()
    assert cli.main(argv) == 0
    assert "0 trained, 4 already finished" in capsys.readouterr().out
    assert cli.main(["scaling", "fit", "--runs", str(tmp_path), "--bootstrap", "2"]) == 0
    res = json.loads((tmp_path / "scaling.json").read_text())
    assert "approach2" not in res and "2 model size(s)" in res["skipped"]["approach2"]
    assert {p["budget"] for p in res["points"]} == {3e9, 6e9}
