"""Strategies side by side, as a PNG: memory per device and bytes sent per step."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np


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
