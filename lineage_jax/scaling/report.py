"""All three approaches over one set of runs -> the ``scaling.json`` object; its inputs read from
a runs directory (a sweep's, or any run directories) or a CSV of ``params,tokens,loss``.

An approach the input cannot support is left out, with its reason under ``skipped``; only when no
approach can run is that an error (one line, naming every reason).
"""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Sequence

from lineage_jax.config import MissingFileError
from lineage_jax.scaling.fit import Curve, Point, ScalingError, approach1, approach2, bootstrap, budget_of, budgets
from lineage_jax.scaling.parametric import approach3

SWEEP_JSON = "sweep.json"


def read_points_csv(path: str | Path) -> list[Point]:
    """Rows of ``params,tokens,loss`` (an optional ``budget`` column groups IsoFLOP runs)."""
    p = Path(path)
    if not p.is_file():
        raise MissingFileError(f"--points={path}: no such file")
    with p.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = {"params", "tokens", "loss"} - set(reader.fieldnames or ())
        if missing:
            raise ScalingError(f"--points={path}: needs the columns params,tokens,loss "
                               f"(missing {', '.join(sorted(missing))})")
        points = []
        for i, row in enumerate(reader, start=2):
            try:
                vals = [float(row[k]) for k in ("params", "tokens", "loss")]
                budget = float(row["budget"]) if row.get("budget") not in (None, "") else None
            except (TypeError, ValueError):
                raise ScalingError(f"--points={path}: line {i} has a value that is not a number: {row}") from None
            points.append(Point(*vals, budget=budget, run=f"line {i}"))
    return points


def read_runs(runs_dir: str | Path) -> tuple[list[Point], list[Curve], list[str]]:
    """Each finished run directory under ``runs_dir`` -> its final point (eval loss where logged, else
    the last train loss) and its training curve; N is the matmul count (C = 6·N·D's N). Unfinished
    runs are listed, not used. A sweep's ``sweep.json`` supplies each run's planned budget."""
    from lineage_jax.config import load_config
    from lineage_jax.models.count import matmul_params
    from lineage_jax.train.loop import read_metrics
    root = Path(runs_dir)
    if not root.is_dir():
        raise MissingFileError(f"--runs={runs_dir}: no such directory")
    planned = {}
    if (root / SWEEP_JSON).is_file():
        planned = {r["name"]: r["budget"] for r in json.loads((root / SWEEP_JSON).read_text())["runs"]}
    points, curves, unfinished = [], [], []
    for d in sorted(p for p in root.iterdir() if (p / "config.yaml").is_file()):
        cfg = load_config(str(d / "config.yaml"), [])
        rows = read_metrics(d / "metrics.jsonl")
        if not rows or rows[-1]["step"] < cfg.train.steps:
            unfinished.append(d.name)
            continue
        n = float(matmul_params(cfg.model))
        per_step = cfg.train.batch_size * cfg.model.context
        last = rows[-1]
        loss = last.get("eval_loss", last["loss"])
        points.append(Point(n, float(last["step"] * per_step), float(loss), planned.get(d.name), d.name))
        curves.append(Curve(n, tuple(float(r["step"] * per_step) for r in rows), tuple(float(r["loss"]) for r in rows),
                            d.name))
    if not points:
        raise ScalingError(f"--runs={runs_dir}: no finished run directories there"
                           + (f" ({len(unfinished)} unfinished: rerun the sweep to finish them)" if unfinished else ""))
    return points, curves, unfinished


def _per_budget(law_n_opt, points: Sequence[Point]) -> list[dict]:
    return [{"flops": c, "n_opt": float(law_n_opt(c)), "d_opt": c / (6 * float(law_n_opt(c)))}
            for c, _ in budgets(points)]


def fit_all(points: Sequence[Point], curves: Sequence[Curve] = (), *, boot: int = 100, seed: int = 0) -> dict:
    """``scaling.json``: approach1 {a, k, ...}, approach2 {a, b, ...}, approach3 {E, A, B, alpha, beta, ...},
    each with bootstrap intervals (``*_ci``) over runs and its N_opt per budget; ``skipped`` says why
    an approach is absent."""
    out: dict = {"points": [{"params": p.params, "tokens": p.tokens, "loss": p.loss, "flops": p.flops,
                             "budget": p.budget, "run": p.run} for p in points], "skipped": {}}
    try:
        r1 = approach1(curves)
        by_run = {cv.run: cv for cv in curves}
        r1.update(bootstrap(lambda s: approach1([by_run[r] for r in s]), list(by_run), ["a"], n=boot, seed=seed))
        r1["n_opt"] = _per_budget(lambda c: r1["k"] * c ** r1["a"], points)
        out["approach1"] = r1
    except ScalingError as e:
        out["skipped"]["approach1"] = str(e)
    try:
        r2 = approach2(points)
        r2.update(bootstrap(approach2, list(points), ["a", "b"], n=boot, seed=seed, group=budget_of(points)))
        out["approach2"] = r2
    except ScalingError as e:
        out["skipped"]["approach2"] = str(e)
    try:
        r3 = approach3(points)
        keys = [k for k in ("E", "A", "B", "alpha", "beta", "a", "b") if k in r3]
        r3.update(bootstrap(lambda s: approach3(s, starts=1, init=r3["theta"]), list(points), keys,
                            n=boot, seed=seed, group=budget_of(points)))
        if "G" in r3:
            r3["n_opt"] = _per_budget(lambda c: r3["G"] * (c / 6) ** r3["a"], points)
        out["approach3"] = r3
    except ScalingError as e:
        out["skipped"]["approach3"] = str(e)
    if not any(k in out for k in ("approach1", "approach2", "approach3")):
        raise ScalingError("no approach can be fitted: " + "; ".join(f"{k}: {v}" for k, v in out["skipped"].items()))
    return out


def summary(result: dict) -> list[str]:
    """One line per approach: its exponents with intervals, or why it was skipped."""
    def ci(r, k):
        v = r.get(f"{k}_ci")
        return f" [{v[0]:.3f}, {v[1]:.3f}]" if v else ""
    lines = []
    if "approach1" in result:
        r = result["approach1"]
        lines.append(f"approach 1 (envelope):  a = {r['a']:.3f}{ci(r, 'a')}  ({r['points']} envelope points)")
    if "approach2" in result:
        r = result["approach2"]
        inner = sum(b["interior"] for b in r["budgets"])
        lines.append(f"approach 2 (IsoFLOP):   a = {r['a']:.3f}{ci(r, 'a')}, b = {r['b']:.3f}{ci(r, 'b')}  "
                     f"({inner} of {len(r['budgets'])} minima interior)")
    if "approach3" in result:
        r = result["approach3"]
        consts = ", ".join(f"{k} = {r[k]:.4g}{ci(r, k)}" for k in ("E", "A", "B", "alpha", "beta"))
        alloc = f"; a = {r['a']:.3f}, b = {r['b']:.3f}" if "a" in r else ""
        lines.append(f"approach 3 (parametric): {consts}{alloc}")
    for k, why in result["skipped"].items():
        lines.append(f"{k}: skipped: {why}")
    return lines

