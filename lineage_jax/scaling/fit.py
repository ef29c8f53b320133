"""Chinchilla's Approaches 1 and 2 (Hoffmann et al. 2022, §3.1-3.2), the inputs they share, bootstrap.

- Approach 1: the envelope of training curves. Along each run's curve, C = 6·N·D(t); at every
  FLOP count the run of least loss gives N_opt(C); a line through log N_opt vs log C gives a.
- Approach 2: IsoFLOP profiles. At each budget, final losses against log N are fitted by a
  parabola; its minimum is N_opt(C) (D_opt = C / 6N_opt); lines through log N_opt and log D_opt
  against log C give a and b.

Approach 3 (the parametric Huber fit) is ``lineage_jax.scaling.parametric``. Degenerate input (one
budget, one size, a NaN loss) is a ``ScalingError``: one line saying what is missing.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Sequence

import numpy as np

from lineage_jax.config import UserError


class ScalingError(UserError, ValueError):
    """Input a scaling fit cannot use, in one line: what is wrong and what would do."""


@dataclasses.dataclass(frozen=True)
class Point:
    """One finished run: N parameters, D tokens, its final loss; ``budget`` its nominal C (if planned)."""
    params: float
    tokens: float
    loss: float
    budget: float | None = None
    run: str = ""

    @property
    def flops(self) -> float:
        return 6.0 * self.params * self.tokens


@dataclasses.dataclass(frozen=True)
class Curve:
    """One run's training curve: loss after each logged number of tokens."""
    params: float
    tokens: tuple[float, ...]
    loss: tuple[float, ...]
    run: str = ""


def check_points(points: Sequence[Point], where: str = "points") -> None:
    """ScalingError for no points, or the first one with a non-finite or non-positive value."""
    if not points:
        raise ScalingError(f"{where}: no points to fit")
    for i, p in enumerate(points):
        for key in ("params", "tokens", "loss"):
            v = getattr(p, key)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ScalingError(f"{where}: {p.run or f'row {i + 1}'} has {key}={v}; every params, tokens and "
                                   f"loss must be a positive finite number (drop or rerun that run)")


def line(x, y) -> tuple[float, float]:
    """Least-squares slope and intercept of y on x."""
    slope, intercept = np.polyfit(np.asarray(x, float), np.asarray(y, float), 1)
    return float(slope), float(intercept)


def budget_of(points: Sequence[Point], rel: float = 0.1) -> Callable[[Point], float]:
    """point -> the C of its budget group (``budgets``), for grouping by identity."""
    table = {id(p): c for c, group in budgets(points, rel) for p in group}
    return lambda p: table[id(p)]


def budgets(points: Sequence[Point], rel: float = 0.1) -> list[tuple[float, list[Point]]]:
    """Points grouped by FLOP budget: by their planned ``budget`` where given, else by C = 6ND
    within ``rel`` of each other; (C of the group, its points), smallest C first."""
    planned = [p for p in points if p.budget]
    groups: dict[float, list[Point]] = {}
    for p in planned:
        groups.setdefault(float(p.budget), []).append(p)
    for p in sorted((p for p in points if not p.budget), key=lambda p: p.flops):
        near = [c for c in groups if abs(math.log(p.flops / c)) < math.log1p(rel)]
        if near:
            groups[near[0]].append(p)
        else:
            groups[p.flops] = [p]
    return sorted(groups.items())


def approach2(points: Sequence[Point]) -> dict:
    """IsoFLOP parabolas: per budget L = c0 + c1·x + c2·x², x = ln N; N_opt = exp(-c1 / 2c2)."""
    check_points(points)
    rows, skipped = [], []
    for c, group in budgets(points):
        sizes = sorted({p.params for p in group})
        if len(sizes) < 3:
            skipped.append(f"C={c:.3g}: {len(sizes)} model size(s), a parabola needs 3")
            continue
        x = np.log([p.params for p in group])
        c2, c1, c0 = np.polyfit(x, [p.loss for p in group], 2)
        if c2 <= 0:
            skipped.append(f"C={c:.3g}: losses are not convex in log N (no minimum)")
            continue
        x_min = -c1 / (2 * c2)
        n_opt = float(math.exp(x_min))
        rows.append({"flops": float(c), "n_opt": n_opt, "d_opt": float(c) / (6 * n_opt),
                     "loss_min": float(c0 + c1 * x_min + c2 * x_min ** 2),
                     "interior": bool(x.min() < x_min < x.max()), "sizes": len(sizes)})
    if len(rows) < 2:
        why = "; ".join(skipped) or f"{len(rows)} budget(s)"
        raise ScalingError(f"approach 2 needs IsoFLOP minima at 2 or more FLOP budgets, got {len(rows)} ({why})")
    log_c = np.log([r["flops"] for r in rows])
    a, log_k = line(log_c, np.log([r["n_opt"] for r in rows]))
    b, _ = line(log_c, np.log([r["d_opt"] for r in rows]))
    return {"a": a, "b": b, "k": math.exp(log_k), "budgets": rows, "skipped_budgets": skipped}


def envelope(curves: Sequence[Curve], grid: int = 48) -> list[dict]:
    """Approach 1's envelope: at ``grid`` log-spaced FLOP counts, the run of least loss (its loss
    interpolated in log C along its curve; only runs whose curve spans that C compete)."""
    spans = []
    for cv in curves:
        c = np.log(6.0 * cv.params * np.asarray(cv.tokens, float))
        order = np.argsort(c)
        spans.append((cv, c[order], np.asarray(cv.loss, float)[order]))
    lo, hi = min(s[1][0] for s in spans), max(s[1][-1] for s in spans)
    out = []
    for log_c in np.linspace(lo, hi, grid):
        live = [(float(np.interp(log_c, c, loss)), cv) for cv, c, loss in spans if c[0] <= log_c <= c[-1]]
        if len(live) >= 2:
            loss, cv = min(live, key=lambda t: t[0])
            out.append({"flops": float(math.exp(log_c)), "loss": loss, "params": float(cv.params), "run": cv.run})
    return out


def approach1(curves: Sequence[Curve], grid: int = 48) -> dict:
    """Approach 1: N_opt(C) ∝ C^a through the envelope's points (Hoffmann et al. 2022, §3.1, Fig. 2)."""
    if not curves:
        raise ScalingError("approach 1 needs training curves (metrics.jsonl of each run); none given")
    for cv in curves:
        check_points([Point(cv.params, t, l, run=cv.run) for t, l in zip(cv.tokens, cv.loss)], "curves")
    sizes = {cv.params for cv in curves}
    if len(sizes) < 2:
        raise ScalingError(f"approach 1 needs runs of 2 or more model sizes; all {len(curves)} have "
                           f"N={sizes.pop():.3g}")
    env = envelope(curves, grid)
    # Where the smallest or largest model wins, the true optimum may lie beyond the sizes run: those
    # points are clamped, not measured, and would flatten the slope. Kept only if nothing else is left.
    inner = [e for e in env if min(sizes) < e["params"] < max(sizes)]
    if len({e["params"] for e in inner}) >= 2:
        env = inner
    winners = {e["params"] for e in env}
    if len(winners) < 2:
        raise ScalingError("approach 1: one model size is best at every FLOP count the curves share; "
                           "add runs whose curves overlap in FLOPs with different sizes winning")
    a, log_k = line(np.log([e["flops"] for e in env]), np.log([e["params"] for e in env]))
    return {"a": a, "b": 1.0 - a, "k": math.exp(log_k), "envelope": env, "points": len(env)}


def bootstrap(fit: Callable[[list], dict], items: Sequence, keys: Sequence[str], n: int = 100, seed: int = 0,
              level: float = 0.95, group: Callable | None = None) -> dict:
    """Percentile intervals of ``fit``'s ``keys`` over ``n`` resamples of ``items`` (runs) with
    replacement (within each ``group(item)`` when given: an IsoFLOP budget keeps its run count);
    a resample the fit refuses (too few budgets or sizes) is dropped and counted."""
    rng = np.random.default_rng(seed)
    strata: dict = {}
    for it in items:
        strata.setdefault(group(it) if group else None, []).append(it)
    draws: dict[str, list[float]] = {k: [] for k in keys}
    failed = 0
    for _ in range(n):
        sample = [s[i] for s in strata.values() for i in rng.integers(0, len(s), len(s))]
        try:
            res = fit(sample)
        except (ScalingError, np.linalg.LinAlgError):
            failed += 1
            continue
        for k in keys:
            draws[k].append(res[k])
    q = (1 - level) / 2
    out = {f"{k}_ci": [float(np.quantile(v, q)), float(np.quantile(v, 1 - q))] if v else None
           for k, v in draws.items()}
    out["bootstrap"] = {"resamples": n, "used": n - failed, "level": level}
    return out
