"""The shard report's per-process view: what each process holds, and which collectives cross the
process boundary.

On a multi-host slice the devices of one host (one process) talk over the fast local links (ICI on
TPU, NVLink on GPU) and hosts talk over the data-centre network (DCN), tens of times slower. A
collective whose replica group holds devices of two processes pays DCN prices, so the report sorts
every collective of the compiled step by that test: a group inside one process is "ici", a group
spanning processes is "dcn". The partition ids in the HLO's replica groups are positions in the
mesh's device order (``mesh.devices.flat``), which ``partition_processes`` maps to processes: the
devices' own ``process_index`` in a real multi-process run, or, to study a layout on one machine's
emulated devices, the process each device would belong to with ``processes`` equal processes
(devices in process order, as ``jax.devices()`` lists them, split into equal blocks).
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Sequence

import jax

from parallel.distributed import DistributedError
from parallel.report.collectives import replica_group_list, summarize


def partition_processes(devices: Sequence[Any], processes: int | None = None) -> list[int]:
    """The process of each device in ``devices`` (the mesh's flat order: partition id -> process).
    ``processes=None``: each device's ``process_index``; an int: the block of ``len(devices) //
    processes`` devices, in process-then-id order, that the device falls in."""
    devices = list(devices)
    if processes is None:
        return [int(d.process_index) for d in devices]
    n = len(devices)
    if processes < 1 or n % processes:
        divisors = ", ".join(str(k) for k in range(1, n + 1) if n % k == 0)
        raise DistributedError(f"--processes={processes}: {n} devices do not split into {processes} equal "
                               f"processes; allowed {divisors}")
    per = n // processes
    rank = {id(d): i for i, d in enumerate(sorted(devices, key=lambda d: (d.process_index, d.id)))}
    return [rank[id(d)] // per for d in devices]


def crosses(op: Mapping[str, Any], procs: Sequence[int]) -> bool:
    """Whether any replica group (or permute pair) of ``op`` holds devices of several processes."""
    groups = replica_group_list(op.get("replica_groups") or "", len(procs))
    return any(len({procs[i] for i in g}) > 1 for g in groups)


def held_bytes(tree, shardings, procs: Sequence[int], devices: Sequence[Any]) -> dict[int, int]:
    """Bytes of ``tree`` (abstract leaves with ``shape``/``dtype``) that each process's devices
    hold under ``shardings`` (same structure), counting a replicated shard once per device."""
    proc_of = {id(d): p for d, p in zip(devices, procs)}
    out = {p: 0 for p in sorted(set(procs))}
    leaves = jax.tree.leaves(tree)
    shs = jax.tree.leaves(shardings, is_leaf=lambda s: isinstance(s, jax.sharding.Sharding))
    if len(shs) != len(leaves):
        raise ValueError(f"held_bytes: {len(leaves)} leaves but {len(shs)} shardings")
    for leaf, sh in zip(leaves, shs):
        itemsize = jax.numpy.dtype(leaf.dtype).itemsize
        for dev, index in sh.devices_indices_map(tuple(leaf.shape)).items():
            n = math.prod(len(range(*s.indices(dim))) for s, dim in zip(index, leaf.shape)) if index else 1
            out[proc_of[id(dev)]] += n * itemsize
    return out


def process_view(ops: Iterable[Mapping[str, Any]], procs: Sequence[int],
                 held: Mapping[str, Mapping[int, int]] | None = None) -> dict:
    """``processes``, ``devices_per_process``, ``held`` ({what: {process: bytes}}), and the
    collectives split by the boundary: ``ici`` and ``dcn`` (``summarize`` rows of the ops whose
    groups stay inside one process / span several), with their ``*_sent_bytes`` totals."""
    ops = list(ops)
    dcn = [op for op in ops if crosses(op, procs)]
    ici = [op for op in ops if not crosses(op, procs)]
    count = len(set(procs))
    return {"processes": count, "devices_per_process": len(procs) // count,
            "held": {k: dict(v) for k, v in (held or {}).items()},
            "ici": summarize(ici), "dcn": summarize(dcn),
            "ici_sent_bytes": sum(op["sent_bytes"] for op in ici),
            "dcn_sent_bytes": sum(op["sent_bytes"] for op in dcn)}


def format_processes(view: Mapping[str, Any], fmt_bytes) -> list[str]:
    """The per-process section as text lines."""
    out = [f"processes: {view['processes']} × {view['devices_per_process']} devices"]
    for what, per in view["held"].items():
        out.append(f"  {what} held per process: " + ", ".join(f"p{p} {fmt_bytes(b)}" for p, b in per.items()))
    for where, label in (("ici", "inside a process (ICI)"), ("dcn", "across processes (DCN)")):
        rows = view[where]
        kinds = ", ".join(f"{r['kind']} ×{r['count']} {fmt_bytes(r['sent_bytes'])}" for r in rows) or "none"
        out.append(f"  {label}: {fmt_bytes(view[where + '_sent_bytes'])} sent per step — {kinds}")
    return out
