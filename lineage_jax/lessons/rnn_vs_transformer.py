"""Lesson: recurrence against self-attention as the sequence grows (Vaswani et al. 2017, §4 and Table 1).

Table 1: a recurrent layer needs O(n) sequential operations and O(n·d²) work, a self-attention layer O(1)
sequential operations and O(n²·d) work. Here, at matched parameter counts (3 LSTM layers of width d ≈
2 post-LN Transformer encoder layers of width d with d_ff = 4d: 24·d² each), one training step (forward,
backward, SGD update) on a per-token task, at n = 64 … 1024:

    sequential steps   counted in the traced program: the iterations of every ``lax.scan`` (the LSTM's n per
                       layer; the Transformer has none, its layers run one after another: ``layers`` steps)
    step time          median wall time of the jitted step (timings are reported, never asserted in tests)

and, at one length (``quality_n``), quality reached at equal wall time: both models train with Adam on the
same stream of fresh random sequences for the same seconds — counted as steps × each model's median step time,
timed with the models taking turns, so a loaded machine does not shrink the race (``race``) — on a delayed copy (label_t = token_{t−delay}; the first ``delay`` positions are not scored, so
the unidirectional LSTM is not asked for the future), and their accuracy on held-out sequences is measured at
checkpoints along the clock: curves of held-out accuracy against seconds.

The claim measured: the LSTM/Transformer step-time ratio grows with n, and at equal wall time the Transformer
is at least as good on held-out data. It is a claim about parallel hardware: on a device that runs the n
positions at once the recurrent chain of n steps dominates. On a few CPU cores the Transformer's n²·d work is
not free, so the ratio may not grow; the rows say which happened, and ``details`` keeps each half's verdict.
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
import optax
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


def delayed_copy(key: jax.Array, batch: int, n: int, vocab: int, delay: int) -> tuple[jax.Array, jax.Array]:
    """Fresh random tokens [batch, n] and their labels: label_t = token_{t−delay} (scored only for t ≥ delay)."""
    tokens = jax.random.randint(key, (batch, n), 0, vocab)
    return tokens, jnp.roll(tokens, delay, axis=1)


def make_race_fns(logits_fn, tx: optax.GradientTransformation, delay: int):
    """(step, accuracy), both jitted and pure: ``step((params, opt_state), tokens, labels) -> (state, loss)``
    with Adam on the positions t ≥ delay; ``accuracy(params, tokens, labels)`` on those positions."""
    def loss(p, tokens, labels):
        logp = jax.nn.log_softmax(logits_fn(p, tokens))[:, delay:]
        return -jnp.take_along_axis(logp, labels[:, delay:, None], -1).mean()

    @jax.jit
    def step(state, tokens, labels):
        p, opt_state = state
        value, grads = jax.value_and_grad(loss)(p, tokens, labels)
        updates, opt_state = tx.update(grads, opt_state, p)
        return (optax.apply_updates(p, updates), opt_state), value

    @jax.jit
    def accuracy(p, tokens, labels):
        return (logits_fn(p, tokens)[:, delay:].argmax(-1) == labels[:, delay:]).mean()
    return step, accuracy


def race(models: dict, cfg: "Config", heldout, progress: bool = True) -> dict:
    """Equal wall time, measured so that the machine's load cancels: every model's jitted Adam step is timed
    (``cfg.repeats`` × 4 steps, the models taking turns, median), then the slower model trains ``budget_steps``
    steps and every other model the steps that fit in the same seconds at its own median (t_slow / t_model ×
    ``budget_steps``). A uniformly loaded machine slows every model alike and leaves the step counts unchanged;
    a clock-driven race would hand out fewer steps as the load rose. ``models``: {name: (logits_fn, params, lr,
    kind)}, runs of the same ``kind`` sharing one step time. Held-out accuracy at ``cfg.checkpoints`` evenly
    spaced points; every model sees the same batches. Returns {name: curve}, a curve [{seconds, steps,
    heldout_accuracy, loss}] from 0 (seconds = steps × the model's median step time), and {kind: median ms}."""
    from tqdm.auto import tqdm
    key = jax.random.key(cfg.seed + 7)
    batch = lambda i: delayed_copy(jax.random.fold_in(key, i), cfg.race_batch, cfg.quality_n, cfg.vocab, cfg.delay)
    runners, kinds = {}, {}
    for name, (fn, params, lr, kind) in models.items():
        tx = optax.adam(lr)
        step, accuracy = make_race_fns(fn, tx, cfg.delay)
        state = (params, tx.init(params))
        jax.block_until_ready(step(state, *batch(2 ** 31)))     # compile and warm up; the result is discarded
        runners[name] = {"step": step, "accuracy": accuracy, "state": state, "kind": kind}
        kinds.setdefault(kind, (step, state))
    times = {kind: [] for kind in kinds}
    probe = batch(2 ** 31 - 1)
    for _ in range(4 * cfg.repeats):                            # taking turns: the load falls on every kind alike
        for kind, (step, state) in kinds.items():
            t = time.perf_counter()
            jax.block_until_ready(step(state, *probe))
            times[kind].append(time.perf_counter() - t)
    step_s = {kind: statistics.median(ts) for kind, ts in times.items()}
    slowest = max(step_s.values())
    total = 0
    for r in runners.values():
        r["steps"] = max(1, round(cfg.budget_steps * slowest / step_s[r["kind"]]))
        total += r["steps"]
    bar = tqdm(total=total, disable=not progress, unit="step", desc="equal wall time")
    curves = {}
    for name, r in runners.items():
        marks = {round(r["steps"] * (i + 1) / cfg.checkpoints) for i in range(cfg.checkpoints)}
        state, s = r["state"], step_s[r["kind"]]
        curve = [{"seconds": 0.0, "steps": 0, "loss": None, "heldout_accuracy": float(r["accuracy"](state[0], *heldout))}]
        for i in range(1, r["steps"] + 1):
            state, loss = r["step"](state, *batch(i - 1))
            if i in marks:
                curve.append({"seconds": i * s, "steps": i, "loss": float(loss),
                              "heldout_accuracy": float(r["accuracy"](state[0], *heldout))})
            bar.update(1)
        curves[name] = curve
    bar.close()
    return curves, {kind: 1e3 * v for kind, v in step_s.items()}


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
    quality_n: int = 128          # the length of the equal-wall-time race
    budget_steps: int = 1000      # the race: steps of the slower model; the other gets the same seconds
    delay: int = 4                # the race's task: label_t = token_{t-delay}
    race_batch: int = 32
    race_lrs: str = "0.003"       # Adam; each model is raced at each and reported at its best (a two-rate run,
                                  # 0.001 and 0.003, saw 0.001 win for neither model: 0.003 alone halves the race)
    checkpoints: int = 8          # held-out evaluations along the clock

    def __post_init__(self):
        harness.at_least_one(self, "d", "heads", "layers", "batch", "vocab", "repeats", "race_batch", "checkpoints",
                                   "budget_steps")
        if self.layers % 2:
            raise ConfigError(f"layers={self.layers}: must be even (the LSTM gets 3·layers/2 to match parameters)")
        if not 1 <= self.delay < self.quality_n:
            raise ConfigError(f"delay={self.delay}, quality_n={self.quality_n}: need 1 <= delay < quality_n")
        harness.positive_list("race_lrs", self.race_lrs, float, "0.001,0.003")
        if self.d % (2 * self.heads):
            raise ConfigError(f"d={self.d}: must be even and divisible by heads={self.heads}")
        try:
            ns = self.length_list
        except ValueError:
            ns = []
        if len(ns) < 2 or any(n < 2 for n in ns) or ns != sorted(set(ns)):
            raise ConfigError(f"lengths={self.lengths}: at least two increasing integers >= 2, comma-separated")

    @property
    def race_lr_list(self) -> list[float]:
        return harness.positive_list("race_lrs", self.race_lrs, float, "0.001,0.003")

    @property
    def length_list(self) -> list[int]:
        return [int(s) for s in self.lengths.split(",")]


# `--quick`: two short lengths, three timings each, a two-second race at n = 32.
QUICK = dict(lengths="16,64", d=32, repeats=3, quality_n=32, budget_steps=60, checkpoints=2, race_lrs="0.003")


def ratios(rows: list[dict]) -> dict[int, float]:
    """n -> LSTM step time / Transformer step time."""
    rows = timing_rows(rows)
    t = {(r["model"], r["n"]): r["step_ms"] for r in rows}
    return {n: t[("lstm", n)] / t[("transformer", n)] for n in sorted({r["n"] for r in rows})}


def timing_rows(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r.get("part", "step_time") == "step_time"]


def time_ratio_grows(rows: list[dict]) -> bool:
    """The LSTM's sequential steps grow in proportion to n while the Transformer's stay constant, and the
    step-time ratio at the longest n is above the ratio at the shortest."""
    rows = timing_rows(rows)
    seq = {(r["model"], r["n"]): r["sequential_steps"] for r in rows}
    ns = sorted({r["n"] for r in rows})
    steps_ok = (len({seq[("lstm", n)] / n for n in ns}) == 1
                and len({seq[("transformer", n)] for n in ns}) == 1)
    rs = ratios(rows)
    return steps_ok and rs[ns[-1]] > rs[ns[0]]


def best_at_equal_time(rows: list[dict]) -> dict[str, dict]:
    """model -> its equal-wall-time row at the learning rate that reached the highest held-out accuracy."""
    best = {}
    for r in rows:
        if r.get("part") == "equal_wall_time" and (r["model"] not in best
                                                   or r["heldout_accuracy"] > best[r["model"]]["heldout_accuracy"]):
            best[r["model"]] = r
    return best


def transformer_as_good_at_equal_time(rows: list[dict]) -> bool:
    """At the end of the same wall-time budget the Transformer's held-out accuracy (at its best learning rate)
    is at least the LSTM's (at its best)."""
    best = best_at_equal_time(rows)
    return best["transformer"]["heldout_accuracy"] >= best["lstm"]["heldout_accuracy"]


def supports(rows: list[dict]) -> bool:
    """Both halves of the claim: the step-time ratio grows with n, and at equal wall time the Transformer's
    held-out quality is at least the LSTM's."""
    return time_ratio_grows(rows) and transformer_as_good_at_equal_time(rows)


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
    kt, kp = jax.random.split(jax.random.key(cfg.seed + 5))
    heldout = delayed_copy(kt, 256, cfg.quality_n, cfg.vocab, cfg.delay)     # never drawn in training
    model = transformer(cfg.d, cfg.heads, cfg.layers, cfg.vocab, cfg.quality_n)
    models = {"lstm": (lstm_logits, lstm_init(kp, cfg.vocab, cfg.d, lstm_layers)),
            "transformer": (functools.partial(transformer_logits, model),
                            meta.unbox(model.init(kp, heldout[0][:1], method=Transformer.encode)["params"]))}
    curves, race_ms = race({(name, lr): (fn, p, lr, name) for name, (fn, p) in models.items()
                            for lr in cfg.race_lr_list}, cfg, heldout, progress)
    for (name, lr), curve in curves.items():
        rows.append({"model": name, "n": cfg.quality_n, "part": "equal_wall_time", "lr": lr,
                     "step_ms": race_ms[name], "train_seconds": curve[-1]["seconds"], "steps": curve[-1]["steps"],
                     "heldout_accuracy": curve[-1]["heldout_accuracy"]})
    best = best_at_equal_time(rows)
    curves = {f"{name} (lr {lr:g})": curve for (name, lr), curve in curves.items() if best[name]["lr"] == lr}
    figures = [] if out_dir is None else [harness.figure(
        out_dir, "rnn_vs_transformer.png", functools.partial(plot, rows=rows, curves=curves), panels=3,
        title=f"LSTM ({lstm_layers} layers) vs Transformer encoder ({cfg.layers} layers), d = {cfg.d}, "
              f"batch {cfg.batch} on {jax.devices()[0].platform}")]
    acc = {m: r["heldout_accuracy"] for m, r in best.items()}
    steps = {m: r["steps"] for m, r in best.items()}
    return harness.result("rnn_vs_transformer", rows, supports, figures, ratios={str(k): v for k, v in rs.items()},
                          time_ratio_grows=time_ratio_grows(rows),
                          transformer_as_good_at_equal_time=transformer_as_good_at_equal_time(rows),
                          equal_time_accuracy=acc, equal_time_steps=steps, curves=curves,
                          equal_time_seconds=max(r["train_seconds"] for r in best.values()),
                          device=str(jax.devices()[0].device_kind), cpu_threads=_threads(),
                          seconds=round(time.perf_counter() - t0, 1), config=dataclasses.asdict(cfg))


def _threads() -> int:
    import os
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def report(res: harness.LessonResult) -> list[str]:
    d = res.details
    r, acc, steps, cfg = d["ratios"], d["equal_time_accuracy"], d["equal_time_steps"], d["config"]
    return [f"on {d['device']} ({d['cpu_threads']} CPU threads): LSTM / Transformer step time "
            + ", ".join(f"n={n}: {v:.2f}x" for n, v in r.items()) + f" (grows: {d['time_ratio_grows']})",
            f"held-out accuracy after equal training time ({d['equal_time_seconds']:.1f} s at this run's step "
            f"times) at n={cfg['quality_n']}: LSTM "
            f"{acc['lstm']:.1%} ({steps['lstm']} steps), Transformer {acc['transformer']:.1%} "
            f"({steps['transformer']} steps) (Transformer at least as good: {d['transformer_as_good_at_equal_time']})"]


def plot(axes, rows, curves) -> None:
    a, b, c = axes
    for name, curve in curves.items():
        c.plot([p["seconds"] for p in curve], [p["heldout_accuracy"] for p in curve], "o-",
               label=f"{name} ({curve[-1]['steps']} steps)")
    c.set_xlabel(f"training seconds (n = {[r['n'] for r in rows if r.get('part') == 'equal_wall_time'][0]})")
    c.set_ylabel("held-out accuracy (delayed copy)")
    c.legend()
    c.grid(alpha=0.3)
    rows = timing_rows(rows)
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
