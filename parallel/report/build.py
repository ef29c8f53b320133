"""The shard report as plain data: what a compiled step stores and sends per device, beside
what the ZeRO and ring formulas say (``theory.py``); ``format.py`` prints it, ``plot.py``
draws a comparison of strategies from ``comparison_row``.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

from parallel.report import theory
from parallel.report.collectives import collectives_by_op, scale_by_trip_count, summarize
from parallel.report.memory import memory, param_table, replicated_warnings, tree_bytes_per_device
from parallel.report.processes import held_bytes, process_view
from parallel.rules import ZERO_AXES


@dataclasses.dataclass(frozen=True)
class ReportInputs:
    """What a report is built from; every field is optional.

    ``compiled``: a ``jax.stages.Compiled`` (memory and collectives) or its HLO text
    (collectives only). ``abstract_params`` with ``logical_specs`` and ``param_shardings`` (or
    leaves carrying ``.sharding``): the parameter table. ``opt_state`` with ``opt_shardings``:
    the measured optimizer bytes. ``mesh_shape``: {axis: size} (``mesh.shape``).

    ZeRO theory (with ``stage``): ``n_shards`` (the N of the formulas and the n of the
    communication theory) defaults, for stages 1-3, to ``data`` × ``fsdp`` (the data-parallel
    axes ZeRO shards state over, ``parallel.rules.ZERO_AXES``), and for stage 0 to all
    non-``tensor`` devices (those the gradient all-reduce spans). With tensor parallelism the
    theory is per tensor-parallel rank: Ψ/T parameters each.
    ``param_bytes``, ``grad_bytes``, ``opt_bytes_per_param`` as in ``theory.zero_theory_bytes``.

    ``trip_count`` as in ``collectives.collectives`` (None: static counts, plus a per-execution
    view with XLA's known trip counts under ``collectives_executed``). Parameters of at least
    ``threshold_bytes`` stored whole on every device are warned about.

    ``devices`` (the mesh's flat device order, i.e. partition id -> device) with ``processes``
    (the process of each, ``processes.partition_processes``): the per-process section, ``processes``
    in the report — bytes each process holds and the executed collectives split into those that stay
    inside a process (ICI) and those that cross processes (DCN).
    """
    compiled: Any = None
    abstract_params: Any = None
    logical_specs: Any = None
    param_shardings: Any = None
    opt_state: Any = None
    opt_shardings: Any = None
    mesh_shape: Mapping[str, int] = dataclasses.field(default_factory=dict)
    stage: int | None = None
    n_shards: int | None = None
    param_bytes: int = 4
    grad_bytes: int = 4
    opt_bytes_per_param: int = 8
    trip_count: int | str | None = None
    threshold_bytes: int = 1 << 20
    title: str = ""
    devices: Any = None
    processes: Any = None


def build_report(inputs: ReportInputs) -> dict:
    """Everything ``format.format_report`` shows, as plain data (sections present as inputs allow)."""
    i = inputs
    mesh_shape = dict(i.mesh_shape)
    n_devices = math.prod(mesh_shape.values()) if mesh_shape else None
    rep: dict[str, Any] = {"title": i.title, "mesh": mesh_shape, "n_devices": n_devices, "stage": i.stage}
    if i.abstract_params is not None:
        table = param_table(i.abstract_params, i.logical_specs, i.param_shardings)
        rep["params"] = table
        rep["n_params"] = sum(math.prod(r["shape"]) for r in table)
        rep["params_bytes"] = sum(r["bytes"] for r in table)
        rep["params_bytes_per_device"] = sum(r["bytes_per_device"] for r in table)
        rep["warnings"] = replicated_warnings(table, n_devices or 1, i.threshold_bytes)
    if i.opt_state is not None:
        rep["opt_state_bytes_per_device"] = tree_bytes_per_device(i.opt_state, i.opt_shardings)
    if i.compiled is not None:
        if isinstance(i.compiled, str):                    # HLO text alone: collectives, no memory
            text = i.compiled
        else:
            rep["memory"] = memory(i.compiled)
            text = i.compiled.as_text()
        ops = collectives_by_op(text)
        rep["collectives"] = summarize(scale_by_trip_count(ops, i.trip_count) if i.trip_count is not None else ops)
        rep["collectives_executed"] = summarize(scale_by_trip_count(ops, "auto"))
        if i.processes is not None:
            rep["processes"] = _process_section(i, scale_by_trip_count(ops, "auto"))
    if i.stage is not None and "n_params" in rep:
        rep.update(_zero_theory(rep["params"], mesh_shape, i))
    return rep


def _process_section(i: ReportInputs, executed: list[dict]) -> dict:
    procs, devices = list(i.processes), list(i.devices)
    held = {}
    if i.abstract_params is not None and i.param_shardings is not None:
        held["params"] = held_bytes(i.abstract_params, i.param_shardings, procs, devices)
    if i.opt_state is not None and i.opt_shardings is not None:
        held["opt_state"] = held_bytes(i.opt_state, i.opt_shardings, procs, devices)
    return process_view(executed, procs, held)


def _zero_theory(table, mesh_shape: Mapping[str, int], i: ReportInputs) -> dict:
    """``n_shards``, ``memory_theory`` and ``comm_theory`` of the parameter table.

    Model parallelism (tensor; expert, for expert weights; stage, for the layer stack) splits Ψ
    before ZeRO sees it: the theory is per model-parallel rank. Expert weights are data-parallel over data × fsdp: the
    ZeRO group, and at stage 0 the N/expert devices that share each expert. At stages 1-3 the
    dense gradients' extra all-reduce over ``expert`` (a batch axis outside ZeRO's group) is
    not counted.
    """
    tensor, ep, stages = mesh_shape.get("tensor", 1), mesh_shape.get("expert", 1), mesh_shape.get("stage", 1)
    zero = i.stage > 0
    n = i.n_shards or (math.prod(mesh_shape.get(a, 1) for a in ZERO_AXES) if zero
                       else max(1, math.prod(mesh_shape.values()) // (tensor * stages)))
    per_rank = lambda r: -(-math.prod(r["shape"]) // math.prod(  # noqa: E731
        mesh_shape.get(a, 1) for a in r.get("mesh_axes", ()) if a in ("tensor", "expert", "stage")))
    is_expert = lambda r: "expert" in r.get("mesh_axes", ())  # noqa: E731
    psi_dense = sum(per_rank(r) for r in table if not is_expert(r))
    psi_expert = sum(per_rank(r) for r in table if is_expert(r))
    comm = theory.comm_theory_bytes(psi_dense * i.grad_bytes, i.stage, n)
    if psi_expert:
        n_e = n if zero else max(1, n // ep)
        comm = {k: v + theory.comm_theory_bytes(psi_expert * i.grad_bytes, i.stage, n_e)[k] for k, v in comm.items()}
    return {"n_shards": n, "comm_theory": comm,
            "memory_theory": theory.zero_theory_bytes(psi_dense + psi_expert, i.stage, n, i.param_bytes,
                                                      i.grad_bytes, i.opt_bytes_per_param)}


def comparison_row(name: str, rep: Mapping[str, Any]) -> dict:
    """One strategy's line in a comparison (``plot.plot_strategies``): bytes per device of
    parameters, optimizer state and temporaries, bytes sent per step, and their theory."""
    mem, zero = rep.get("memory") or {}, rep.get("memory_theory") or {}
    return {"name": name, "params": rep.get("params_bytes_per_device") or 0,
            "opt_state": rep.get("opt_state_bytes_per_device") or 0, "temp": mem.get("temp") or 0,
            "comm": sum(c["sent_bytes"] for c in rep.get("collectives_executed", ())),
            "comm_theory": (rep.get("comm_theory") or {}).get("total", 0),
            "state_theory": zero.get("params", 0) + zero.get("opt_state", 0)}
