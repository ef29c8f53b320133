"""A pipeline's numbers for ``lineage shard-report``: the bubble counted from the tick table beside
its formula, the stash each stage holds, and the point-to-point bytes the executor sends.

The executor (``lineage_jax/train/pipeline.py``) permutes one activation buffer forward and one
cotangent buffer backward every tick, busy or idle (a static program), so the compiled
collective-permutes move 2 · ticks · (b·T·D bytes) per device per step; of these the schedule's
useful transfers are M·(C − 1) each way over all P devices.
"""
from __future__ import annotations

from parallel.pipeline.schedule import Schedule, bubble_formula, bubble_ratio


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
