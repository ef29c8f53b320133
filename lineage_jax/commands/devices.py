"""How a command's process starts JAX, the one way every command does it (before any JAX call).

``--devices N``: emulate N CPU devices (``init_devices``). A command whose training loop runs as
several processes (``MULTI_PROCESS``) also takes ``--coordinator HOST:PORT --num-processes N
--process-id I`` (``add_distributed_args``; the same as ``LINEAGE_*`` environment variables,
which ``lineage launch local`` sets) and starts JAX's distributed runtime through ``init_jax``.
Every other command runs in one process: started as one of several it refuses in one line
(``refuse_several_processes``, called by ``cli.main`` for every command) instead of running the
whole job once per process into the same directory.
"""
from __future__ import annotations

import argparse
import os

from lineage_jax.config import ConfigError

# The commands whose loops run as one program over several processes: each process reads only its
# own rows of every global batch and only process 0 writes run files (``train.loop.train``).
# {command: its subcommands that do (empty: the command itself)}.
MULTI_PROCESS: dict[str, tuple[str, ...]] = {"train": (), "finetune": (), "scaling": ("sweep",)}
MULTI_PROCESS_NAMES = "train, finetune, scaling sweep"
ONE_PROCESS_ACTIONS: dict[str, tuple[str, ...]] = {"finetune": ("merge", "export-peft")}   # write one directory
ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID = "LINEAGE_COORDINATOR", "LINEAGE_NUM_PROCESSES", "LINEAGE_PROCESS_ID"


def init_devices(n: int | None) -> None:
    """Emulate ``n`` CPU devices; must run before JAX initialises its backends."""
    if n is None:
        return
    if n < 1:
        raise ConfigError(f"--devices={n}: must be a positive integer")
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "xla_force_host_platform_device_count" not in f]
    os.environ["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={n}"])
    import jax
    jax.config.update("jax_num_cpu_devices", n)
    if jax.default_backend() == "cpu" and jax.device_count() != n:
        raise ConfigError(f"--devices={n}: JAX already initialised with {jax.device_count()} devices")


def add_distributed_args(p: argparse.ArgumentParser) -> None:
    """``--coordinator``, ``--num-processes``, ``--process-id`` on a command that runs multi-process
    (its parser also gets ``multi_process=True``, which ``refuse_several_processes`` reads)."""
    p.add_argument("--coordinator", default=None, metavar="HOST:PORT",
                   help="one of several processes: process 0's address (or 'auto': detect the cluster); "
                        f"default ${ENV_COORDINATOR}. --devices is then the CPU devices of each process")
    p.add_argument("--num-processes", type=int, default=None, metavar="N", help="processes in the run")
    p.add_argument("--process-id", type=int, default=None, metavar="I", help="this process's index, 0..N-1")
    p.set_defaults(multi_process=True)


def _given(args) -> tuple:
    return (getattr(args, "coordinator", None), getattr(args, "num_processes", None),
            getattr(args, "process_id", None))


def cluster_of(args):
    """The ``parallel.distributed.Cluster`` that ``args`` (the flags, else the ``LINEAGE_*`` environment)
    ask for, or None for one process; checked (one line) without starting anything."""
    if not any(v is not None for v in _given(args)) and not os.environ.get(ENV_COORDINATOR):
        return None
    from parallel import distributed
    return distributed.cluster_from(*_given(args), local_devices=getattr(args, "devices", None))


def init_jax(args) -> None:
    """``init_devices(args.devices)``, or, when this process is one of several (``--coordinator`` or the
    ``LINEAGE_COORDINATOR`` the launcher sets), JAX's distributed runtime with ``--devices`` as this
    process's local CPU devices; either way before any other JAX call."""
    cluster = cluster_of(args)
    if cluster is None:
        return init_devices(getattr(args, "devices", None))
    from parallel import distributed
    distributed.initialize(cluster)
    import jax
    n = cluster.local_devices
    if n is not None and jax.default_backend() == "cpu" and jax.local_device_count() != n:
        raise ConfigError(f"--devices={n}: this process started with {jax.local_device_count()} local devices")


def report_process_rows(summary: dict, batch_size: int) -> int:
    """Print (in a run of several processes) which rows of each global batch this process held and how many
    it read, from a ``train.loop.train`` summary; each process's own log says it. Returns the process count."""
    (index, count), (lo, hi) = summary["process"], summary["process_rows"]
    if count > 1:
        print(f"process {index} of {count}: held rows {lo}..{hi - 1} of every batch of {batch_size}; "
              f"read {summary['rows_read']['train']} train and {summary['rows_read']['eval']} eval rows")
    return count


def asked_for_several(args, env=None) -> bool:
    """Whether this process was started as one of several: by the flags, or the environment."""
    return any(v is not None for v in _given(args)) or several_processes(env)


def several_processes(env=None) -> bool:
    """Whether the environment says this process is one of several (``LINEAGE_COORDINATOR`` set, and
    ``LINEAGE_NUM_PROCESSES`` not 1; 'auto' leaves the count to the cluster, so it counts as several)."""
    env = os.environ if env is None else env
    return bool(env.get(ENV_COORDINATOR)) and env.get(ENV_NUM_PROCESSES, "").strip() != "1"


def supports_several(command: str, sub: str | None = None) -> bool:
    """Whether ``lineage command [sub]`` runs as several processes (``MULTI_PROCESS``)."""
    if command not in MULTI_PROCESS or sub in ONE_PROCESS_ACTIONS.get(command, ()):
        return False
    subs = MULTI_PROCESS[command]
    return not subs or sub in subs


def refusal(what: str) -> str:
    """The one line that refuses ``lineage what`` as one of several processes."""
    return (f"lineage {what}: runs in one process only (as one of several, every process would run the whole "
            f"job and write the same files); the commands that run as several processes are "
            f"{MULTI_PROCESS_NAMES}: start this one once, without lineage launch or {ENV_COORDINATOR}")


def refuse_several_processes(args, what: str, env=None) -> None:
    """Refuse (``ConfigError``, one line) a command that runs in one process when it was started as one of
    several, before any JAX call: by ``LINEAGE_COORDINATOR`` (``lineage launch local`` sets it; a user or
    a cluster script may too). Commands with ``add_distributed_args`` pass."""
    if getattr(args, "multi_process", False) or not several_processes(env):
        return
    raise ConfigError(refusal(what))
