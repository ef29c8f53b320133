"""``lineage bench gemm``: the train step's matrix products, each run alone, in XLA and in PyTorch.

The train-step benchmark (``lineage bench``) sets tokens/s against a PyTorch eager peer. This
target asks how much of the difference is the matmul kernels rather than the program around
them: it compiles the configured train step, reads every ``dot`` from the optimised HLO
(``parallel.report.hlo.dots_by_op``: the products XLA actually runs, after its own rewrites: the
backward's dx/dw products, the causal kernel's per-chunk batched products, the tied LM head; a
scanned layer's counted once per iteration), and times each distinct one alone:

- XLA: ``jax.jit(lax.dot_general)`` with the same operand shapes and dimension numbers;
- PyTorch (when installed): ``torch.einsum`` of the same contraction, on the same threads.

Reported per distinct product (shape, count in the step, FLOPs, ms and GFLOP/s on each side)
and summed over the step (time × count): the step's matmul time in XLA and in PyTorch kernels
and their ratio, next to the matmul-only share of the step's FLOPs. Operands are timed in the
default (row-major) layout; XLA may give a product a transposed operand layout in the step.
"""
from __future__ import annotations

import collections
import dataclasses
import math
import statistics

_NUMPY_DTYPE = {"f32": "float32", "bf16": "bfloat16", "f16": "float16", "f64": "float64"}


@dataclasses.dataclass(frozen=True)
class Dot:
    """One product: operand shapes and the dimension numbers of ``lax.dot_general``."""
    dtype: str
    lhs: tuple[int, ...]
    rhs: tuple[int, ...]
    lhs_contract: tuple[int, ...]
    rhs_contract: tuple[int, ...]
    lhs_batch: tuple[int, ...] = ()
    rhs_batch: tuple[int, ...] = ()

    @property
    def out_shape(self) -> tuple[int, ...]:
        free = lambda s, c, b: [d for i, d in enumerate(s) if i not in c and i not in b]
        return (tuple(self.lhs[i] for i in self.lhs_batch) + tuple(free(self.lhs, self.lhs_contract, self.lhs_batch))
                + tuple(free(self.rhs, self.rhs_contract, self.rhs_batch)))

    @property
    def flops(self) -> int:
        """2 · (output elements) · (contracted length)."""
        return 2 * math.prod(self.out_shape) * math.prod(self.lhs[i] for i in self.lhs_contract)

    @property
    def dimension_numbers(self):
        return ((self.lhs_contract, self.rhs_contract), (self.lhs_batch, self.rhs_batch))

    def einsum(self) -> str:
        """The same contraction as an einsum string (output: batch, lhs free, rhs free, as dot_general)."""
        letters = iter("abcdefghijklmnopqrstuvwxyz")
        lhs = [next(letters) for _ in self.lhs]
        rhs = [next(letters) for _ in self.rhs]
        for i, j in zip(self.lhs_batch + self.lhs_contract, self.rhs_batch + self.rhs_contract):
            rhs[j] = lhs[i]
        out = ([lhs[i] for i in self.lhs_batch]
               + [c for i, c in enumerate(lhs) if i not in self.lhs_batch + self.lhs_contract]
               + [c for j, c in enumerate(rhs) if j not in self.rhs_batch + self.rhs_contract])
        return f"{''.join(lhs)},{''.join(rhs)}->{''.join(out)}"

    def label(self) -> str:
        """'ab,bd->ad 2048x256 · 256x1024' (einsum, then operand shapes)."""
        return f"{self.einsum():<16} {'x'.join(map(str, self.lhs))} · {'x'.join(map(str, self.rhs))}"


def dots_in_hlo(text: str) -> collections.Counter:
    """Every ``dot`` of an optimized HLO module (``parallel.report.hlo.dots_by_op``), as ``Dot`` -> how
    many times it runs per execution (a scanned layer's dots times the loop's trip count)."""
    from parallel.report import hlo
    found: collections.Counter = collections.Counter()
    for d in hlo.dots_by_op(text):
        found[Dot(d["dtype"], d["lhs"], d["rhs"], d["lhs_contracting"], d["rhs_contracting"], d["lhs_batch"],
                  d["rhs_batch"])] += d["trip_count"] or 1
    return found


def _median_s(fn, reps: int) -> float:
    """Median seconds of ``reps`` calls after one untimed call (compilation, first allocations)."""
    from lineage_jax.bench import _time
    fn()
    return statistics.median(_time(fn, reps))


def xla_product(d: Dot):
    """A no-argument callable running d once in XLA (compiled, operands resident)."""
    import jax
    import jax.numpy as jnp
    from jax import lax
    a = jax.random.normal(jax.random.key(0), d.lhs, jnp.dtype(_NUMPY_DTYPE[d.dtype]))
    b = jax.random.normal(jax.random.key(1), d.rhs, jnp.dtype(_NUMPY_DTYPE[d.dtype]))
    f = jax.jit(lambda a, b: lax.dot_general(a, b, d.dimension_numbers))
    return lambda: jax.block_until_ready(f(a, b))


def torch_product(d: Dot):
    """A no-argument callable running the same contraction once in PyTorch (``torch.einsum``)."""
    import torch
    a = torch.randn(d.lhs, dtype=getattr(torch, _NUMPY_DTYPE[d.dtype]))
    b = torch.randn(d.rhs, dtype=a.dtype)
    spec = d.einsum()

    def run():
        with torch.no_grad():
            return torch.einsum(spec, a, b)
    return run


def _timed_rounds(fns: list, reps: int, rounds: int = 3) -> list[float]:
    """Per callable: the least of its per-round medians, the rounds interleaved over all callables
    (a burst of machine load then hits one round of everything, not every round of one product)."""
    best = [math.inf] * len(fns)
    for _ in range(rounds):
        for i, fn in enumerate(fns):
            best[i] = min(best[i], _median_s(fn, reps))
    return best


def measure(cfg, reps: int = 30, torch_peer: bool = True) -> dict:
    """Time the step, then each distinct product of it alone; sum time × count per side."""
    import jax

    from lineage_jax.bench import _cost_flops, _jax_step
    from lineage_jax.bench import torch_peer as tp
    step, _, compiled = _jax_step(cfg)
    step_flops = None if cfg.model.scan_layers else _cost_flops(compiled)   # cost analysis counts a loop body once
    step_s = _median_s(step, reps)
    dots = dots_in_hlo(compiled.as_text())
    use_torch = torch_peer and tp.torch_available()
    if use_torch:
        import torch
        torch.set_num_threads(tp.torch_threads())
    items = list(dots.items())
    xla = _timed_rounds([xla_product(d) for d, _ in items], reps)
    peer = _timed_rounds([torch_product(d) for d, _ in items], reps) if use_torch else [None] * len(items)
    rows = []
    for (d, n), x, t in zip(items, xla, peer):
        rows.append({"dot": d.label(), "einsum": d.einsum(), "lhs": list(d.lhs), "rhs": list(d.rhs), "count": n,
                     "flops": d.flops, "xla_s": x, **({"torch_s": t} if use_torch else {})})
    rows.sort(key=lambda r: -r["xla_s"] * r["count"])
    total = lambda key: sum(r[key] * r["count"] for r in rows)
    out = {"backend": jax.default_backend(), "dtype": cfg.model.dtype, "rows": rows, "step_s": step_s,
           "dot_flops": sum(r["flops"] * r["count"] for r in rows), "step_flops": step_flops,
           "xla_total_s": total("xla_s"), "torch_total_s": total("torch_s") if use_torch else None}
    out["torch_over_xla"] = out["torch_total_s"] / out["xla_total_s"] if use_torch else None
    return out


def plot(r: dict, path: str) -> None:
    """Per product: its time in the step (time alone × count), XLA beside PyTorch, largest first."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = r["rows"]
    y = list(range(len(rows)))[::-1]
    fig, ax = plt.subplots(figsize=(9, 0.28 * len(rows) + 1.6))
    h = 0.4 if r["torch_total_s"] is not None else 0.8
    ax.barh([v + h / 2 for v in y], [1e3 * x["xla_s"] * x["count"] for x in rows], h, label="XLA")
    if r["torch_total_s"] is not None:
        ax.barh([v - h / 2 for v in y], [1e3 * x["torch_s"] * x["count"] for x in rows], h, label="PyTorch")
    ax.set_yticks(y, [f"{x['dot']} ×{x['count']}" for x in rows], fontsize=7, family="monospace")
    ax.set_xlabel("ms per train step (each product timed alone × its count)")
    total = f"XLA {1e3 * r['xla_total_s']:.0f} ms" + (
        f", PyTorch {1e3 * r['torch_total_s']:.0f} ms" if r["torch_total_s"] is not None else "")
    ax.set_title(f"the train step's matrix products ({total}; step {1e3 * r['step_s']:.0f} ms)", fontsize=9)
    ax.legend()
    ax.grid(True, axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(args) -> dict:
    from lineage_jax.config import load_config
    cfg = load_config(args.config, args.overrides)
    result = measure(cfg, reps=5 if getattr(args, "quick", False) else 15,
                     torch_peer=not getattr(args, "no_torch", False))
    if getattr(args, "out", None):
        plot(result, args.out)
        result["plot"] = args.out
    return result


def report(r: dict) -> str:
    has_torch = r["torch_total_s"] is not None
    gf = lambda flops, s: f"{flops / s / 1e9:6.0f}"
    lines = [f"{'product (dot_general as einsum)':<58} {'count':>5} {'MFLOP':>7} {'XLA ms':>8} {'GF/s':>6}"
             + (f" {'torch ms':>9} {'GF/s':>6} {'torch/XLA':>9}" if has_torch else "")]
    for x in r["rows"]:
        line = (f"{x['dot']:<58} {x['count']:>5} {x['flops'] / 1e6:>7.0f} {1e3 * x['xla_s']:>8.3f} "
                f"{gf(x['flops'], x['xla_s'])}")
        if has_torch:
            line += f" {1e3 * x['torch_s']:>9.3f} {gf(x['flops'], x['torch_s'])} {x['torch_s'] / x['xla_s']:>9.2f}"
        lines.append(line)
    share = f" ({100 * r['dot_flops'] / r['step_flops']:.1f}% of the step's cost-analysis FLOPs)" if r["step_flops"] else ""
    lines += ["", f"the step's {sum(x['count'] for x in r['rows'])} products: {r['dot_flops'] / 1e9:.2f} GFLOP{share}",
              f"the train step: {1e3 * r['step_s']:.1f} ms; its products run alone, summed: XLA {1e3 * r['xla_total_s']:.1f} ms"
              + (f", PyTorch {1e3 * r['torch_total_s']:.1f} ms: XLA kernels at {r['torch_over_xla']:.2f}x "
                 "PyTorch's speed" if has_torch else " (PyTorch not installed: pip install -e '.[ref]')")]
    if r.get("plot"):
        lines.append(f"plot: {r['plot']}")
    return "\n".join(lines)
