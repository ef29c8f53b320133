"""A pipeline's numbers for ``lineage shard-report``: the bubble counted from the tick table beside
its formula, the stash each stage holds, and the point-to-point bytes the executor sends.

The executor (``lineage_jax/train/pipeline.py``) permutes one activation buffer forward and one
cotangent buffer backward every tick, busy or idle (a static program), so the compiled
collective-permutes move 2 · ticks · (b·T·D bytes) per device per step; of these the schedule's
useful transfers are M·(C − 1) each way over all P devices.

The compiled program's own execution counts (XLA's trip counts) would charge every collective
inside the tick loop's ``lax.switch`` on every tick; ``executed_sent_bytes`` counts what runs:
the forward branch on the M·v forward ticks of a device, the backward branch on its M·v backward
ticks, and the first / last chunk's ``lax.cond`` (embedding, head and loss) on 1 of the C chunks,
averaged over the devices.
"""
from __future__ import annotations

from parallel.pipeline.schedule import BWD, FWD, IDLE, Schedule, bubble_formula, bubble_ratio


def pipeline_report(s: Schedule, activation_bytes: int) -> dict:
    """Plain data: ``activation_bytes`` is one microbatch's [b, T, D] on one device."""
    sends = s.sends()
    return {"schedule": s.name, "stages": s.stages, "microbatches": s.microbatches, "virtual_stages": s.virtual,
            "ticks": s.ticks, "idle_ticks_per_stage": [int(i) for i in s.idle_ticks()],
            "bubble_fraction": float(s.bubble_fraction()), "bubble_exact": str(s.bubble_fraction()),
            "bubble_formula": str(bubble_formula(s.stages, s.microbatches, s.virtual)),
            "bubble_ratio": str(bubble_ratio(s.stages, s.microbatches, s.virtual)),
            "stash_slots_per_stage": list(s.x_live), "activation_bytes": activation_bytes,
            "sends": sends, "useful_bytes_per_device": (sends["activations"] + sends["cotangents"])
            * activation_bytes // s.stages,
            "permute_bytes_per_device": 2 * s.ticks * activation_bytes}


def format_pipeline(p: dict, compiled_permute_bytes: int | None = None) -> list[str]:
    """Text lines of ``pipeline_report``'s dict (and the compiled collective-permute bytes per step)."""
    from parallel.report.format import fmt_bytes
    lines = [f"pipeline: {p['schedule']}, P={p['stages']} stages × v={p['virtual_stages']}, "
             f"M={p['microbatches']} microbatches, {p['ticks']} ticks",
             f"  bubble: {p['bubble_exact']} of device-ticks idle (formula (P−1)/(vM+P−1) = {p['bubble_formula']}; "
             f"idle/busy {p['bubble_ratio']}); idle ticks per stage {p['idle_ticks_per_stage']}",
             f"  stash: chunk inputs held per stage {p['stash_slots_per_stage']} × {fmt_bytes(p['activation_bytes'])}",
             f"  sends/step: {p['sends']['activations']} activations + {p['sends']['cotangents']} cotangents "
             f"(useful {fmt_bytes(p['useful_bytes_per_device'])}/device); permuted every tick: "
             f"{fmt_bytes(p['permute_bytes_per_device'])}/device (formula 2·ticks·b·T·D)"
             + (f", compiled {fmt_bytes(compiled_permute_bytes)}" if compiled_permute_bytes is not None else "")]
    return lines


def op_executions(path: tuple, s: Schedule) -> float | None:
    """How many times per step, on average over the devices, an instruction runs whose enclosing
    frames are ``path`` (``parallel.report.hlo.call_paths``); None outside the tick loop (the
    ordinary trip counts apply). The tick loop is the loop of ``s.ticks`` iterations whose body
    switches three ways (idle, forward, backward); a two-way branch inside it is the first / last
    chunk's ``lax.cond``: its true branch runs for 1 of the C chunks."""
    C = s.stages * s.virtual
    per_kind = {IDLE: s.ticks - 2 * s.microbatches * s.virtual, FWD: s.microbatches * s.virtual,
                BWD: s.microbatches * s.virtual}
    for i, frame in enumerate(path[:-1]):
        nxt = path[i + 1]
        if frame == ("while", s.ticks) and nxt[0] == "branch" and nxt[2] == 3:
            n = 1.0
            for f in path[:i]:
                n *= f[1] if f[0] == "while" and f[1] else 1
            n *= per_kind[nxt[1]]
            for f in path[i + 2:]:
                if f[0] == "while":
                    n *= f[1] or 1
                elif f[2] == 2:
                    n *= 1 / C if f[1] == 1 else (C - 1) / C
            return n
    return None


def executed_sent_bytes(ops: list[dict], s: Schedule) -> dict[str, float]:
    """Bytes each device sends per step by collective kind, averaged over the devices: entries of
    ``parallel.report.collectives.collectives_by_op`` counted by ``op_executions`` inside the tick
    loop and by their trip counts elsewhere."""
    out: dict[str, float] = {}
    for op in ops:
        n = op_executions(op.get("path", ()), s)
        if n is None:
            n = (op.get("trip_count") or 1) if op["in_loop"] else 1
        out[op["kind"]] = out.get(op["kind"], 0.0) + op["sent_bytes"] * n
    return out
