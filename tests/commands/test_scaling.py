"""``lineage scaling count|predict|fit``: the JSON a planner reads, the files a fit writes, and
one-line refusals (exit 2) for input no fit can use."""
import csv
import json
import math

import numpy as np
import pytest

from lineage_jax import cli
from lineage_jax.scaling.laws import CHINCHILLA
from tests.scaling.test_fit import HELD_OUT, isoflop_points


def run_json(capsys, *argv):
    assert cli.main(["scaling", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_predict_json_keys_and_budget(capsys):
    r = run_json(capsys, "predict", "--flops", "1e21")
    assert {"n_opt", "d_opt", "tokens_per_param", "loss", "constants"} <= set(r)
    assert 6 * r["n_opt"] * r["d_opt"] == pytest.approx(1e21)
    assert r["n_opt"] == pytest.approx(CHINCHILLA.n_opt(1e21)) and r["constants"]["name"] == "chinchilla"
    back = run_json(capsys, "predict", "--params", str(r["n_opt"]))
    assert back["flops"] == pytest.approx(1e21)


def test_count_json_is_the_124m_preset(capsys):
    r = run_json(capsys, "count", "--config", "gpt2_small", "--tokens", "1e9")
    assert r["total"] == 124_439_808 and r["flops_6nd"] == pytest.approx(6 * r["matmul"] * 1e9)
    assert r["tokens_per_param"] == pytest.approx(1e9 / r["matmul"])


def write_csv(path, points):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["params", "tokens", "loss"])
        for p in points:
            w.writerow([p.params, p.tokens, p.loss])


def test_fit_points_writes_scaling_json_and_pngs_and_predict_reads_it(tmp_path, capsys):
    write_csv(tmp_path / "p.csv", isoflop_points(HELD_OUT, budgets=np.logspace(18, 22, 5), spread=0.7))
    out = tmp_path / "fit"
    assert cli.main(["scaling", "fit", "--points", str(tmp_path / "p.csv"), "--out", str(out), "--bootstrap", "3"]) == 0
    res = json.loads((out / "scaling.json").read_text())
    assert abs(res["approach2"]["a"] - HELD_OUT.a) < 0.03 and abs(res["approach3"]["alpha"] - HELD_OUT.alpha) < 0.02
    assert "approach1" not in res and "curves" in res["skipped"]["approach1"]     # a CSV has no training curves
    assert len(res["approach3"]["n_opt"]) == 5 and res["approach2"]["a_ci"] is not None
    assert {"isoflop.png", "frontier.png"} <= {p.name for p in out.iterdir()}
    capsys.readouterr()
    r = run_json(capsys, "predict", "--flops", "1e21", "--constants", str(out / "scaling.json"))
    assert r["n_opt"] == pytest.approx(res["approach3"]["G"] * (1e21 / 6) ** res["approach3"]["a"])


@pytest.mark.parametrize("rows,match", [
    ([(1e6, 1e7, 3.0), (2e6, 5e6, 2.9), (4e6, 2.5e6, 3.0)], "2 or more FLOP budgets"),
    ([(1e6, 1e6 * k, 3.0 / k) for k in (1, 2, 3, 4, 5, 6)], "approach2: approach 2 needs"),
    ([(1e6, 1e6, math.nan)], "loss=nan"),
])
def test_fit_degenerate_input_is_one_line_exit_2(tmp_path, capsys, rows, match):
    with open(tmp_path / "p.csv", "w") as f:
        f.write("params,tokens,loss\n" + "".join(f"{a},{b},{c}\n" for a, b, c in rows))
    assert cli.main(["scaling", "fit", "--points", str(tmp_path / "p.csv"), "--bootstrap", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no approach can be fitted") and match in err and "\n" not in err


@pytest.mark.parametrize("argv,match", [
    (["fit"], "give one of --runs DIR or --points"),
    (["fit", "--points", "nope.csv"], "--points=nope.csv: no such file"),
    (["predict", "--flops", "1e20", "--constants", "gopher"], "allowed kaplan, chinchilla, epoch"),
    (["sweep", "--out", "x", "--budgets", "1e12"], "2 or more different budgets"),
    (["sweep", "--out", "x", "--sizes", "1"], "at least 2 sizes"),
])
def test_refusals(argv, match, capsys):
    assert cli.main(["scaling", *argv]) == 2
    assert match in capsys.readouterr().err
