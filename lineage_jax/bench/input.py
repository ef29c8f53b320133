"""``lineage bench input``: what drawing the training input costs, and what the prefetch thread hides.

Two measurements, each order (``data.loader``: grain, numpy) side by side in one run:

- **draw**: milliseconds per host batch of ``Sampler.batch`` at several batch sizes, on a synthetic
  token stream of the config's context (median of ``--steps`` draws at fresh positions). Grain's
  ``MapDataset`` answers one index at a time; NumPy slices a cached permutation.
- **loop**: seconds per training step of the config's real jitted step on one device, drawing each
  batch in line after the previous step's metrics arrive (the loop before ``data/prefetch.py``) and
  through ``Prefetch`` (drawn on a thread while the step runs). Each step draws the largest batch of
  the draw table (4,096 rows in full mode) and feeds the step the config's batch, so a large draw is
  timed against a small CPU step. ``hidden`` is the share of the in-line draw that prefetching removed
  from the step time, (t_inline − t_prefetch) / t_draw: 1 when the draw is fully overlapped.

On a CPU host the thread shares the cores with XLA's own threads, so less than all of the draw can
hide; on an accelerator the host is idle while the device computes. Ratios, not timed tests: the
tests run ``--quick`` and check the shape of the result only.
"""
from __future__ import annotations

import statistics
import time

__all__ = ["run", "report"]

FULL = dict(windows=100_000, rows=(16, 64, 512, 4096), loop_steps=20, repeats=5)
QUICK = dict(windows=2_000, rows=(16,), loop_steps=4, repeats=2)


def _median_ms(fn, n: int) -> float:
    times = []
    for i in range(n):
        t = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def draw_times(windows: int, seq_len: int, rows: tuple[int, ...], n: int) -> dict:
    """{order: {rows: ms per draw}}: consecutive batches from a fresh position, as the loop draws them."""
    import numpy as np

    from lineage_jax.data import Sampler
    tokens = np.random.default_rng(0).integers(0, 256, windows * seq_len + 1, dtype=np.int32)
    out = {}
    for order in ("grain", "numpy"):
        s = Sampler(tokens, seq_len, seed=0, order=order)
        out[order] = {}
        for r in rows:
            start = 3 * windows + 17                     # inside the fourth epoch, its order set up first
            s.batch(start - 1, 1)
            out[order][r] = _median_ms(lambda i, r=r, start=start: s.batch(start + i * r, r), n)
    return out


def loop_times(setup, order: str, rows: int, steps: int, repeats: int = 3) -> dict:
    """Seconds per step, in-line draws vs ``Prefetch``, for ``setup``'s compiled step."""
    import jax
    import numpy as np

    from lineage_jax.data import Sampler
    from lineage_jax.data.prefetch import Prefetch

    cfg = setup.cfg
    B, T = cfg.train.batch_size, cfg.model.context
    tokens = np.random.default_rng(1).integers(0, cfg.model.vocab_size, 30 * max(rows, B) * T + 1, dtype=np.int32)
    sampler = Sampler(tokens, T, seed=0, order=order)
    draw = lambda k: sampler.batch(k * rows, rows)[:B]    # draw ``rows``, feed the step its B

    def run(batches) -> tuple[float, list[float]]:
        """Seconds per step from a fresh state, and the losses (the same batches give the same losses)."""
        state, losses = setup.init_state(jax.random.key(0)), []
        jax.block_until_ready(state)
        t = time.perf_counter()
        for host in batches:
            state, metrics = setup.train_step(state, setup.put_batch(host, B))
            losses.append(float(jax.device_get(metrics["loss"])))   # the loop's per-step check blocks here
        return (time.perf_counter() - t) / steps, losses

    run(draw(k) for k in range(2))                       # compile and warm up
    inline, ahead = [], []
    for _ in range(repeats):                             # taking turns: machine load falls on both alike
        inline.append(run(draw(k) for k in range(steps)))
        with Prefetch(draw, steps) as batches:
            ahead.append(run(batches))
    t_inline, t_ahead = (statistics.median(t for t, _ in runs) for runs in (inline, ahead))
    t_draw = _median_ms(draw, 11) / 1e3
    return {"order": order, "rows_drawn": rows, "draw_ms": 1e3 * t_draw, "inline_step_s": t_inline,
            "prefetch_step_s": t_ahead, "speedup": t_inline / t_ahead,
            "hidden": max(0.0, min(1.0, (t_inline - t_ahead) / t_draw)) if t_draw > 0 else 1.0,
            "same_losses": all(losses == inline[0][1] for _, losses in inline + ahead)}


def run(args) -> dict:
    """``lineage bench input [--quick] [--config NAME] [--steps N] [overrides]``."""
    import os

    import jax

    from lineage_jax.config import load_config
    from lineage_jax.train.setup import build

    quick = getattr(args, "quick", False)
    sizes = QUICK if quick else FULL
    cfg = load_config(args.config, list(getattr(args, "overrides", []) or []))
    rows = max(*sizes["rows"], cfg.train.batch_size)
    n = 5 if quick else max(11, getattr(args, "steps", 20))
    setup = build(cfg, devices=jax.devices()[:1])        # one compile, both orders
    return {"config": args.config, "context": cfg.model.context, "batch_size": cfg.train.batch_size,
            "windows": sizes["windows"], "cpus": os.cpu_count(),
            "draw_ms": draw_times(sizes["windows"], cfg.model.context, sizes["rows"], n),
            "loop": [loop_times(setup, order, rows, sizes["loop_steps"], sizes["repeats"]) for order in ("grain", "numpy")]}


def report(r: dict) -> str:
    rows = sorted(next(iter(r["draw_ms"].values())))
    lines = [f"input draw, {r['windows']:,} windows of {r['context']} tokens, {r['cpus']} CPUs (median ms per batch)",
             f"{'rows':>6} {'grain':>9} {'numpy':>9} {'grain/numpy':>12}"]
    for k in rows:
        g, p = r["draw_ms"]["grain"][k], r["draw_ms"]["numpy"][k]
        lines.append(f"{k:>6} {g:>9.3f} {p:>9.3f} {g / p:>11.1f}x")
    same = all(x["same_losses"] for x in r["loop"])
    lines += ["", f"training loop, config {r['config']} (batch {r['batch_size']} fed to the step), seconds per step",
              f"{'order':>6} {'rows drawn':>10} {'draw ms':>8} {'in line':>9} {'prefetch':>9} {'speed-up':>9} "
              f"{'draw hidden':>12}"]
    for x in r["loop"]:
        lines.append(f"{x['order']:>6} {x['rows_drawn']:>10} {x['draw_ms']:>8.2f} {x['inline_step_s']:>9.4f} "
                     f"{x['prefetch_step_s']:>9.4f} {x['speedup']:>8.2f}x {x['hidden']:>11.0%}")
    lines.append(f"same losses in line and prefetched: {same}")
    return "\n".join(lines)
