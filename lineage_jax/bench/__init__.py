"""``lineage bench``: how fast the train step runs and how close to the machine's peak.

Reports, for one config, measured side by side in one process (the machine is noisy, so
ratios within a run are what to compare):

- tokens/s of the compiled train step (median over repeated steps after warm-up), with
  the layer stack unrolled and scanned;
- model FLOPs per token in the PaLM form, 6N + 12·L·H·Q·T (Chowdhery et al. 2022, App. B),
  with N the parameters that take part in matmuls (all but the position table);
- MFU: achieved model FLOPs/s over the f32 matmul peak measured in this process;
- the compiled program's ``cost_analysis()`` FLOPs over the formula;
- compile time, and compile time at 2 vs 12 layers (the reason for the layer scan);
- tokens/s of a PyTorch eager peer of the same model and optimizer, when torch is installed.
"""
from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from lineage_jax.config import Config, ModelConfig
from lineage_jax.models.count import matmul_params   # the one tree walk, shared with lineage_jax.scaling


def palm_flops_per_token(m: ModelConfig, n_matmul_params: int) -> float:
    """6N + 12·L·H·Q·T: N matmul parameters (fwd 2N, bwd 4N) plus attention's QKᵀ and AV."""
    return 6.0 * n_matmul_params + 12.0 * m.layers * m.heads * (m.width // m.heads) * m.context


def matmul_peak_flops(n: int = 2048, reps: int = 10) -> float:
    """Best f32 matmul throughput (FLOP/s) of an n×n·n×n product on the default device."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    f = jax.jit(lambda x, y: x @ y)
    f(a, a).block_until_ready()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        f(a, a).block_until_ready()
        times.append(time.perf_counter() - t0)
    return 2.0 * n ** 3 / min(times)


def _cost_flops(compiled) -> float | None:
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    return float(cost["flops"]) if cost and "flops" in cost else None


def _jax_step(cfg: Config):
    """(one-step callable, compile seconds, the compiled step) for cfg on one device."""
    from lineage_jax.train.setup import build
    setup = build(cfg, devices=jax.devices()[:1])
    state = setup.init_state(jax.random.key(0))
    batch = setup.put_batch(np.random.default_rng(0).integers(
        0, cfg.model.vocab_size, (cfg.train.batch_size, cfg.model.context + 1)))
    holder = [state]

    def step() -> None:
        holder[0], metrics = setup.train_step(holder[0], batch)
        jax.block_until_ready(metrics["loss"])

    return step, setup.compile_seconds, setup.train_step


def _time(step: Callable[[], object], n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        step()
        out.append(time.perf_counter() - t0)
    return out


def compile_seconds(cfg: Config, layers: int, scan: bool) -> float:
    from lineage_jax.train.setup import build
    m = dataclasses.replace(cfg.model, layers=layers, scan_layers=scan)
    return build(dataclasses.replace(cfg, model=m), devices=jax.devices()[:1]).compile_seconds


def run_bench(cfg: Config, *, steps: int = 20, rounds: int = 3, warmup: int = 3, torch_peer: bool = True,
              depth_check: bool = True) -> dict:
    """Measure everything listed in the module docstring; return one JSON-able dict."""
    m, B, T = cfg.model, cfg.train.batch_size, cfg.model.context
    tokens = B * T
    variants = {"unrolled": dataclasses.replace(m, scan_layers=False), "scan": dataclasses.replace(m, scan_layers=True)}
    steppers, result = {}, {"config": {"arch": m.arch, "layers": m.layers, "width": m.width, "heads": m.heads, "context": T,
                                       "batch": B, "vocab": m.vocab_size, "dtype": m.dtype},
                            "devices": 1, "backend": jax.default_backend()}
    n_matmul = matmul_params(m)
    flops_tok = palm_flops_per_token(m, n_matmul)
    result["flops_per_token"] = flops_tok
    result["matmul_params"] = n_matmul
    for name, mv in variants.items():
        step, comp, compiled = _jax_step(dataclasses.replace(cfg, model=mv))
        cost = _cost_flops(compiled)
        steppers[name] = step
        # XLA's cost analysis counts a while loop's body once, so only the unrolled program's
        # FLOPs can be set against the formula.
        comparable = cost and not mv.scan_layers
        result[name] = {"compile_s": comp, "cost_analysis_flops": cost,
                        "cost_over_formula": cost / (flops_tok * tokens) if comparable else None}

    peer = None
    twin = m.arch == "gpt2" and not m.moe_every   # the PyTorch twin is GPT-2, dense
    if torch_peer and not twin:
        result["torch_eager"] = None
        result["torch_skipped"] = (f"the PyTorch twin is dense GPT-2; this model is {m.arch}"
                                   f"{' with MoE' if m.moe_every else ''}")
    elif torch_peer:
        from lineage_jax.bench import torch_peer as tp
        if tp.torch_available():
            peer = tp.make_torch_step(m, cfg.optim, B, threads=tp.torch_threads(), total_steps=cfg.train.steps)
            steppers["torch_eager"] = peer
            result["torch_threads"] = tp.torch_threads()
        else:
            result["torch_eager"] = None
            result["torch_skipped"] = "not installed (pip install -e '.[ref]')"

    for fn in steppers.values():       # warm-up (and the first-call allocations) outside the timings
        _time(fn, warmup)
    times = {k: [] for k in steppers}
    for _ in range(rounds):            # interleaved rounds: machine load hits every variant alike
        for k, fn in steppers.items():
            times[k] += _time(fn, steps)
    peak = matmul_peak_flops()
    result["matmul_peak_flops"] = peak
    for k, ts in times.items():
        med = statistics.median(ts)
        entry = result.setdefault(k, {})
        entry.update({"step_s": med, "tokens_per_s": tokens / med, "mfu": flops_tok * tokens / med / peak})
    if peer is not None:
        for k in variants:
            result[k]["vs_torch"] = result[k]["tokens_per_s"] / result["torch_eager"]["tokens_per_s"]
    if depth_check:
        result["compile_depth"] = {
            f"{mode}": {"layers_2_s": compile_seconds(cfg, 2, scan), "layers_12_s": compile_seconds(cfg, 12, scan)}
            for mode, scan in (("scan", True), ("unrolled", False))}
        for v in result["compile_depth"].values():
            v["ratio"] = v["layers_12_s"] / v["layers_2_s"]
    return result


def report(r: dict) -> str:
    """A human-readable table of ``run_bench``'s result."""
    c = r["config"]
    lines = [f"model: {c['arch']} {c['layers']}L width {c['width']} heads {c['heads']} context {c['context']} batch {c['batch']} "
             f"vocab {c['vocab']} {c['dtype']} on {r['devices']} {r['backend']} device",
             f"model FLOPs/token (6N + 12LHQT, N={r['matmul_params']:,}): {r['flops_per_token'] / 1e6:.2f} M;  "
             f"matmul peak {r['matmul_peak_flops'] / 1e9:.1f} GFLOP/s",
             "", f"{'variant':<12} {'tokens/s':>10} {'step ms':>9} {'MFU':>6} {'vs torch':>9} {'compile s':>10} {'cost/formula':>13}"]
    for k in ("unrolled", "scan", "torch_eager"):
        e = r.get(k)
        if not e:
            continue
        vs = f"{e['vs_torch']:.2f}x" if e.get("vs_torch") else "-"
        comp = f"{e['compile_s']:.2f}" if "compile_s" in e else "-"
        cost = f"{e['cost_over_formula']:.3f}" if e.get("cost_over_formula") else "-"
        lines.append(f"{k:<12} {e['tokens_per_s']:>10.0f} {1e3 * e['step_s']:>9.1f} {100 * e['mfu']:>5.1f}% "
                     f"{vs:>9} {comp:>10} {cost:>13}")
    if "torch_eager" in r and r["torch_eager"] is None:
        lines.append(f"torch_eager: skipped: {r.get('torch_skipped', 'not installed')}")
    if "compile_depth" in r:
        lines.append("")
        for mode, v in r["compile_depth"].items():
            lines.append(f"compile time {mode:<8}: 2 layers {v['layers_2_s']:.2f} s, 12 layers {v['layers_12_s']:.2f} s "
                         f"(x{v['ratio']:.2f})")
    return "\n".join(lines)
