"""The backprop lesson: the gradient proof rows, the paper's tasks, and ``lineage lesson backprop --quick``
writing a result.json whose verdict follows its rows."""
import json

import numpy as np

from lineage_jax import cli
from lineage_jax.lessons import backprop as bp


def test_the_tasks():
    x, y = bp.xor()
    assert (y == (x[:, 0] != x[:, 1])).all()
    x, y = bp.spirals()
    assert x.shape == (194, 2) and y.tolist() == [0] * 97 + [1] * 97 and np.abs(x).max() <= 1.0
    np.testing.assert_allclose(x[97:], -x[:97])          # the second spiral is the first rotated by π


def test_a_check_row_reports_each_error_on_an_unseen_net():
    row = bp.check_gradients(seed=123, sizes=[3, 4, 2], act="sigmoid", batch=3)
    assert row["check"] == "sigmoid 3-4-2" and row["params"] == 3 * 4 + 4 + 4 * 2 + 2
    assert all(0 <= row[e] <= bp.TOLERANCE for e in bp.ERRORS), row


def test_supports_reads_the_rows():
    ok = [{"check": "n", **{e: 1e-9 for e in bp.ERRORS}},
          {"task": "xor", "train_accuracy": 1.0}, {"task": "spirals", "train_accuracy": 1.0}]
    assert bp.supports(ok)
    assert not bp.supports([{**ok[0], "hand_vs_tape": 1e-3}, *ok[1:]])
    assert not bp.supports([ok[0], ok[1], {"task": "spirals", "train_accuracy": 0.99}])


def test_quick_writes_result_json_and_png(tmp_path, capsys):
    rc = cli.main(["lesson", "backprop", "--quick", "--out", str(tmp_path), "--no-progress",
                   "checks=1", "spiral_steps=1600", "xor_steps=200"])
    assert rc == 0
    res = json.loads((tmp_path / "result.json").read_text())
    assert res["lesson"] == "backprop" and res["paper"].startswith("Rumelhart")
    trained = {r["task"]: r for r in res["rows"] if "task" in r}
    assert trained["xor"]["train_accuracy"] == 1.0 and trained["xor"]["final_loss"] < 0.01
    assert trained["spirals"]["train_accuracy"] == 1.0
    assert res["details"]["worst_error"] <= 1e-6 and res["supported"] is True
    assert (tmp_path / "backprop.png").read_bytes()[:4] == b"\x89PNG"
    assert "-> supported" in capsys.readouterr().out
