"""``plan``: every mesh × microbatches × remat that fits a cluster, timed by a roofline, ranked.

Meshes are ``tensor × stage × fsdp × data`` = chips (tensor dividing the heads and staying inside
one slice / node; stage dividing the layers; fsdp > 1 means ZeRO-3 over data × fsdp, as this
project's rules shard; tensor > 1 always with sequence parallelism; ``fsdp=False`` leaves ZeRO out,
as Megatron-LM's 3D parallelism does). Microbatches: 1 without a pipeline, else P, 2P, 4P, 8P and
one row per microbatch (Megatron's b = 1), those that split each data-parallel rank's rows.
Remat: none, dots, full.

Step time is a roofline (Williams et al. 2009), each term per chip and step, overlapped:

* compute: training FLOPs / (chips · peak), stretched by the pipeline bubble 1/(1 − (P−1)/(M+P−1));
* HBM: weights read 3× per microbatch (forward, backward's two matmuls) in the activation dtype,
  the state read and written once by the optimizer, activations written and read once;
* communication: each collective's bytes over the bandwidth of the axis it runs on — the fast
  links (ICI / NVLink) while the axis and those inside it fit in one slice / node (``tensor``
  innermost, then fsdp, data, stage), else the slow network (DCN / InfiniBand).

The largest term names the bound. MFU = 6·N·tokens / (chips · peak · step time).

Two step times bound the truth: with **full overlap** (compute, HBM traffic and communication run
at once) the step takes the largest term, max(terms) — the roofline, the time the plan reports
and ranks by default (``overlap="full"``); with **no overlap** (each waits for the others) it
takes their sum, Σ terms, at most 3× the first. Both are in every plan (``step_time_bounds_s``,
``mfu_bounds``); ``overlap="none"`` reports and ranks by the pessimistic one instead. Real runs
sit between: XLA overlaps collectives it can schedule asynchronously (FSDP gathers, DP
reductions) but not a tensor-parallel all-reduce whose result the next matmul needs.
"""
from __future__ import annotations

import math

from parallel.plan.chips import Chip
from parallel.plan.cost import (Shape, collective_bytes, memory_per_chip, n_params, tensor_all_reduce_bytes,
                                train_flops)

REMATS = ("none", "dots", "full")
OVERLAPS = ("full", "none")
INNER_TO_OUTER = ("tensor", "fsdp", "data", "stage")
GiB = 2**30


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def axis_bandwidth(chip: Chip, mesh: dict, axis: str) -> float:
    """The fast links while ``axis`` and every axis inside it fit in one slice / node, else the slow network."""
    inner = math.prod(mesh.get(a, 1) for a in INNER_TO_OUTER[:INNER_TO_OUTER.index(axis) + 1])
    return chip.ici_bw if inner <= chip.slice_chips else chip.dcn_bw


def step_time(s: Shape, chip: Chip, chips: int, mesh: dict, *, global_batch: int, microbatches: int, remat: str,
              mem: dict, comm: dict, act_bytes: int = 2, overlap: str = "full") -> dict:
    """The roofline's three terms, the step time (``overlap``: "full" = max of the terms, "none" =
    their sum), both bounds, MFU and the bound with its reason."""
    if overlap not in OVERLAPS:
        raise ValueError(f"overlap={overlap!r}: allowed {', '.join(OVERLAPS)}")
    P, M = mesh.get("stage", 1), microbatches
    tokens = global_batch * s.seq
    bubble = (P - 1) / (M + P - 1)
    compute = train_flops(s, tokens, remat) / (chips * chip.flops) / (1 - bubble)
    psi = sum(v for k, v in mem.items() if k == "params") / 4 * act_bytes   # this chip's weights, 16-bit
    hbm = (3 * M * psi + 2 * (mem["params"] + mem["grads"] + mem["opt_state"]) + 2 * mem["activations"]
           * (M if P > 1 else 1)) / chip.hbm_bw
    dp_axis = "data" if mesh.get("data", 1) > 1 else "fsdp"
    on = {"all-reduce": None, "all-gather": dp_axis, "reduce-scatter": dp_axis, "collective-permute": "stage"}
    rows = global_batch // (mesh["data"] * mesh["fsdp"] * M)
    tp_part = tensor_all_reduce_bytes(s, mesh, microbatches=M, rows=rows, act_bytes=act_bytes, remat=remat)
    comm_t = {"tensor": tp_part / axis_bandwidth(chip, mesh, "tensor") if tp_part else 0.0,
              "data": (comm["all-reduce"] - tp_part) / axis_bandwidth(chip, mesh, dp_axis),
              "stage": comm["collective-permute"] / axis_bandwidth(chip, mesh, "stage")}
    for kind in ("all-gather", "reduce-scatter"):
        comm_t["data"] += comm[kind] / axis_bandwidth(chip, mesh, on[kind])
    communication = sum(comm_t.values())
    terms = {"compute": compute, "memory": hbm, "communication": communication}
    bound = max(terms, key=terms.get)
    bounds = {"full_overlap": terms[bound], "no_overlap": sum(terms.values())}
    step = bounds["full_overlap" if overlap == "full" else "no_overlap"]
    useful = 6 * n_params(s) * tokens / (chips * chip.flops)
    worst = max(comm_t, key=comm_t.get)
    reason = (f"{bound}-bound: compute {compute:.3g} s (bubble {bubble:.0%}), HBM {hbm:.3g} s, communication "
              f"{communication:.3g} s (most on {worst})")
    return {"step_time_s": step, "mfu": useful / step, "bound": bound, "reason": reason, "bubble": bubble,
            "terms_s": terms, "step_time_bounds_s": bounds,
            "mfu_bounds": {k: useful / t for k, t in bounds.items()}}


def plan(s: Shape, chip: Chip, chips: int, global_batch: int, *, param_bytes: int = 4, grad_bytes: int = 4,
         opt_bytes: int = 8, act_bytes: int = 2, schedule: str = "1f1b", hbm_fraction: float = 0.9,
         remats=REMATS, overlap: str = "full", fsdp: bool = True) -> dict:
    """{"plans": [...] best first, "rejected": [... with "reason"], "assumptions": {...}}; ``overlap``
    picks the step time reported and ranked by (see the module docstring)."""
    if overlap not in OVERLAPS:
        raise ValueError(f"overlap={overlap!r}: allowed {', '.join(OVERLAPS)}")
    plans, rejected = [], []
    budget = hbm_fraction * chip.hbm_bytes
    for tp in divisors(chips):
        if s.heads % tp or s.kv % tp and s.kv >= tp or tp > chip.slice_chips:
            continue
        for pp in divisors(chips // tp):
            if s.layers % pp:
                continue
            for fs in divisors(chips // (tp * pp)) if fsdp else [1]:
                mesh = {"data": chips // (tp * pp * fs), "fsdp": fs, "tensor": tp, "stage": pp}
                zero = 3 if fs > 1 else 0
                ranks = mesh["data"] * fs
                if global_batch % ranks:
                    rejected.append({"mesh": mesh, "reason": f"global batch {global_batch} does not split over "
                                                              f"data × fsdp = {ranks} ranks"})
                    continue
                per = global_batch // ranks
                micros = [1] if pp == 1 else sorted({m for m in (pp, 2 * pp, 4 * pp, 8 * pp, per)
                                                     if per % m == 0 and m >= pp})
                if not micros:
                    rejected.append({"mesh": mesh, "reason": f"{per} sequences per rank do not split into "
                                                              f">= {pp} microbatches"})
                for M in micros:
                    rows = per // M
                    for remat in remats:
                        mem = memory_per_chip(s, mesh, zero=zero, microbatches=M, schedule=schedule, remat=remat,
                                              rows=rows, param_bytes=param_bytes, grad_bytes=grad_bytes,
                                              opt_bytes=opt_bytes, act_bytes=act_bytes, sequence_parallel=tp > 1)
                        entry = {"mesh": mesh, "microbatches": M, "remat": remat, "zero_stage": zero,
                                 "sequence_parallel": tp > 1, "memory_per_chip_bytes": mem["total"], "memory": mem}
                        if mem["total"] > budget:
                            rejected.append({**entry, "reason": f"needs {mem['total'] / GiB:.1f} GiB per chip; "
                                                                f"{hbm_fraction:.0%} of the {chip.name}'s "
                                                                f"{chip.hbm_bytes / GiB:.1f} GiB is "
                                                                f"{budget / GiB:.1f} GiB"})
                            continue
                        comm = collective_bytes(s, mesh, zero=zero, microbatches=M, rows=rows,
                                                param_bytes=param_bytes, grad_bytes=grad_bytes, act_bytes=act_bytes,
                                                remat=remat)
                        entry.update(collective_bytes=comm, **step_time(
                            s, chip, chips, mesh, global_batch=global_batch, microbatches=M, remat=remat, mem=mem,
                            comm=comm, act_bytes=act_bytes, overlap=overlap))
                        plans.append(entry)
    sig = lambda x: float(f"{x:.9g}")   # noqa: E731  (near-ties are ties, whatever the time unit)
    plans.sort(key=lambda p: (sig(p["step_time_s"]), sig(p["terms_s"]["communication"]),
                              sig(p["memory_per_chip_bytes"]), tuple(p["mesh"].values()), p["microbatches"],
                              REMATS.index(p["remat"])))
    return {"plans": plans, "rejected": rejected,
            "assumptions": {"chip": chip.name, "source": chip.source, "chips": chips, "params": n_params(s),
                            "shape": s.__dict__, "global_batch": global_batch, "schedule": schedule, "fsdp": fsdp,
                            "bytes_per_param": {"params": param_bytes, "grads": grad_bytes, "optimizer": opt_bytes},
                            "activation_bytes": act_bytes, "hbm_fraction": hbm_fraction,
                            "overlap": OVERLAP_SAYS[overlap]}}


OVERLAP_SAYS = {"full": "step_time_s and mfu assume compute, HBM and communication overlap fully (the roofline, "
                        "max of the terms: a lower bound on the time); step_time_bounds_s.no_overlap is the sum",
                "none": "step_time_s and mfu assume nothing overlaps (the sum of the terms: an upper bound on the "
                        "time); step_time_bounds_s.full_overlap is the roofline's max"}
