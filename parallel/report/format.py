"""The shard report as text: ``format_report`` of ``build.build_report``'s dict, and ``fmt_bytes``."""
from __future__ import annotations

from typing import Any, Mapping, Sequence


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

    procs = report.get("processes")
    if procs:
        from parallel.report.processes import format_processes
        out += [""] + format_processes(procs, fmt_bytes)

    pipe = report.get("pipeline")
    if pipe:
        from parallel.pipeline.report import format_pipeline
        out += [""] + format_pipeline(pipe, pipe.get("compiled_permute_bytes"))

    warnings = report.get("warnings")
    if warnings:
        out += ["", "warnings:"] + [f"  - {w}" for w in warnings]
    return "\n".join(out) + "\n"
