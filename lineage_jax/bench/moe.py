"""``lineage bench moe``: a mixture-of-experts feed-forward against the dense one it replaces.

The MoE layer (``lineage_jax.moe.MoEFeedForward``: E experts of width F, top-k routing, each
sequence one routing group) is compared with a dense feed-forward of width k·F, which spends
the same *active* FLOPs per token (a token meets k experts of width F). Both are compiled for
forward + backward (the training cost) and for forward alone, side by side in one process:

- time ratio MoE / dense (median of repeated calls; the target on CPU is ≤ 1.5);
- compiled FLOPs (``cost_analysis``) over the dense-active FLOPs. With capacity C = ⌈cf·S/E⌉
  per group of S tokens the experts multiply E·C = cf·S rows: cf/k of dense-active, plus
  routing and dispatch; a dropless layer multiplies the k·S assigned rows: 1 plus routing.
  The target is ≤ cf + 0.1. Rows are reported for both dispatch backends (``capacity``
  GShard gather/scatter, ``dropless`` sort + ``ragged_dot``) and for a capacity of
  ``k·cf`` (every assignment gets cf slots: the setting in which nothing should drop).
"""
from __future__ import annotations

import statistics
import time

import flax.linen as nn
import jax
import jax.numpy as jnp

from lineage_jax.bench import _cost_flops
from lineage_jax.moe import MoEFeedForward

FULL = dict(batch=8, seq=256, width=256, experts=8, k=2, mlp=512, capacity_factor=1.25)
QUICK = dict(batch=4, seq=64, width=64, experts=8, k=2, mlp=128, capacity_factor=1.25)


class DenseFF(nn.Module):
    """act(x·W_in)·W_out at width F, the same contractions as one expert's."""
    mlp_dim: int

    @nn.compact
    def __call__(self, x):
        D = x.shape[-1]
        init = nn.initializers.normal(0.02)
        w_in = self.param("w_in", init, (D, self.mlp_dim))
        w_out = self.param("w_out", init, (self.mlp_dim, D))
        return jnp.einsum("gsf,fd->gsd", jax.nn.gelu(jnp.einsum("gsd,df->gsf", x, w_in)), w_out)


def _timed(fn, args, steps: int) -> float:
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _programs(module, x, moe: bool):
    params = module.init(jax.random.key(1), x)["params"]
    out = (lambda p, x: module.apply({"params": p}, x)[0]) if moe else (lambda p, x: module.apply({"params": p}, x))
    loss = lambda p, x: jnp.mean(jnp.square(out(p, x)))
    fwd = jax.jit(out).lower(params, x).compile()
    train = jax.jit(jax.value_and_grad(loss, argnums=(0, 1))).lower(params, x).compile()
    return params, fwd, train


def measure(batch: int, seq: int, width: int, experts: int, k: int, mlp: int, capacity_factor: float,
            steps: int = 10) -> dict:
    x = jax.random.normal(jax.random.key(0), (batch, seq, width), jnp.float32)
    dense = DenseFF(k * mlp)
    p, fwd, train = _programs(dense, x, moe=False)
    base = {"fwd_s": _timed(fwd, (p, x), steps), "train_s": _timed(train, (p, x), steps),
            "fwd_flops": _cost_flops(fwd), "train_flops": _cost_flops(train)}
    rows = []
    for name, backend, cf in (("capacity", "capacity", capacity_factor),
                              (f"capacity cf={k * capacity_factor:g}", "capacity", k * capacity_factor),
                              ("dropless", "dropless", capacity_factor)):
        layer = MoEFeedForward(experts, mlp, router="gshard", backend=backend, k=k, capacity_factor=cf,
                               grouped=True)
        p, fwd, train = _programs(layer, x, moe=True)
        dropped = float(layer.apply({"params": p}, x)[1]["dropped_fraction"])
        r = {"name": name, "backend": backend, "capacity_factor": cf, "dropped_fraction": dropped,
             "fwd_s": _timed(fwd, (p, x), steps), "train_s": _timed(train, (p, x), steps),
             "fwd_flops": _cost_flops(fwd), "train_flops": _cost_flops(train)}
        r["train_time_ratio"] = r["train_s"] / base["train_s"]
        r["fwd_time_ratio"] = r["fwd_s"] / base["fwd_s"]
        r["fwd_flops_ratio"] = (r["fwd_flops"] / base["fwd_flops"]) if base["fwd_flops"] else None
        r["train_flops_ratio"] = (r["train_flops"] / base["train_flops"]) if base["train_flops"] else None
        rows.append(r)
    return {"shape": dict(batch=batch, seq=seq, width=width, experts=experts, k=k, mlp=mlp,
                          capacity_factor=capacity_factor),
            "dense": base, "moe": rows,
            "targets": {"time_ratio_max": 1.5, "flops_ratio_max": capacity_factor + 0.1}}


def run(args) -> dict:
    shape = QUICK if getattr(args, "quick", False) else FULL
    return measure(**shape, steps=max(3, min(getattr(args, "steps", 10) or 10, 30)))


def report(result: dict) -> str:
    s, d = result["shape"], result["dense"]
    lines = [f"MoE top-{s['k']} of {s['experts']} experts (F={s['mlp']}) vs dense F={s['k'] * s['mlp']} "
             f"(same active FLOPs), x [{s['batch']}, {s['seq']}, {s['width']}], each sequence one group",
             f"dense: fwd+bwd {d['train_s'] * 1e3:.2f} ms, fwd {d['fwd_s'] * 1e3:.2f} ms",
             f"{'backend':<18} {'dropped':>8} {'fwd+bwd':>9} {'time×':>6} {'fwd×':>6} {'FLOPs×':>7}  "
             f"(targets: time× ≤ {result['targets']['time_ratio_max']}, FLOPs× ≤ "
             f"{result['targets']['flops_ratio_max']:.2f})"]
    for r in result["moe"]:
        fl = f"{r['train_flops_ratio']:.3f}" if r["train_flops_ratio"] is not None else "-"
        lines.append(f"{r['name']:<18} {r['dropped_fraction']:>8.3f} {r['train_s'] * 1e3:>7.2f}ms "
                     f"{r['train_time_ratio']:>6.2f} {r['fwd_time_ratio']:>6.2f} {fl:>7}")
    return "\n".join(lines)
