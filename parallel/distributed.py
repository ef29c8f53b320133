"""One program over several processes: JAX's multi-controller start-up, and the process boundary of a mesh.

Every process of a multi-host run executes the same program on its own local devices; the
processes meet through ``jax.distributed.initialize`` (a coordinator in process 0, a
heartbeat, and on CPU the gloo library for the collectives that cross processes). This module
starts that runtime before any other JAX call, from explicit settings or the ``LINEAGE_*``
environment variables the launcher sets, and checks that a mesh keeps every tensor / expert
group inside one process, so only the data-like axes (data, fsdp) cross the slow links between
hosts (DCN), as ``mesh_utils.create_hybrid_device_mesh`` lays out DCN × ICI meshes.

Knows nothing of models or of lineage_jax; callers pass plain values.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Mapping

from parallel.mesh import MeshError

ENV_COORDINATOR = "LINEAGE_COORDINATOR"        # HOST:PORT of process 0, or "auto" (JAX detects the cluster)
ENV_NUM_PROCESSES = "LINEAGE_NUM_PROCESSES"
ENV_PROCESS_ID = "LINEAGE_PROCESS_ID"
ENV_LOCAL_DEVICES = "LINEAGE_LOCAL_DEVICES"    # CPU devices per process (emulated)
ENV_HEARTBEAT = "LINEAGE_HEARTBEAT_TIMEOUT"    # seconds without a heartbeat before a process is declared dead
ENV_INIT_TIMEOUT = "LINEAGE_INIT_TIMEOUT"      # seconds to wait for every process to join

DATA_LIKE = ("stage", "data", "fsdp")          # mesh axes that may cross processes (the DCN axes)


class DistributedError(MeshError):
    """A multi-process setting or start-up problem, stated in one line."""


@dataclasses.dataclass(frozen=True)
class Cluster:
    """How this process joins a multi-process run. ``coordinator="auto"``: JAX's own cluster detection
    (Cloud TPU VMs, SLURM, Open MPI, Kubernetes) decides the rest."""
    coordinator: str
    num_processes: int | None = None
    process_id: int | None = None
    local_devices: int | None = None
    heartbeat_timeout: int = 100
    init_timeout: int = 300


def _int(name: str, raw, *, low: int) -> int | None:
    if raw is None or raw == "":
        return None
    try:
        value = int(raw)
    except (TypeError, ValueError):
        value = None
    if value is None or value < low:
        raise DistributedError(f"{name}={raw!r}: must be an integer >= {low}")
    return value


def cluster_from(coordinator=None, num_processes=None, process_id=None, local_devices=None,
                 env: Mapping[str, str] | None = None) -> Cluster | None:
    """The ``Cluster`` of explicit values, each falling back to its ``LINEAGE_*`` variable; None when no
    coordinator is given either way (a single-process run). Checked here, before JAX starts."""
    env = os.environ if env is None else env
    coordinator = coordinator or env.get(ENV_COORDINATOR) or None
    n = _int("--num-processes", num_processes if num_processes is not None else env.get(ENV_NUM_PROCESSES), low=1)
    i = _int("--process-id", process_id if process_id is not None else env.get(ENV_PROCESS_ID), low=0)
    k = _int("local devices", local_devices if local_devices is not None else env.get(ENV_LOCAL_DEVICES), low=1)
    heartbeat = _int(ENV_HEARTBEAT, env.get(ENV_HEARTBEAT), low=1) or 100
    init_timeout = _int(ENV_INIT_TIMEOUT, env.get(ENV_INIT_TIMEOUT), low=1) or 300
    if coordinator is None:
        if n not in (None, 1) or i not in (None, 0):
            raise DistributedError("--num-processes/--process-id need --coordinator HOST:PORT "
                                   f"(or {ENV_COORDINATOR}), the address of process 0")
        return None
    if coordinator != "auto":
        host, _, port = coordinator.rpartition(":")
        if not host or not port.isdigit():
            raise DistributedError(f"--coordinator={coordinator!r}: give HOST:PORT (process 0's address) or 'auto'")
        if n is None or i is None:
            raise DistributedError(f"--coordinator={coordinator}: also give --num-processes N and --process-id I "
                                   f"(or {ENV_NUM_PROCESSES} / {ENV_PROCESS_ID})")
        if i >= n:
            raise DistributedError(f"--process-id={i}: must be below --num-processes={n}")
    return Cluster(coordinator, n, i, k, heartbeat, init_timeout)


def set_local_cpu_devices(n: int) -> None:
    """Emulate ``n`` CPU devices in this process; must run before JAX initialises its backends."""
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "xla_force_host_platform_device_count" not in f]
    os.environ["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={n}"])
    import jax
    jax.config.update("jax_num_cpu_devices", n)


def initialize(cluster: Cluster) -> None:
    """Start JAX's distributed runtime for ``cluster``; call before any other JAX call.

    On CPU the cross-process collectives must go through gloo: it is JAX's default, set here
    when nothing else was chosen, and anything else is refused in one line (XLA's CPU client
    has no other cross-process implementation built into a plain ``pip install jax``)."""
    import jax
    if cluster.local_devices is not None:
        set_local_cpu_devices(cluster.local_devices)
    flag = "jax_cpu_collectives_implementation"
    impl = getattr(jax.config, flag, "gloo")   # a JAX without the option has gloo only
    if impl in (None, "", "none"):
        jax.config.update(flag, "gloo")
    elif impl != "gloo":
        raise DistributedError(f"jax_cpu_collectives_implementation={impl!r}: multi-process CPU runs here use "
                               "'gloo'; unset it (or set JAX_CPU_COLLECTIVES_IMPLEMENTATION=gloo)")
    if jax.distributed.is_initialized():
        return
    import inspect
    accepted = inspect.signature(jax.distributed.initialize).parameters   # names vary across JAX versions
    kw = {k: v for k, v in (("initialization_timeout", cluster.init_timeout),
                            ("heartbeat_timeout_seconds", cluster.heartbeat_timeout)) if k in accepted}
    try:
        if cluster.coordinator == "auto":
            jax.distributed.initialize(**kw)
        else:
            jax.distributed.initialize(cluster.coordinator, cluster.num_processes, cluster.process_id, **kw)
    except RuntimeError as e:   # e.g. a backend already started, or the coordinator never answered
        first = (str(e).strip().splitlines() or ["no message"])[0][:300]
        raise DistributedError(f"could not join the run at {cluster.coordinator} as process "
                               f"{cluster.process_id} of {cluster.num_processes}: {first}") from None


def verdict_of_process_0(ok: bool) -> bool:
    """Process 0's ``ok`` on every process (one process: ``ok``): a collective, so every process calls it
    in step. How a decision only process 0 can take (it holds the run's lock, it read the files) reaches
    the others, so all go on or all stop in one line, never some waiting for the rest in a collective."""
    import jax
    if jax.process_count() == 1:
        return ok
    import numpy as np
    from jax.experimental import multihost_utils
    return bool(multihost_utils.broadcast_one_to_all(np.int32(ok)))


def check_process_boundary(mesh, inner: tuple[str, ...] | None = None, process_of=None) -> None:
    """Refuse (one line) a mesh whose tensor or expert groups (every axis not in ``DATA_LIKE``) span
    several processes: their collectives run every layer and would cross the slow inter-host link.
    ``process_of`` (device -> process; default ``d.process_index``) checks a planned layout."""
    inner = tuple(a for a in mesh.axis_names if a not in DATA_LIKE) if inner is None else inner
    process_of = process_of or (lambda d: d.process_index)
    procs = {process_of(d) for d in mesh.devices.flat}
    if len(procs) < 2:
        return
    import numpy as np
    names = list(mesh.axis_names)
    order = [names.index(a) for a in names if a not in inner] + [names.index(a) for a in inner]
    grouped = np.transpose(np.vectorize(process_of, otypes=[int])(mesh.devices), order)
    group = int(np.prod([mesh.shape[a] for a in inner], dtype=int))
    flat = grouped.reshape(-1, group)
    split = [row for row in flat if len(set(row.tolist())) > 1]
    if split:
        sizes = " × ".join(f"{a}={mesh.shape[a]}" for a in inner if mesh.shape[a] > 1) or "size 1"
        per = len(mesh.devices.flat) // len(procs)
        raise DistributedError(f"mesh: a {sizes} group spans processes {sorted(set(split[0].tolist()))}; with "
                               f"{per} devices per process keep tensor × expert within {per} devices and put the "
                               f"rest on mesh.data or mesh.fsdp (the axes that may cross processes)")


def process_rows(sharding, rows: int) -> tuple[int, int]:
    """The global rows ``[lo, hi)`` of a ``rows``-row batch that this process's devices hold under
    ``sharding`` (a contiguous block when the process boundary is on the batch axes)."""
    import jax
    spans = set()
    for index in sharding.addressable_devices_indices_map((rows,)).values():
        sl = index[0] if index else slice(None)
        spans.add((sl.start or 0, rows if sl.stop is None else sl.stop))
    lo, hi = min(s for s, _ in spans), max(e for _, e in spans)
    covered = sorted(spans)
    reach = lo
    for s, e in covered:
        if s > reach:
            raise DistributedError(f"process {jax.process_index()} holds rows {covered} of the batch, not one "
                                   f"contiguous block; put the process boundary on mesh.data / mesh.fsdp")
        reach = max(reach, e)
    return lo, hi
