"""``funnel.png``: the prepare report as a funnel, documents left after each stage, every bar
labelled with what that stage removed and why (the top quality and content reasons), and the
throughput in the title. Written by ``prepare`` beside ``report.json``."""
from __future__ import annotations

from pathlib import Path


def funnel_rows(report: dict) -> list[tuple[str, int, str]]:
    """[(stage, documents left after it, what it removed)] from a prepare report."""
    why = {"quality": report.get("quality_reasons", {}), "content": report.get("content_reasons", {})}
    out = []
    for row in report["stages"]:
        if "removed" not in row:
            continue
        note = f"−{row['removed']}" if row["removed"] else ""
        top = sorted(why.get(row["stage"], {}).items(), key=lambda kv: (-kv[1], kv[0]))[:3]
        if row["removed"] and top:
            note += " (" + ", ".join(f"{k} {v}" for k, v in top) + ")"
        out.append((row["stage"], row["docs_out"], note))
    return out


def plot_funnel(report: dict, path: str | Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = funnel_rows(report)
    fig, ax = plt.subplots(figsize=(7.5, 0.5 * len(rows) + 1.4))
    names, left = [r[0] for r in rows], [r[1] for r in rows]
    ax.barh(range(len(rows)), left, color="#4c72b0")
    top = max(left) or 1
    for k, (_, n, note) in enumerate(rows):
        ax.text(n + 0.01 * top, k, f"{n}  {note}", va="center", fontsize=8)
    ax.set_yticks(range(len(rows)), names)
    ax.invert_yaxis()
    ax.set_xlim(0, top * 1.6)
    ax.set_xlabel("documents left after the stage")
    tp = report.get("throughput", {})
    ax.set_title(f"lineage data prepare: {report['input_docs']} → {report['output_docs']} documents, "
                 f"{report['tokens']:,} tokens\n{tp.get('runner', '?')} runner, {tp.get('workers', '?')} worker(s), "
                 f"{tp.get('docs_per_s', float('nan')):,.0f} docs/s", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


__all__ = ["funnel_rows", "plot_funnel"]
