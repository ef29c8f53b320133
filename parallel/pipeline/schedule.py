"""Pipeline schedules as data: the tick table every device of a ``stage`` axis follows.

A pipeline of P devices runs C = v·P model chunks (v "virtual stages" per device, chunk c on
device c mod P, as in Megatron's interleaved schedule, Narayanan et al. 2021, and MaxText's
circular pipeline) over M microbatches. Each forward F(c, m) and each backward B(c, m) takes
one tick; a device does at most one op per tick. F(c, m) needs F(c−1, m) done on an earlier
tick; B(c, m) needs B(c+1, m) (and, for the last chunk, F(c, m)) done on an earlier tick.

Every device keeps an ordered list of its ops; ``build`` simulates the clock (each device runs
the next op of its list as soon as its inputs have arrived) and records the table. Schedules:

- ``gpipe`` (Huang et al. 2019): every forward, then every backward (v = 1).
- ``1f1b`` (PipeDream-Flush, Narayanan et al. 2021): P−d−1 warm-up forwards on device d, then
  one forward / one backward alternately, then the remaining backwards (v = 1).
- ``circular``: Megatron's interleaved 1F1B over v chunks per device (M a multiple of P):
  microbatches go round the ring in groups of P, v times.

The table also assigns buffer slots: a chunk's input is stashed from its arrival until its
backward (which recomputes the chunk from it, as GPipe rematerialises), and a cotangent waits
from its arrival until its backward. ``x_slots`` is the peak number of stashed inputs on one
device: M for GPipe, at most P for 1F1B — the memory the two schedules differ by.

Idle ticks are counted from the table: ``bubble_fraction`` = idle / (ticks · P), which equals
(P − 1)/(v·M + P − 1) exactly (``bubble_formula``; v = 1 gives GPipe's (P − 1)/(M + P − 1)),
i.e. Megatron's bubble-to-work ratio (P − 1)/(v·M) (``bubble_ratio``).
"""
from __future__ import annotations

import dataclasses
from fractions import Fraction

import numpy as np

SCHEDULES = ("gpipe", "1f1b", "circular")
IDLE, FWD, BWD = 0, 1, 2


class ScheduleError(ValueError):
    """A pipeline shape the schedule cannot run, stated in one line."""


@dataclasses.dataclass(frozen=True)
class Schedule:
    """The tick table: each array is [ticks, P]. ``kind`` IDLE/FWD/BWD; ``chunk`` the device's local
    chunk index r (global chunk r·P + d); ``micro`` the microbatch; ``x_slot`` the stash slot the op
    reads (``x_slots`` = none: the first chunk embeds its tokens); ``g_slot`` the cotangent slot a
    backward reads (``g_slots`` = none: the last chunk starts from the loss); ``recv_x`` /
    ``recv_g`` the slot the activation / cotangent arriving at the end of this tick goes to (the
    spare last slot when nothing arrives)."""
    name: str
    stages: int
    microbatches: int
    virtual: int
    kind: np.ndarray
    chunk: np.ndarray
    micro: np.ndarray
    x_slot: np.ndarray
    g_slot: np.ndarray
    recv_x: np.ndarray
    recv_g: np.ndarray
    x_slots: int
    g_slots: int
    x_live: tuple = ()     # stash slots each device needs (x_slots is their maximum)

    @property
    def ticks(self) -> int:
        return self.kind.shape[0]

    def idle_ticks(self) -> np.ndarray:
        """Idle ticks per device."""
        return (self.kind == IDLE).sum(axis=0)

    def bubble_fraction(self) -> Fraction:
        """Idle device-ticks over all device-ticks, counted from the table."""
        return Fraction(int(self.idle_ticks().sum()), self.ticks * self.stages)

    def sends(self) -> dict[str, int]:
        """Point-to-point transfers per step: activations forward and cotangents backward (one
        microbatch's [b, T, D] each), counted from the table."""
        C = self.stages * self.virtual
        glob = self.chunk * self.stages + np.arange(self.stages)[None, :]
        fwd = int(((self.kind == FWD) & (glob < C - 1)).sum())
        bwd = int(((self.kind == BWD) & (glob > 0)).sum())
        return {"activations": fwd, "cotangents": bwd}


def bubble_formula(stages: int, microbatches: int, virtual: int = 1) -> Fraction:
    """(P − 1)/(v·M + P − 1): the idle share of a pipeline's device-time."""
    return Fraction(stages - 1, virtual * microbatches + stages - 1)


def bubble_ratio(stages: int, microbatches: int, virtual: int = 1) -> Fraction:
    """Megatron's bubble time over ideal time, (P − 1)/(v·M) (Narayanan et al. 2021, §2.2)."""
    return Fraction(stages - 1, virtual * microbatches)


def check(name: str, stages: int, microbatches: int, virtual: int = 1, layers: int | None = None) -> None:
    """One line for a pipeline shape that cannot run: before anything is built or compiled."""
    if name not in SCHEDULES:
        raise ScheduleError(f"parallel.pipeline_schedule={name!r}: allowed {', '.join(SCHEDULES)}")
    if stages < 1 or virtual < 1 or microbatches < 1:
        raise ScheduleError(f"pipeline: stages={stages}, virtual stages={virtual}, microbatches={microbatches} "
                            f"must all be >= 1")
    if name != "circular" and virtual != 1:
        raise ScheduleError(f"parallel.virtual_stages={virtual} needs parallel.pipeline_schedule=circular "
                            f"({name} runs one chunk per device)")
    if microbatches < stages:
        raise ScheduleError(f"parallel.microbatches={microbatches} is fewer than parallel.pipeline_stages={stages}: "
                            f"every stage must have a microbatch in flight; use at least {stages}")
    if name == "circular" and microbatches % stages:
        raise ScheduleError(f"parallel.microbatches={microbatches}: the circular schedule sends microbatches round "
                            f"the ring in groups of parallel.pipeline_stages={stages}; use a multiple of {stages}")
    if layers is not None and layers % (stages * virtual):
        raise ScheduleError(f"model.layers={layers} does not split into parallel.pipeline_stages × "
                            f"parallel.virtual_stages = {stages} × {virtual} = {stages * virtual} equal chunks; "
                            f"use a multiple of {stages * virtual}")


def op_order(name: str, stages: int, microbatches: int, virtual: int, device: int) -> list[tuple[int, int, int]]:
    """Device ``device``'s ops in order: (kind, global chunk, microbatch)."""
    P, M, v, d = stages, microbatches, virtual, device
    if name in ("gpipe", "1f1b"):
        fwd = [(FWD, d, m) for m in range(M)]
        bwd = [(BWD, d, m) for m in range(M)]
        warm = M if name == "gpipe" else min(P - d - 1, M)
    else:   # Megatron's interleaved order: groups of P microbatches, chunks ascending (backward: descending)
        def nth(k, backward):
            r = (k // P) % v
            return (BWD if backward else FWD, (v - 1 - r if backward else r) * P + d, (k // (P * v)) * P + k % P)
        fwd = [nth(k, False) for k in range(M * v)]
        bwd = [nth(k, True) for k in range(M * v)]
        warm = min((P - d - 1) * 2 + (v - 1) * P, M * v)
    order = fwd[:warm]
    for i in range(len(fwd) - warm):
        order += [fwd[warm + i], bwd[i]]
    return order + bwd[len(fwd) - warm:]


def _simulate(orders: list[list[tuple[int, int, int]]], C: int) -> dict[tuple[int, int, int], tuple[int, int]]:
    """Run the clock: tick of each op (and its device); each device runs its next op once ready."""
    done: dict[tuple[int, int, int], int] = {}
    where: dict[tuple[int, int, int], tuple[int, int]] = {}
    pos = [0] * len(orders)
    total = sum(len(o) for o in orders)
    t = 0
    while len(where) < total:
        ran = []
        for d, order in enumerate(orders):
            if pos[d] == len(order):
                continue
            kind, c, m = order[pos[d]]
            if kind == FWD:
                deps = [(FWD, c - 1, m)] if c > 0 else []
            else:
                deps = [(BWD, c + 1, m)] if c < C - 1 else [(FWD, c, m)]
            if all(done.get(dep, t) < t for dep in deps):
                ran.append((order[pos[d]], d))
                pos[d] += 1
        if not ran and t > 4 * total:
            raise ScheduleError("pipeline schedule deadlocked (an op order whose inputs never arrive)")
        for op, d in ran:
            done[op] = t
            where[op] = (t, d)
        t += 1
    return where


def _slots(intervals: list[tuple[int, int, tuple]]) -> tuple[dict, int]:
    """Greedy interval colouring: a slot written at the end of tick a and read at tick b is busy on
    (a, b]; reading at b frees it for a write at the end of b. Returns {key: slot}, slot count."""
    free_at: list[int] = []
    out = {}
    for a, b, key in sorted(intervals):
        for s, end in enumerate(free_at):
            if end <= a:
                free_at[s] = b
                out[key] = s
                break
        else:
            out[key] = len(free_at)
            free_at.append(b)
    return out, len(free_at)


def build(name: str, stages: int, microbatches: int, virtual: int = 1) -> Schedule:
    """The tick table of schedule ``name`` for P = ``stages``, M = ``microbatches``, v = ``virtual``."""
    check(name, stages, microbatches, virtual)
    P, M, v = stages, microbatches, virtual
    C = P * v
    where = _simulate([op_order(name, P, M, v, d) for d in range(P)], C)
    T = 1 + max(t for t, _ in where.values())
    # Stash (x) and cotangent (g) lifetimes, per receiving device.
    x_iv: list[list] = [[] for _ in range(P)]
    g_iv: list[list] = [[] for _ in range(P)]
    for m in range(M):
        for c in range(C):
            d = c % P
            if c > 0:
                x_iv[d].append((where[(FWD, c - 1, m)][0], where[(BWD, c, m)][0], (c, m)))
            if c < C - 1:
                g_iv[d].append((where[(BWD, c + 1, m)][0], where[(BWD, c, m)][0], (c, m)))
    xs, gs = zip(*[_slots(iv) for iv in x_iv]), zip(*[_slots(iv) for iv in g_iv])
    x_of, x_live = next(xs), next(xs)
    x_n = max(x_live, default=0)
    g_of, g_n = next(gs), max(next(gs), default=0)
    kind, chunk, micro = (np.zeros((T, P), np.int32) for _ in range(3))
    x_slot, g_slot = np.full((T, P), x_n, np.int32), np.full((T, P), g_n, np.int32)
    recv_x, recv_g = np.full((T, P), x_n, np.int32), np.full((T, P), g_n, np.int32)
    for (k, c, m), (t, d) in where.items():
        kind[t, d], chunk[t, d], micro[t, d] = k, c // P, m
        x_slot[t, d] = x_of[d].get((c, m), x_n)
        if k == BWD:
            g_slot[t, d] = g_of[d].get((c, m), g_n)
        if k == FWD and c < C - 1:            # the output arrives at chunk c+1's device at the end of t
            recv_x[t, (c + 1) % P] = x_of[(c + 1) % P][(c + 1, m)]
        if k == BWD and c > 0:                # the input cotangent arrives at chunk c−1's device
            recv_g[t, (c - 1) % P] = g_of[(c - 1) % P][(c - 1, m)]
    return Schedule(name, P, M, v, kind, chunk, micro, x_slot, g_slot, recv_x, recv_g, x_n, g_n, tuple(x_live))


def render(s: Schedule) -> str:
    """The table as text, one row per device: F3 / B3 (microbatch; ``'`` marks later chunks), . idle."""
    rows = []
    for d in range(s.stages):
        cells = []
        for t in range(s.ticks):
            k = s.kind[t, d]
            cells.append("." if k == IDLE else f"{'FB'[k - 1]}{s.micro[t, d]}{chr(39) * int(s.chunk[t, d])}")
        rows.append(f"stage {d}: " + " ".join(f"{c:<4}" for c in cells).rstrip())
    return "\n".join(rows)
