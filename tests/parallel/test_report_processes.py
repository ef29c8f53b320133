"""The shard report's per-process view (``parallel/report/processes.py``): which collectives cross
the process boundary (DCN) and which stay inside one process (ICI), and the bytes each process
holds — on emulated devices split into planned processes, before any multi-host run."""
import types

import pytest

from lineage_jax import cli
from lineage_jax.commands.shard_report import shard_report
from lineage_jax.config import load_config
from parallel.distributed import DistributedError
from parallel.report.processes import crosses, partition_processes, process_view

MODEL = ["model.layers=2", "model.width=64", "model.heads=4", "model.context=16", "model.attn_chunks=1",
         "train.batch_size=8", "model.vocab_multiple=8"]
TWO = [0, 0, 0, 0, 1, 1, 1, 1]          # 8 devices as 2 processes × 4


@pytest.mark.parametrize("groups, spans", [
    ("{{0,1,2,3},{4,5,6,7}}", False),            # one process each
    ("{{0,4},{1,5},{2,6},{3,7}}", True),         # the other process's twin
    ("[2,4]<=[8]", False), ("[4,2]<=[2,4]T(1,0)", True),   # the same two, iota-spelled
    ("{}", True),                                # every device: both processes
    ("{{0,1},{1,2},{2,3},{3,0}}", False), ("{{3,4}}", True)])   # permute pairs
def test_a_group_crosses_when_it_holds_devices_of_two_processes(groups, spans):
    assert crosses({"replica_groups": groups}, TWO) is spans


def test_planned_processes_are_equal_blocks_in_process_order_and_a_bad_count_is_one_line():
    devs = [types.SimpleNamespace(id=i, process_index=0) for i in (4, 5, 6, 7, 0, 1, 2, 3)]   # a mesh order
    assert partition_processes(devs, 2) == [1, 1, 1, 1, 0, 0, 0, 0]
    assert partition_processes(devs) == [0] * 8
    with pytest.raises(DistributedError, match=r"^--processes=3: 8 devices do not split into 3 equal processes; "
                                               r"allowed 1, 2, 4, 8$"):
        partition_processes(devs, 3)
    ops = [{"kind": "all-reduce", "replica_groups": "{{0,4},{1,5},{2,6},{3,7}}", "sent_bytes": 10,
            "bytes": 10, "in_loop": False}] + [
           {"kind": "all-reduce", "replica_groups": "{{0,1,2,3},{4,5,6,7}}", "sent_bytes": 7, "bytes": 7,
            "in_loop": False}] * 2
    view = process_view(ops, TWO)
    assert (view["dcn_sent_bytes"], view["ici_sent_bytes"]) == (10, 14)
    assert [r["count"] for r in view["ici"]] == [2] and view["processes"] == 2


def test_dp_x_tp_over_two_processes_keeps_tensor_collectives_inside_and_sends_gradients_across():
    """data=2 × tensor=4 on 2 processes × 4 devices: every tensor-parallel collective (groups of 4)
    stays inside a process; only the data-parallel gradient reduction (groups of 2) crosses, and it
    carries about one copy of a tensor rank's parameters (2·Ψ/4·(2-1)/2 sent)."""
    rep = shard_report(load_config("tiny", MODEL + ["mesh.data=2", "mesh.tensor=4"]), processes=2)
    view = rep["processes"]
    assert view["processes"] == 2 and view["devices_per_process"] == 4
    assert view["dcn"] and view["ici"]
    # Each crossing collective is over the data axis: its groups pair device i with i + 4.
    spans = [crosses({"replica_groups": g}, TWO) for r in view["dcn"] for g in r["replica_groups"]]
    assert spans and all(spans)
    assert all(not crosses({"replica_groups": g}, TWO) for r in view["ici"] for g in r["replica_groups"])
    reduced = sum(r["sent_bytes"] for r in view["dcn"] if r["kind"] == "all-reduce")
    per_rank = rep["params_bytes_per_device"]                 # Ψ/4 (plus replicated norms and biases)
    assert 0.9 * per_rank <= reduced <= 1.2 * per_rank, (reduced, per_rank)
    held = view["held"]["params"]
    assert held[0] == held[1] == 4 * rep["params_bytes_per_device"]


def test_fsdp_over_two_processes_holds_half_the_parameters_each():
    """ZeRO-3 over fsdp=8 on 2 processes: each holds its 4 devices' shards, half of Ψ plus the few
    small leaves that stay replicated (5% here), counted from the shardings device by device."""
    rep = shard_report(load_config("tiny", MODEL + ["mesh.data=1", "mesh.fsdp=8", "parallel.zero_stage=3"]),
                       processes=2)
    held = rep["processes"]["held"]
    assert held["params"][0] == held["params"][1] == 4 * rep["params_bytes_per_device"]
    assert rep["params_bytes"] / 2 <= held["params"][0] <= 0.55 * rep["params_bytes"], held
    assert held["opt_state"][0] == held["opt_state"][1] == 4 * rep["opt_state_bytes_per_device"]
    assert rep["processes"]["dcn_sent_bytes"] > 0                 # every fsdp gather spans both


def test_a_tensor_group_across_planned_processes_is_refused_before_compiling(capsys):
    assert cli.main(["shard-report", "--processes", "2", *MODEL, "model.heads=8", "mesh.data=1",
                     "mesh.tensor=8"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "tensor=8 group spans processes [0, 1]" in err
    assert cli.main(["shard-report", "--processes", "3", *MODEL, "mesh.data=8"]) == 2
    assert "allowed 1, 2, 4, 8" in capsys.readouterr().err
