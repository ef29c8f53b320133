"""``lineage shard-report``: compile the train step under a strategy, train nothing, and show
where every byte lives and which bytes cross devices — next to the ZeRO and ring formulas.

Composes a model's setup (lineage_jax.train.setup) with parallel/report/, which knows only
compiled programs, shardings and logical names; ``--compare`` runs the named strategies of
parallel/strategies.py. Imports JAX: the CLI imports it once ``--devices`` has acted.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp

from lineage_jax.config import Config
from lineage_jax.train.pipeline import schedule_of
from lineage_jax.train.setup import build, compile_all
from parallel import distributed
from parallel import pipeline
from parallel.report import build as report, plot, theory
from parallel.report.collectives import collectives_by_op
from parallel.report.processes import partition_processes
from parallel.strategies import NAMED


def shard_report(cfg: Config, devices=None, processes: int | None = None) -> dict:
    """The report's dict (see ``parallel.report.build.build_report``) plus the CLI's JSON keys.

    ``processes``: the per-process section as if the devices belonged to that many processes
    (``parallel.report.processes``; a layout whose tensor or expert groups would span processes is
    refused in one line before compiling); in a multi-process run the section is always there."""
    setup = build(cfg, devices=devices, compile_steps=False)
    flat = list(setup.mesh.devices.flat)
    procs = None
    if processes is not None or jax.process_count() > 1:
        procs = partition_processes(flat, processes)
        by_device = {id(d): p for d, p in zip(flat, procs)}
        distributed.check_process_boundary(setup.mesh, process_of=lambda d: by_device[id(d)])
    compile_all(setup, compile_eval=False)                  # the report reads the train step alone
    abstract = setup.abstract_state()
    p_bytes = jnp.dtype(setup.cfg.model.param_dtype).itemsize
    rep = report.build_report(report.ReportInputs(
        setup.train_step, abstract_params=abstract.params, logical_specs=setup.logical_specs,
        param_shardings=setup.state_sharding.params, opt_state=abstract.opt_state,
        opt_shardings=setup.state_sharding.opt_state, mesh_shape=dict(setup.mesh.shape),
        stage=cfg.parallel.zero_stage, param_bytes=p_bytes, grad_bytes=p_bytes, opt_bytes_per_param=2 * p_bytes,
        title=f"{cfg.model.layers}L×{cfg.model.width} {strategy_name(cfg)} ({cfg.parallel.form})",
        devices=flat, processes=procs))
    m, mesh = setup.cfg.model, dict(setup.mesh.shape)
    if m.moe_every and mesh.get("expert", 1) > 1 and "comm_theory" in rep:
        from lineage_jax.moe.routers import capacity
        batch_devices = mesh["data"] * mesh["fsdp"] * mesh["expert"]
        micro = cfg.train.batch_size // cfg.train.grad_accum
        a2a = theory.expert_comm_theory_bytes(
            micro // batch_devices * cfg.train.grad_accum, m.experts, capacity(m.context, m.experts, m.capacity_factor),
            m.width, mesh["expert"], moe_layers=m.layers // m.moe_every, dtype_bytes=jnp.dtype(m.dtype).itemsize)
        rep["comm_theory"]["all-to-all"] = a2a
        rep["comm_theory"]["total"] += a2a
    mem, zero = rep.get("memory", {}), rep.get("memory_theory", {})
    rep["devices"] = len(setup.mesh.devices.flat)
    rep["per_device_bytes"] = {"params": rep["params_bytes_per_device"], "opt_state": rep["opt_state_bytes_per_device"],
                               "temp": mem.get("temp"), "total": mem.get("total")}
    rep["theory_bytes"] = {k: zero[k] for k in ("params", "opt_state", "grads") if k in zero}
    if "total" in zero:
        rep["theory_bytes"]["total"] = zero["total"]
    rep["compile_seconds"] = setup.compile_seconds
    if cfg.parallel.pipeline_stages > 1:
        rep["pipeline"] = pipeline_section(setup, rep)
    return rep


def pipeline_section(setup, rep: dict) -> dict:
    """The schedule's bubble, stash and sends (``parallel.pipeline.pipeline_report``), with the
    collective-permute bytes per step read from the compiled program beside their formula."""
    cfg, mesh = setup.cfg, dict(setup.mesh.shape)
    rows = cfg.train.batch_size // cfg.parallel.microbatches // (mesh["data"] * mesh["fsdp"] * mesh["expert"])
    act = rows * cfg.model.context * cfg.model.width * jnp.dtype(cfg.model.dtype).itemsize
    out = pipeline.pipeline_report(schedule_of(cfg), act)
    permutes = [c for c in rep.get("collectives_executed", ()) if c["kind"] == "collective-permute"]
    out["compiled_permute_bytes"] = sum(c["sent_bytes"] for c in permutes) if permutes else None
    # what runs: the tick loop's branches counted by the schedule, not on every tick
    out["executed_sent_bytes"] = pipeline.executed_sent_bytes(collectives_by_op(setup.train_step.as_text()),
                                                              schedule_of(cfg))
    return out


def strategy_name(cfg: Config) -> str:
    m, p = cfg.mesh, cfg.parallel
    parts = [f"data={m.data}", f"fsdp={m.fsdp}"] + ([f"expert={m.expert}"] if m.expert != 1 else []) + [
        f"tensor={m.tensor}"]
    if p.zero_stage:
        parts.append(f"ZeRO-{p.zero_stage}")
    if p.sequence_parallel:
        parts.append("SP")
    if p.precision != "fp32":
        parts.append(p.precision)
    if p.pipeline_stages > 1:
        parts.append(f"PP{p.pipeline_stages} {p.pipeline_schedule} M={p.microbatches}"
                     + (f" v={p.virtual_stages}" if p.virtual_stages > 1 else ""))
    return " ".join(parts)


def configure(cfg: Config, name: str) -> Config:
    """``cfg`` with the mesh and parallel options of the named strategy ``NAMED[name]``."""
    over = NAMED[name]
    return dataclasses.replace(cfg, mesh=dataclasses.replace(cfg.mesh, **over["mesh"]),
                               parallel=dataclasses.replace(cfg.parallel, **over["parallel"]))


def compare(cfg: Config, path: Path, devices=None) -> list[dict]:
    """One report per named strategy for cfg's model; a PNG of memory and traffic per device."""
    rows = []
    for name in NAMED:
        try:
            rep = shard_report(configure(cfg, name), devices)
        except ValueError as e:      # e.g. a dimension the tensor axis does not divide
            rows.append({"name": name, "skipped": str(e)})
            continue
        rows.append(report.comparison_row(name, rep))
    plot.plot_strategies([r for r in rows if "skipped" not in r], path)
    return rows


def to_json(rep: dict) -> dict:
    """The stable JSON face of a report."""
    return {"devices": rep["devices"], "mesh": rep["mesh"], "stage": rep.get("stage"),
            "per_device_bytes": rep["per_device_bytes"], "theory_bytes": rep["theory_bytes"],
            "memory": rep.get("memory"), "comm_theory": rep.get("comm_theory"),
            "collectives": [{k: c[k] for k in ("kind", "count", "bytes", "sent_bytes", "replica_groups") if k in c}
                            for c in rep.get("collectives_executed", [])],
            "params": [{"path": r["path"], "logical": list(r["logical"] or ()), "spec": r["spec"],
                        "shape": list(r["shape"]), "bytes_per_device": r["bytes_per_device"]} for r in rep["params"]],
            "warnings": rep.get("warnings", []), "compile_seconds": rep["compile_seconds"],
            **({"pipeline": rep["pipeline"]} if "pipeline" in rep else {}),
            **({"processes": _processes_json(rep["processes"])} if "processes" in rep else {})}


def _processes_json(view: dict) -> dict:
    """JSON keys are strings: the per-process byte maps keyed by process number as text."""
    rows = lambda r: [{k: c[k] for k in ("kind", "count", "bytes", "sent_bytes", "replica_groups")} for c in r]  # noqa: E731
    return {"processes": view["processes"], "devices_per_process": view["devices_per_process"],
            "held": {what: {str(p): b for p, b in per.items()} for what, per in view["held"].items()},
            "ici": rows(view["ici"]), "dcn": rows(view["dcn"]),
            "ici_sent_bytes": view["ici_sent_bytes"], "dcn_sent_bytes": view["dcn_sent_bytes"]}
