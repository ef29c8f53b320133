"""Multi-process start-up settings and the process boundary of a mesh, without starting processes
(tests/train/test_multihost.py runs real ones)."""
from types import SimpleNamespace

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from parallel import MESH_AXES, MeshError, make_mesh
from parallel.mesh import order_by_process
from parallel.distributed import (Cluster, DistributedError, check_process_boundary, cluster_from, process_rows)


def test_cluster_comes_from_flags_or_the_launchers_environment():
    env = {"LINEAGE_COORDINATOR": "10.0.0.1:1234", "LINEAGE_NUM_PROCESSES": "4", "LINEAGE_PROCESS_ID": "3",
           "LINEAGE_LOCAL_DEVICES": "2", "LINEAGE_HEARTBEAT_TIMEOUT": "7"}
    assert cluster_from(env=env) == Cluster("10.0.0.1:1234", 4, 3, 2, heartbeat_timeout=7)
    assert cluster_from("h:1", 2, 0, env=env) == Cluster("h:1", 2, 0, 2, heartbeat_timeout=7)   # flags win
    assert cluster_from(env={}) is None                                  # one process: nothing to start
    assert cluster_from("auto", env={}) == Cluster("auto")               # JAX detects TPU VM / SLURM / k8s


@pytest.mark.parametrize("args, words", [
    (dict(coordinator="localhost"), "HOST:PORT"),
    (dict(coordinator="h:1", num_processes=2), "--process-id"),
    (dict(coordinator="h:1", num_processes=2, process_id=2), "must be below --num-processes=2"),
    (dict(coordinator="h:1", num_processes=0, process_id=0), "--num-processes=0"),
    (dict(num_processes=2, process_id=1), "need --coordinator"),
])
def test_bad_settings_are_one_line_before_jax_starts(args, words):
    with pytest.raises(DistributedError, match=words) as e:
        cluster_from(env={}, **args)
    assert "\n" not in str(e.value) and isinstance(e.value, MeshError)   # the CLI's one-line kind


def fake_mesh(shape: dict, per_process: int):
    """A mesh-like value whose devices (process-major, as ``make_mesh`` orders them) know their process."""
    n = int(np.prod(list(shape.values())))
    devices = np.array([SimpleNamespace(id=i, process_index=i // per_process) for i in range(n)], dtype=object)
    return SimpleNamespace(devices=devices.reshape([shape[a] for a in MESH_AXES]), axis_names=MESH_AXES, shape=shape)


@pytest.mark.parametrize("shape", [dict(data=8, fsdp=1, expert=1, tensor=1), dict(data=1, fsdp=8, expert=1, tensor=1),
                                   dict(data=2, fsdp=1, expert=1, tensor=4), dict(data=2, fsdp=2, expert=2, tensor=1)])
def test_data_like_axes_may_cross_processes(shape):
    check_process_boundary(fake_mesh(shape, per_process=4))       # 2 processes × 4 devices: allowed


@pytest.mark.parametrize("shape, group", [(dict(data=1, fsdp=1, expert=1, tensor=8), "tensor=8"),
                                          (dict(data=1, fsdp=1, expert=2, tensor=4), "expert=2 × tensor=4")])
def test_a_tensor_or_expert_group_across_processes_is_refused(shape, group):
    with pytest.raises(DistributedError, match=f"a {group} group spans processes \\[0, 1\\]; with 4 devices"):
        check_process_boundary(fake_mesh(shape, per_process=4))


def test_make_mesh_groups_devices_by_process():
    devices = [SimpleNamespace(id=i, process_index=p) for i, p in enumerate([1, 0, 1, 0])]
    assert [d.id for d in order_by_process(devices)] == [1, 3, 0, 2]   # make_mesh reshapes this order
    mesh = make_mesh({"data": -1})                               # one process: jax.devices() order unchanged
    assert list(mesh.devices.flat) == jax.devices()


def test_process_rows_are_the_rows_this_process_holds():
    mesh = make_mesh({"data": 2, "tensor": 4})
    assert process_rows(NamedSharding(mesh, P("data")), 8) == (0, 8)   # one process holds every row
    second = {4: (slice(4, 8),), 5: (slice(4, 8),)}                    # process 1 of 2 (data=2 × tensor=2)
    assert process_rows(SimpleNamespace(addressable_devices_indices_map=lambda s: second), 8) == (4, 8)
    gap = SimpleNamespace(addressable_devices_indices_map=lambda s: {0: (slice(0, 2),), 1: (slice(6, 8),)})
    with pytest.raises(DistributedError, match="not one contiguous block"):
        process_rows(gap, 8)


@pytest.mark.parametrize("flags, words", [(["--num-processes", "2", "--process-id", "1"], "need --coordinator"),
                                          (["--coordinator", "localhost:99999x", "--num-processes", "2",
                                            "--process-id", "0"], "give HOST:PORT")])
def test_lineage_train_refuses_bad_process_flags_in_one_line(capsys, flags, words):
    from lineage_jax import cli
    assert cli.main(["train", *flags, "train.steps=100"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and words in err and "\n" not in err


def test_cross_process_cpu_collectives_other_than_gloo_are_refused():
    from parallel.distributed import initialize
    before = jax.config.jax_cpu_collectives_implementation
    jax.config.update("jax_cpu_collectives_implementation", "mpi")
    try:
        with pytest.raises(DistributedError, match="jax_cpu_collectives_implementation='mpi'.*use 'gloo'"):
            initialize(Cluster("localhost:1", 2, 0))              # refused before it tries to connect
    finally:
        jax.config.update("jax_cpu_collectives_implementation", before)
