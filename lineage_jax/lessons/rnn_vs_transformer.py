"""Lesson: recurrence against self-attention as the sequence grows (Vaswani et al. 2017, §4 and Table 1).

Table 1: a recurrent layer needs O(n) sequential operations and O(n·d²) work, a self-attention layer O(1)
sequential operations and O(n²·d) work. Here, at matched parameter counts (3 LSTM layers of width d ≈
2 post-LN Transformer encoder layers of width d with d_ff = 4d: 24·d² each), one training step (forward,
backward, SGD update) on a per-token task, at n = 64 … 1024:

    sequential steps   counted in the traced program: the iterations of every ``lax.scan`` (the LSTM's n per
                       layer; the Transformer has none, its layers run one after another: ``layers`` steps)
    step time          median wall time of the jitted step (timings are reported, never asserted in tests)

The claim measured: the LSTM/Transformer step-time ratio grows with n. It is a claim about parallel hardware:
on a device that runs the n positions at once the recurrent chain of n steps dominates. On a few CPU cores the
Transformer's n²·d work is not free, so the ratio may not grow; the rows say which happened.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax.core import meta

from lineage_jax.config import ConfigError, TransformerConfig
from lineage_jax.foundations import lstm
from lineage_jax.lessons import harness
from lineage_jax.models.transformer import Transformer


def lstm_init(key, vocab: int, d: int, layers: int) -> dict:
    k = jax.random.split(key, layers + 1)
    return {"embed": jax.random.normal(k[0], (vocab, d)) * d ** -0.5,
            "layers": [lstm.init(k[i + 1], d, d, forget_bias=1.0) for i in range(layers)]}


def lstm_logits(p: dict, tokens: jax.Array) -> jax.Array:
    """tokens [B, n] -> logits [B, n, V]: stacked LSTMs, each a ``lax.scan`` over the n positions."""
    x = p["embed"][tokens]
    for layer in p["layers"]:
        _, x = lstm.scan(layer, x)
    return x @ p["embed"].T


def transformer(d: int, heads: int, layers: int, vocab: int, n: int) -> Transformer:
    return Transformer(TransformerConfig(vocab_size=vocab, d_model=d, heads=heads, d_ff=4 * d, encoder_layers=layers,
                                         decoder_layers=1, dropout=0.0, max_len=n, pad_id=-1))


def transformer_logits(model: Transformer, p, tokens: jax.Array) -> jax.Array:
    """tokens [B, n] -> logits [B, n, V]: the encoder stack (every position at once), the shared embedding out."""
    memory = model.apply({"params": p}, tokens, method=Transformer.encode)
    return memory @ p["embedding"].T


def scan_iterations(fn, *args) -> int:
    """Sequential steps in ``fn``'s traced program: the sum of every ``scan``'s length (nested ones multiplied)."""
    def count(jaxpr) -> int:
        total = 0
        for eqn in jaxpr.eqns:
            inner = [v for v in eqn.params.values() if hasattr(v, "jaxpr") or hasattr(v, "eqns")]
            sub = sum(count(getattr(v, "jaxpr", v)) for v in inner)
            total += eqn.params["length"] * max(sub, 1) if eqn.primitive.name == "scan" else sub
        return total
    return count(jax.make_jaxpr(fn)(*args).jaxpr)


def make_step(logits_fn, lr: float = 0.1):
    """A jitted SGD training step on a per-token label: (params, tokens, labels) -> (params, loss)."""
    def loss(p, tokens, labels):
        logp = jax.nn.log_softmax(logits_fn(p, tokens))
        return -jnp.take_along_axis(logp, labels[..., None], -1).mean()

    @jax.jit
    def step(p, tokens, labels):
        value, grads = jax.value_and_grad(loss)(p, tokens, labels)
        return jax.tree.map(lambda w, g: w - lr * g, p, grads), value
    return step


def time_step(step, p, tokens, labels, repeats: int) -> float:
    """Median seconds of one step after a compile-and-warm-up call."""
    jax.block_until_ready(step(p, tokens, labels))
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(step(p, tokens, labels))
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def count_params(p) -> int:
    return int(sum(math.prod(x.shape) for x in jax.tree.leaves(p)))


@dataclasses.dataclass(frozen=True)
class Config:
    seed: int = 0
    lengths: str = "64,128,256,512,1024"
    d: int = 64
    heads: int = 4
    layers: int = 2               # Transformer layers; the LSTM gets 3·layers/2 (matched at 24·d² per pair)
    batch: int = 8
    vocab: int = 32
    repeats: int = 5

    def __post_init__(self):
        for f in ("d", "heads", "layers", "batch", "vocab", "repeats"):
            if getattr(self, f) < 1:
                raise ConfigError(f"{f}={getattr(self, f)}: must be at least 1")
        if self.layers % 2:
            raise ConfigError(f"layers={self.layers}: must be even (the LSTM gets 3·layers/2 to match parameters)")
        if self.d % (2 * self.heads):
            raise ConfigError(f"d={self.d}: must be even and divisible by heads={self.heads}")
        try:
            ns = self.length_list
        except ValueError:
            ns = []
        if len(ns) < 2 or any(n < 2 for n in ns) or ns != sorted(set(ns)):
            raise ConfigError(f"lengths={self.lengths}: at least two increasing integers >= 2, comma-separated")

    @property
    def length_list(self) -> list[int]:
        return [int(s) for s in self.lengths.split(",")]


# `--quick`: two short lengths, three timings each.
QUICK = dict(lengths="16,64", d=32, repeats=3)


def ratios(rows: list[dict]) -> dict[int, float]:
    """n -> LSTM step time / Transformer step time."""
    t = {(r["model"], r["n"]): r["step_ms"] for r in rows}
    return {n: t[("lstm", n)] / t[("transformer", n)] for n in sorted({r["n"] for r in rows})}


def supports(rows: list[dict]) -> bool:
    """The LSTM's sequential steps grow in proportion to n while the Transformer's stay constant, and the
    step-time ratio at the longest n is above the ratio at the shortest."""
    seq = {(r["model"], r["n"]): r["sequential_steps"] for r in rows}
    ns = sorted({r["n"] for r in rows})
    steps_ok = (len({seq[("lstm", n)] / n for n in ns}) == 1
                and len({seq[("transformer", n)] for n in ns}) == 1)
    rs = ratios(rows)
    return steps_ok and rs[ns[-1]] > rs[ns[0]]


def run(cfg: Config, out_dir: str | Path | None = None, progress: bool = True) -> harness.LessonResult:
    t0 = time.perf_counter()
    lstm_layers = 3 * cfg.layers // 2
    rows = []
    from tqdm.auto import tqdm
    for n in tqdm(cfg.length_list, disable=not progress, desc="rnn vs transformer"):
        kt, kl, kp = jax.random.split(jax.random.fold_in(jax.random.key(cfg.seed), n), 3)
        tokens = jax.random.randint(kt, (cfg.batch, n), 0, cfg.vocab)
        labels = jnp.roll(tokens, 1, axis=1)          # a per-token task: the previous token
        model = transformer(cfg.d, cfg.heads, cfg.layers, cfg.vocab, n)
        tp = meta.unbox(model.init(kp, tokens[:1], method=Transformer.encode)["params"])
        lp = lstm_init(kp, cfg.vocab, cfg.d, lstm_layers)
        for name, p, fn, depth in (("lstm", lp, lstm_logits, 0),
                                   ("transformer", tp, functools.partial(transformer_logits, model), cfg.layers)):
            iters = scan_iterations(fn, p, tokens)
            rows.append({"model": name, "n": n, "params": count_params(p), "scan_iterations": iters,
                         "sequential_steps": iters or depth,
                         "step_ms": 1e3 * time_step(make_step(fn), p, tokens, labels, cfg.repeats)})
    rs = ratios(rows)
    for r in rows:
        if r["model"] == "lstm":
            r["time_ratio"] = rs[r["n"]]
    figures = [] if out_dir is None else [harness.figure(
        out_dir, "rnn_vs_transformer.png", functools.partial(plot, rows=rows), panels=2,
        title=f"LSTM ({lstm_layers} layers) vs Transformer encoder ({cfg.layers} layers), d = {cfg.d}, "
              f"batch {cfg.batch} on {jax.devices()[0].platform}")]
    return harness.result("rnn_vs_transformer", rows, supports, figures, ratios={str(k): v for k, v in rs.items()},
                          device=str(jax.devices()[0].device_kind), cpu_threads=_threads(),
                          seconds=round(time.perf_counter() - t0, 1), config=dataclasses.asdict(cfg))


def _threads() -> int:
    import os
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def report(res: harness.LessonResult) -> list[str]:
    r = res.details["ratios"]
    return [f"on {res.details['device']} ({res.details['cpu_threads']} CPU threads): LSTM / Transformer step time "
            + ", ".join(f"n={n}: {v:.2f}x" for n, v in r.items())]


def plot(axes, rows) -> None:
    a, b = axes
    for name in ("lstm", "transformer"):
        rs = [r for r in rows if r["model"] == name]
        a.plot([r["n"] for r in rs], [r["step_ms"] for r in rs], "o-", label=f"{name} ({rs[0]['params']:,} params)")
        b.plot([r["n"] for r in rs], [r["sequential_steps"] for r in rs], "o-", label=name)
    for ax, label in ((a, "training step (ms, median)"), (b, "sequential steps")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length n")
        ax.set_ylabel(label)
        ax.legend()
        ax.grid(alpha=0.3)
