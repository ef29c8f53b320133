"""``lineage plan``'s formulas against this machine's compiled programs: per-device parameter and
optimizer bytes and bytes per collective kind within 10% of what ``lineage shard-report`` reads
(``predict_vs_compiled``), over a grid of meshes; the CLI's text and JSON faces."""
import json

import pytest

from lineage_jax import cli
from lineage_jax.commands.plan import predict_vs_compiled
from lineage_jax.config import load_config

MODEL = ["model.layers=4", "model.scan_layers=true", "model.heads=4", "model.context=16", "model.attn_chunks=1",
         "model.vocab_multiple=8", "train.batch_size=16"]
PP2 = ["parallel.pipeline_stages=2", "parallel.microbatches=2"]
GRID = {
    # Megatron-LM's 3D arrangement (Narayanan et al. 2021): tensor inside, pipeline, data outside. The
    # pipeline's collectives inside the tick loop's switch are counted as the schedule runs them
    "PP2xTP2xDP2": ["mesh.data=2", "mesh.tensor=2", "model.width=64"] + PP2,
    "PP2xDP4": ["mesh.data=4", "model.width=64"] + PP2,
    "PP2xTP4": ["mesh.data=1", "mesh.tensor=4", "model.width=64"] + PP2,
    "PP2xFSDP4": ["mesh.data=1", "mesh.fsdp=4", "parallel.zero_stage=3", "model.width=128"] + PP2,
    "DP8": ["mesh.data=8", "model.width=64"],
    # the explicit form writes ZeRO's reduce-scatter itself (GSPMD on CPU writes all-reduce + slice)
    "ZeRO-3/fsdp8": ["mesh.data=1", "mesh.fsdp=8", "parallel.zero_stage=3", "model.width=128",
                     "parallel.form=shard_map"],
    "ZeRO-3/fsdp8/remat": ["mesh.data=1", "mesh.fsdp=8", "parallel.zero_stage=3", "model.width=128",
                           "parallel.form=shard_map", "model.remat=full"],
    "ZeRO-1/data8": ["mesh.data=8", "parallel.zero_stage=1", "model.width=64"],
    "TP2xDP4": ["mesh.data=4", "mesh.tensor=2", "model.width=128", "parallel.form=shard_map"],
    "TP2xDP4/remat": ["mesh.data=4", "mesh.tensor=2", "model.width=128", "parallel.form=shard_map", "model.remat=full"],
}


@pytest.mark.parametrize("name", [n if n == "PP2xTP2xDP2" else pytest.param(n, marks=pytest.mark.slow) for n in GRID])
def test_predictions_match_the_compiled_step(name):
    rows = predict_vs_compiled(load_config("tiny", MODEL + GRID[name]))
    bad = [r for r in rows if r["rel_err"] > 0.10]
    assert not bad, bad
    assert {r["quantity"] for r in rows} >= {"params", "opt_state"}


def test_plan_cli_text_and_json(capsys):
    assert cli.main(["plan", "--params", "7e9", "--chips", "64", "--chip", "v5e", "--global-batch", "256",
                     "--seq", "2048", "--top", "3"]) == 0
    text = capsys.readouterr().out
    assert "on 64 × v5e" in text and " 1. " in text and "-bound" in text
    assert cli.main(["plan", "--params", "7e9", "--chips", "64", "--chip", "v5e", "--global-batch", "256",
                     "--seq", "2048", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    best = out["plans"][0]
    assert set(best) >= {"mesh", "microbatches", "remat", "memory_per_chip_bytes", "step_time_s", "mfu", "bound"}
    assert all(r["reason"] for r in out["rejected"])
    times = [p["step_time_s"] for p in out["plans"]]
    assert all(b >= a * (1 - 1e-8) for a, b in zip(times, times[1:]))   # best first


def test_plan_without_a_size_is_one_line(capsys):
    assert cli.main(["plan", "--chips", "8"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: lineage plan: give --params") and err.count("\n") == 1
