"""The fit's figures: IsoFLOP curves with their minima, the envelope of training curves, and the
fitted compute-optimal frontier extrapolated two decades past the largest budget."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from lineage_jax.scaling.fit import budgets


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def isoflop(result: dict, path: Path) -> None:
    plt = _plt()
    from lineage_jax.scaling.fit import Point
    points = [Point(p["params"], p["tokens"], p["loss"], p["budget"], p["run"]) for p in result["points"]]
    fig, ax = plt.subplots(figsize=(6, 4.5))
    minima = {r["flops"]: r for r in result.get("approach2", {}).get("budgets", [])}
    for i, (c, group) in enumerate(budgets(points)):
        color = f"C{i % 10}"
        group = sorted(group, key=lambda p: p.params)
        ax.plot([p.params for p in group], [p.loss for p in group], "o", color=color, label=f"C = {c:.2g}")
        if c in minima and len(group) >= 3:
            x = np.log([p.params for p in group])
            coef = np.polyfit(x, [p.loss for p in group], 2)
            xs = np.linspace(x.min() - 0.3, x.max() + 0.3, 100)
            ax.plot(np.exp(xs), np.polyval(coef, xs), "-", color=color, alpha=0.7)
            ax.plot(minima[c]["n_opt"], minima[c]["loss_min"], "*", color=color, markersize=14, markeredgecolor="k")
    ax.set(xscale="log", xlabel="parameters N", ylabel="final loss", title="IsoFLOP profiles (Approach 2)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def envelope(result: dict, curves, path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    sizes = sorted({cv.params for cv in curves})
    cmap = plt.get_cmap("viridis")
    for cv in curves:
        color = cmap(sizes.index(cv.params) / max(len(sizes) - 1, 1))
        ax.plot(6 * cv.params * np.asarray(cv.tokens), cv.loss, "-", color=color, alpha=0.6, lw=1)
    env = result.get("approach1", {}).get("envelope", [])
    if env:
        ax.plot([e["flops"] for e in env], [e["loss"] for e in env], "k.", label="envelope (least loss per FLOP)")
        ax.legend(fontsize=8)
    ax.set(xscale="log", xlabel="training FLOPs C = 6ND", ylabel="train loss",
           title="training curves (colour: size) and their envelope (Approach 1)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def frontier(result: dict, path: Path) -> None:
    plt = _plt()
    cs = [p["flops"] for p in result["points"]]
    grid = np.logspace(np.log10(min(cs)), np.log10(max(cs)) + 2, 60)
    fig, ax = plt.subplots(figsize=(6, 4.5))
    if "approach1" in result:
        r = result["approach1"]
        ax.plot(grid, r["k"] * grid ** r["a"], "-", label=f"approach 1: a = {r['a']:.2f}")
        ax.plot([e["flops"] for e in r["envelope"]], [e["params"] for e in r["envelope"]], ".", color="C0", alpha=0.5)
    if "approach2" in result:
        r = result["approach2"]
        ax.plot(grid, r["k"] * grid ** r["a"], "-", label=f"approach 2: a = {r['a']:.2f}")
        ax.plot([b["flops"] for b in r["budgets"]], [b["n_opt"] for b in r["budgets"]], "*", color="C1", markersize=12)
    if "approach3" in result and "G" in result["approach3"]:
        r = result["approach3"]
        ax.plot(grid, r["G"] * (grid / 6) ** r["a"], "-", label=f"approach 3: a = {r['a']:.2f}")
    ax.axvline(max(cs), color="grey", ls=":", lw=1)
    ax.set(xscale="log", yscale="log", xlabel="training FLOPs C", ylabel="compute-optimal N",
           title="fitted frontier N_opt(C), extrapolated two decades")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def draw_all(result: dict, curves, out: Path) -> list[str]:
    """The PNGs that the result supports, written into ``out``; their file names."""
    out.mkdir(parents=True, exist_ok=True)
    names = ["isoflop.png", "frontier.png"]
    isoflop(result, out / "isoflop.png")
    frontier(result, out / "frontier.png")
    if curves:
        envelope(result, curves, out / "envelope.png")
        names.append("envelope.png")
    return names
