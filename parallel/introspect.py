"""What a compiled program really does per device: memory, parameter bytes, ZeRO theory, the report.

Pure functions over compiled programs (``jax.stages.Compiled``) and pytrees of shapes and
shardings; collectives come from ``parallel/hlo.py``. Nothing here prints except
``format_report`` (which returns a string) and ``plot_strategies`` (which writes a PNG).
Like the rest of ``parallel/`` it knows logical axis names, shardings and compiled programs,
never models.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import jax
import numpy as np

# Re-exported: the report's public surface includes the HLO parser's.
from parallel.hlo import (KINDS, collectives, collectives_by_op, dtype_bits, group_size,  # noqa: F401
                          replica_group_list, scale_by_trip_count, shape_bytes, summarize)

__all__ = ["KINDS", "collectives", "collectives_by_op", "dtype_bits", "group_size", "replica_group_list",
           "scale_by_trip_count", "shape_bytes", "summarize", "memory", "tree_bytes_per_device",
           "leaf_bytes_per_device", "param_table", "replicated_warnings", "zero_theory_bytes",
           "comm_theory_bytes", "expert_comm_theory_bytes", "build_report", "format_report", "fmt_bytes", "plot_strategies"]


_MEMORY_FIELDS = {"arguments": "argument_size_in_bytes", "outputs": "output_size_in_bytes",
                  "temp": "temp_size_in_bytes", "alias": "alias_size_in_bytes",
                  "generated_code": "generated_code_size_in_bytes", "peak": "peak_memory_in_bytes"}


def memory(compiled) -> dict:
    """Per-device memory of a compiled program, in bytes, from ``compiled.memory_analysis()``.

    ``arguments``: the input buffers of one device (its shards of params, optimizer state and
    batch), donated ones included. ``outputs``: the result buffers. ``alias``: output bytes that
    reuse (alias) an input buffer, from ``donate_argnums``: counted in both of the above.
    ``temp``: the scratch XLA's buffer assignment reserves for intermediates (activations kept
    for backward, gathered parameters, gradients before their reduction...), after buffer
    sharing. ``total`` = arguments + outputs + temp − alias: what the program needs resident at
    once, an upper bound of its live memory. ``peak`` and ``generated_code`` are passed through
    when the backend reports them (None otherwise). Every field is None, and ``available`` is
    False, when the backend gives no analysis; ``compiled`` may also be the stats object itself.
    """
    stats = compiled
    if hasattr(compiled, "memory_analysis"):
        try:
            stats = compiled.memory_analysis()
        except Exception:                                   # backends without the analysis
            stats = None
    if isinstance(stats, (list, tuple)):
        stats = stats[0] if stats else None
    out: dict[str, Any] = {}
    for key, attr in _MEMORY_FIELDS.items():
        v = getattr(stats, attr, None) if stats is not None else None
        out[key] = int(v) if isinstance(v, (int, np.integer)) and v >= 0 else None
    parts = [out["arguments"], out["outputs"], out["temp"]]
    out["available"] = any(p is not None for p in parts)
    out["total"] = (sum(p or 0 for p in parts) - (out["alias"] or 0)) if out["available"] else None
    return out


# ---------------------------------------------------------------------------------------
# Parameters and shardings
# ---------------------------------------------------------------------------------------

def _itemsize(dtype) -> int:
    try:
        return int(np.dtype(dtype).itemsize)
    except TypeError:
        return int(getattr(dtype, "itemsize", 4))


def leaf_bytes_per_device(leaf, sharding=None) -> int:
    """Bytes one device stores of ``leaf`` (array or ShapeDtypeStruct) under ``sharding``
    (default: the leaf's own ``.sharding``, else replicated)."""
    shape = tuple(np.shape(leaf)) if not hasattr(leaf, "shape") else tuple(leaf.shape)
    dtype = getattr(leaf, "dtype", np.asarray(leaf).dtype)
    sharding = sharding if sharding is not None else getattr(leaf, "sharding", None)
    if sharding is not None and hasattr(sharding, "shard_shape"):
        shape = tuple(sharding.shard_shape(shape))
    return math.prod(shape) * _itemsize(dtype)


def tree_bytes_per_device(tree, shardings=None) -> int:
    """Sum of ``leaf_bytes_per_device`` over a pytree; ``shardings`` is a pytree of Shardings with
    the same structure (or None to use each leaf's ``.sharding``)."""
    leaves = jax.tree.leaves(tree)
    if shardings is None:
        return sum(leaf_bytes_per_device(x) for x in leaves)
    if isinstance(shardings, jax.sharding.Sharding):
        return sum(leaf_bytes_per_device(x, shardings) for x in leaves)
    shs = jax.tree.leaves(shardings, is_leaf=lambda s: isinstance(s, jax.sharding.Sharding))
    if len(shs) != len(leaves):
        raise ValueError(f"tree_bytes_per_device: {len(leaves)} leaves but {len(shs)} shardings")
    return sum(leaf_bytes_per_device(x, s) for x, s in zip(leaves, shs))


def _key_str(k) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def path_str(path) -> str:
    """``blocks/attn/query/kernel`` from a pytree key path."""
    return "/".join(_key_str(k) for k in path)


def _spec_str(spec) -> str:
    return str(spec).replace("PartitionSpec", "P")


def _spec_axes(spec) -> tuple[str, ...]:
    """Mesh axes named anywhere in a PartitionSpec."""
    out = []
    for entry in (spec or ()):
        out += [entry] if isinstance(entry, str) else list(entry or ())
    return tuple(out)


def param_table(abstract_params, logical_specs=None, shardings=None) -> list[dict]:
    """One row per parameter leaf: ``path``, ``logical`` (tuple of logical axis names, None if no
    specs), ``spec`` (str of the mesh PartitionSpec, e.g. ``P('fsdp', None)``), ``shape``,
    ``dtype``, ``bytes`` (whole array), ``bytes_per_device`` (``sharding.shard_shape(shape)``)
    and ``replicated`` (the sharding stores a full copy on every device)."""
    flat = jax.tree_util.tree_leaves_with_path(abstract_params)
    is_p = lambda x: isinstance(x, jax.sharding.PartitionSpec)  # noqa: E731
    specs = jax.tree.leaves(logical_specs, is_leaf=is_p) if logical_specs is not None else [None] * len(flat)
    if shardings is None:
        shs = [getattr(leaf, "sharding", None) for _, leaf in flat]
    else:
        shs = jax.tree.leaves(shardings, is_leaf=lambda s: isinstance(s, jax.sharding.Sharding))
    if not (len(flat) == len(specs) == len(shs)):
        raise ValueError(f"param_table: {len(flat)} params, {len(specs)} logical specs, {len(shs)} shardings")
    rows = []
    for (path, leaf), spec, sh in zip(flat, specs, shs):
        shape = tuple(leaf.shape)
        full = math.prod(shape) * _itemsize(leaf.dtype)
        per = leaf_bytes_per_device(leaf, sh) if sh is not None else full
        mesh_spec = getattr(sh, "spec", None)
        rows.append({"path": path_str(path), "logical": tuple(spec) if spec is not None else None,
                     "spec": _spec_str(mesh_spec) if mesh_spec is not None else ("P()" if sh is not None else "-"),
                     "shape": shape, "dtype": str(np.dtype(leaf.dtype)) if hasattr(leaf, "dtype") else "",
                     "bytes": full, "bytes_per_device": per, "mesh_axes": _spec_axes(mesh_spec),
                     "replicated": bool(getattr(sh, "is_fully_replicated", per == full)) if sh is not None else True})
    return rows


def replicated_warnings(table: Sequence[dict], mesh_size: int, threshold_bytes: int = 1 << 20) -> list[str]:
    """One line per parameter of at least ``threshold_bytes`` stored as a full copy on each of
    ``mesh_size`` > 1 devices (nothing to say on one device)."""
    if mesh_size <= 1:
        return []
    out = []
    for row in table:
        if row["bytes_per_device"] >= row["bytes"] and row["bytes"] >= threshold_bytes:
            out.append(f"{row['path']}: {fmt_bytes(row['bytes'])} stored fully replicated on each of {mesh_size} "
                       f"devices (logical {row['logical']} -> {row['spec']}); map one of its logical axes to a mesh "
                       f"axis to shard it")
    return out


# ---------------------------------------------------------------------------------------
# Theory
# ---------------------------------------------------------------------------------------

def zero_theory_bytes(n_params: int, stage: int, n_shards: int, param_bytes: int = 4, grad_bytes: int = 4,
                      opt_bytes_per_param: int = 8) -> dict:
    """Per-device model-state bytes under ZeRO (Rajbhandari et al. 2020, "ZeRO: Memory
    Optimizations Toward Training Trillion Parameter Models", §5), with Ψ = ``n_params``,
    N = ``n_shards`` (data-parallel degree), parameters of ``param_bytes``, gradients of
    ``grad_bytes`` and K = ``opt_bytes_per_param`` bytes of optimizer state per parameter:

    ========  ==============  ==============  ==============  =============================
    stage     params          grads           opt_state       paper (2-byte p, g)
    ========  ==============  ==============  ==============  =============================
    0 (DP)    p·Ψ             g·Ψ             K·Ψ             (2 + 2 + K)·Ψ
    1 P_os    p·Ψ             g·Ψ             K·Ψ/N           2Ψ + 2Ψ + K·Ψ/N
    2 P_os+g  p·Ψ             g·Ψ/N           K·Ψ/N           2Ψ + (2 + K)·Ψ/N
    3 P_os+g+p  p·Ψ/N         g·Ψ/N           K·Ψ/N           (2 + 2 + K)·Ψ/N
    ========  ==============  ==============  ==============  =============================

    K = 8 for Adam with f32 params (f32 m and v); K = 12 in the paper's mixed-precision setting
    (f32 master copy + m + v beside bf16/fp16 params and grads, p = g = 2). A sharded quantity
    takes ⌈Ψ/N⌉ elements per device. Activations and temporaries are not model state and are
    not included. Returns ``params``, ``grads``, ``opt_state`` and ``total`` in bytes.
    """
    if stage not in (0, 1, 2, 3):
        raise ValueError(f"ZeRO stage must be 0, 1, 2 or 3, got {stage}")
    if n_shards < 1:
        raise ValueError(f"n_shards must be >= 1, got {n_shards}")
    shard = -(-n_params // n_shards)
    out = {"params": (shard if stage >= 3 else n_params) * param_bytes,
           "grads": (shard if stage >= 2 else n_params) * grad_bytes,
           "opt_state": (shard if stage >= 1 else n_params) * opt_bytes_per_param}
    out["total"] = out["params"] + out["grads"] + out["opt_state"]
    return out


def comm_theory_bytes(param_bytes_total: int, stage: int, n: int) -> dict:
    """Bytes each device *sends* per training step for the data-parallel gradient / parameter
    traffic of ZeRO ``stage`` over ``n`` devices, with bandwidth-optimal (ring) collectives on
    P = ``param_bytes_total`` bytes of parameters (= gradient bytes): an all-gather or a
    reduce-scatter of P costs P·(n−1)/n per device, an all-reduce (= reduce-scatter +
    all-gather) 2·P·(n−1)/n (JAX scaling book; ZeRO paper §7):

    ========  ===================================================  ===============
    stage     collectives                                          total
    ========  ===================================================  ===============
    0 (DP)    all-reduce of the gradients                          2·P·(n−1)/n
    1, 2      reduce-scatter gradients + all-gather updated params  2·P·(n−1)/n
    3         all-gather params in forward and again in backward,  3·P·(n−1)/n
              reduce-scatter gradients
    ========  ===================================================  ===============

    Returns ``all-reduce``, ``reduce-scatter``, ``all-gather`` and ``total`` (ints, bytes).
    Compare with the ``sent_bytes`` of ``collectives``, which uses the same convention.
    """
    if stage not in (0, 1, 2, 3):
        raise ValueError(f"ZeRO stage must be 0, 1, 2 or 3, got {stage}")
    one = param_bytes_total * (n - 1) // n if n > 1 else 0
    ar, rs, ag = (2 * one, 0, 0) if stage == 0 else (0, one, one) if stage in (1, 2) else (0, one, 2 * one)
    return {"all-reduce": ar, "reduce-scatter": rs, "all-gather": ag, "total": ar + rs + ag}


def expert_comm_theory_bytes(groups: int, experts: int, capacity: int, width: int, n: int, *,
                             moe_layers: int = 1, dtype_bytes: int = 4, passes: int = 4) -> int:
    """Bytes each device sends per step for GShard expert parallelism over ``n`` devices.

    Each MoE layer moves its dispatch buffer [G, E, C, D] (G token groups on this device, E
    experts, C capacity slots, D width) to the experts' devices and the outputs back: two
    all-to-alls forward and, transposed, two backward (``passes = 4`` per layer per
    micro-batch). An all-to-all keeps 1/n of the buffer and sends the rest:

        sent = passes · moe_layers · G·E·C·D·bytes · (n−1)/n

    It does not depend on the number of parameters: expert parallelism trades the parameter
    traffic of data parallelism for activation traffic.
    """
    if n <= 1:
        return 0
    return passes * moe_layers * groups * experts * capacity * width * dtype_bytes * (n - 1) // n


# ---------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------

def build_report(compiled=None, *, abstract_params=None, logical_specs=None, param_shardings=None,
                 opt_state=None, opt_shardings=None, mesh_shape: Mapping[str, int] | None = None,
                 stage: int | None = None, n_shards: int | None = None, param_bytes: int = 4,
                 grad_bytes: int = 4, opt_bytes_per_param: int = 8, trip_count: int | str | None = None,
                 threshold_bytes: int = 1 << 20, title: str = "") -> dict:
    """Everything ``format_report`` shows, as plain data; every argument is optional.

    ``mesh_shape``: {axis: size} (``mesh.shape``). ``n_shards`` (the N of the ZeRO formulas and
    the n of the communication theory) defaults to the ``fsdp`` axis size when it is > 1 (the
    axis ZeRO shards state over), else to all non-``tensor`` devices (the data-parallel degree).
    With tensor parallelism the theory is per tensor-parallel rank: Ψ/T parameters each. ``opt_state`` with
    ``opt_shardings`` (or leaves carrying ``.sharding``) gives the measured optimizer bytes.
    ``trip_count`` as in ``collectives`` (None: static counts, plus a per-execution view
    with XLA's known trip counts under ``collectives_executed``).
    """
    mesh_shape = dict(mesh_shape or {})
    n_devices = math.prod(mesh_shape.values()) if mesh_shape else None
    rep: dict[str, Any] = {"title": title, "mesh": mesh_shape, "n_devices": n_devices, "stage": stage}
    if abstract_params is not None:
        table = param_table(abstract_params, logical_specs, param_shardings)
        rep["params"] = table
        rep["n_params"] = sum(math.prod(r["shape"]) for r in table)
        rep["params_bytes"] = sum(r["bytes"] for r in table)
        rep["params_bytes_per_device"] = sum(r["bytes_per_device"] for r in table)
        rep["warnings"] = replicated_warnings(table, n_devices or 1, threshold_bytes)
    if opt_state is not None:
        rep["opt_state_bytes_per_device"] = tree_bytes_per_device(opt_state, opt_shardings)
    if compiled is not None:
        if isinstance(compiled, str):                      # HLO text alone: collectives, no memory
            text = compiled
        else:
            rep["memory"] = memory(compiled)
            text = compiled.as_text()
        ops = collectives_by_op(text)
        rep["collectives"] = summarize(scale_by_trip_count(ops, trip_count) if trip_count is not None else ops)
        rep["collectives_executed"] = summarize(scale_by_trip_count(ops, "auto"))
    if stage is not None and "n_params" in rep:
        # Model parallelism (tensor; expert, for expert weights) splits Ψ before ZeRO sees it: the
        # theory is per model-parallel rank. Expert weights are data-parallel over N/expert devices.
        tensor, ep = mesh_shape.get("tensor", 1), mesh_shape.get("expert", 1)
        zero_axis = mesh_shape.get("fsdp", 1) > 1
        n = n_shards or (mesh_shape["fsdp"] if zero_axis else max(1, (n_devices or 1) // tensor))
        per_rank = lambda r: -(-math.prod(r["shape"]) // math.prod(
            mesh_shape.get(a, 1) for a in r.get("mesh_axes", ()) if a in ("tensor", "expert")))
        is_expert = lambda r: "expert" in r.get("mesh_axes", ())
        psi_dense = sum(per_rank(r) for r in table if not is_expert(r))
        psi_expert = sum(per_rank(r) for r in table if is_expert(r))
        rep["n_shards"] = n
        rep["memory_theory"] = zero_theory_bytes(psi_dense + psi_expert, stage, n, param_bytes,
                                                 grad_bytes, opt_bytes_per_param)
        comm = comm_theory_bytes(psi_dense * grad_bytes, stage, n)
        if psi_expert:
            n_e = n if zero_axis else max(1, n // ep)
            comm = {k: v + comm_theory_bytes(psi_expert * grad_bytes, stage, n_e)[k] for k, v in comm.items()}
        rep["comm_theory"] = comm
    return rep


def fmt_bytes(n: int | float | None) -> str:
    """``1536`` -> ``1.5 KiB``; None -> ``-``."""
    if n is None:
        return "-"
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{int(n)} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], right: Sequence[int] = ()) -> list[str]:
    cells = [list(map(str, header))] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = []
    for j, r in enumerate(cells):
        lines.append("  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip())
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return lines


def format_report(report: Mapping[str, Any]) -> str:
    """A text report of ``build_report``'s dict (every section optional): parameters (path,
    logical axes -> mesh spec, bytes per device), per-device memory beside ZeRO theory,
    collectives (kind, count, bytes, sent, groups) beside communication theory, warnings."""
    out: list[str] = []
    title = report.get("title") or "shard report"
    out.append(f"== {title} ==")
    mesh = report.get("mesh") or {}
    if mesh:
        line = "mesh: " + " × ".join(f"{a}={s}" for a, s in mesh.items()) + f"  ({report.get('n_devices')} devices)"
        if report.get("stage") is not None:
            line += f"   ZeRO stage {report['stage']} over {report.get('n_shards', '?')} shards"
        out.append(line)

    table = report.get("params")
    if table:
        out += ["", f"parameters: {len(table)} arrays, {report.get('n_params', 0):,} values, "
                    f"{fmt_bytes(report.get('params_bytes'))} in all"]
        rows = [(r["path"], "(" + ", ".join(str(a) for a in (r["logical"] or ())) + ")", r["spec"],
                 "×".join(map(str, r["shape"])) or "scalar", fmt_bytes(r["bytes_per_device"])) for r in table]
        rows.append(("total", "", "", "", fmt_bytes(report.get("params_bytes_per_device"))))
        out += _table(("path", "logical", "-> spec", "shape", "bytes/device"), rows, right=(4,))

    mem, theory = report.get("memory"), report.get("memory_theory")
    if mem or theory or report.get("params_bytes_per_device") is not None:
        out += ["", "memory per device" + (f" (theory: ZeRO-{report['stage']}, Ψ={report.get('n_params', 0):,}, "
                                             f"N={report.get('n_shards')})" if theory else "")]
        theory = theory or {}
        mem = mem or {}
        rows = [("params", fmt_bytes(report.get("params_bytes_per_device")), fmt_bytes(theory.get("params"))),
                ("grads", "-", fmt_bytes(theory.get("grads"))),
                ("opt_state", fmt_bytes(report.get("opt_state_bytes_per_device")), fmt_bytes(theory.get("opt_state"))),
                ("model state", "-", fmt_bytes(theory.get("total")))]
        rows += [(f"compiled {k}", fmt_bytes(mem.get(k)), "") for k in ("arguments", "outputs", "temp", "alias", "total")
                 if k in mem]
        out += _table(("", "measured", "theory"), rows, right=(1, 2))

    colls = report.get("collectives")
    if colls is not None:
        ctheory = report.get("comm_theory") or {}
        executed = {c["kind"]: c for c in report.get("collectives_executed") or ()}
        out += ["", "collectives (count/bytes per instruction as compiled; 'sent' = ring estimate of bytes each "
                    "device sends; 'per step' multiplies loop bodies by XLA's known trip counts)"]
        kinds = [c["kind"] for c in colls] + [k for k in ("all-reduce", "reduce-scatter", "all-gather", "all-to-all")
                                              if ctheory.get(k) and k not in {c["kind"] for c in colls}]
        by_kind = {c["kind"]: c for c in colls}
        rows = []
        for k in kinds:
            c = by_kind.get(k, {"count": 0, "bytes": 0, "sent_bytes": 0, "replica_groups": [], "in_loop": 0})
            e = executed.get(k, c)
            groups = " ".join(c["replica_groups"])
            rows.append((k, f"{c['count']}" + (f" ({c['in_loop']} in loop)" if c["in_loop"] else ""),
                         fmt_bytes(c["bytes"]), fmt_bytes(c["sent_bytes"]), fmt_bytes(e["sent_bytes"]),
                         fmt_bytes(ctheory.get(k)) if ctheory else "-",
                         groups if len(groups) <= 60 else groups[:57] + "..."))
        if ctheory:
            rows.append(("total", "", fmt_bytes(sum(c["bytes"] for c in colls)),
                         fmt_bytes(sum(c["sent_bytes"] for c in colls)),
                         fmt_bytes(sum(e["sent_bytes"] for e in executed.values()) if executed else None),
                         fmt_bytes(ctheory.get("total")), ""))
        if rows:
            out += _table(("kind", "count", "bytes", "sent", "sent/step", "theory sent", "replica groups"), rows,
                          right=(2, 3, 4, 5))
        else:
            out.append("  none")

    warnings = report.get("warnings")
    if warnings:
        out += ["", "warnings:"] + [f"  - {w}" for w in warnings]
    return "\n".join(out) + "\n"


def plot_strategies(rows: Sequence[Mapping[str, Any]], path) -> str:
    """PNG comparing strategies: left, per-device memory (stacked ``params``, ``grads`` if given,
    ``opt_state``, ``temp``); right, communication bytes per device (``comm``, and
    ``comm_theory`` beside it when given). One bar group per ``name``. Returns ``path``."""
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    names = [str(r["name"]) for r in rows]
    x = np.arange(len(names))
    mib = float(1 << 20)
    fig, (ax_m, ax_c) = plt.subplots(1, 2, figsize=(max(8.0, 2.2 * len(names) + 4), 4.5))
    bottom = np.zeros(len(names))
    parts = [p for p in ("params", "grads", "opt_state", "temp") if any(r.get(p) for r in rows)]
    for part in parts:
        vals = np.array([float(r.get(part) or 0) / mib for r in rows])
        ax_m.bar(x, vals, 0.6, bottom=bottom, label=part)
        bottom += vals
    ax_m.set_xticks(x, names, rotation=20, ha="right")
    ax_m.set_ylabel("MiB per device")
    ax_m.set_title("memory per device")
    if parts:
        ax_m.legend()
    has_theory = any(r.get("comm_theory") is not None for r in rows)
    w = 0.38 if has_theory else 0.6
    ax_c.bar(x - (w / 2 if has_theory else 0), [float(r.get("comm") or 0) / mib for r in rows], w, label="compiled")
    if has_theory:
        ax_c.bar(x + w / 2, [float(r.get("comm_theory") or 0) / mib for r in rows], w, label="theory")
        ax_c.legend()
    ax_c.set_xticks(x, names, rotation=20, ha="right")
    ax_c.set_ylabel("MiB sent per device per step")
    ax_c.set_title("communication")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return str(path)
