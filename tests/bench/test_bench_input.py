"""``lineage bench input --quick``: both orders' draw times, and the training loop in line vs prefetched
seeing the same batches (equal losses); times are reported as ratios, never asserted."""
import json

from lineage_jax import cli
from lineage_jax.bench import input as bench

SMALL = ["model.layers=1", "model.width=32", "model.heads=2", "model.context=16", "train.batch_size=8"]


def test_bench_input_quick_through_the_cli(capsys):
    assert cli.main(["bench", "input", "--quick", "--json", "--config", "tiny", *SMALL]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["context"] == 16 and r["batch_size"] == 8
    assert set(r["draw_ms"]) == {"grain", "numpy"}
    assert all(ms > 0 for order in r["draw_ms"].values() for ms in order.values())
    assert [x["order"] for x in r["loop"]] == ["grain", "numpy"]
    for x in r["loop"]:
        assert x["same_losses"]                              # prefetching changed no batch
        assert x["rows_drawn"] == max(bench.QUICK["rows"])
        assert 0.0 <= x["hidden"] <= 1.0 and x["speedup"] > 0
    assert "same losses in line and prefetched: True" in bench.report(r)
