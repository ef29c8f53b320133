"""Lesson: in-context learning appears with induction heads, in a phase change (Olsson et al. 2022; Brown et al. 2020).

Two 2-layer attention-only Transformers without norms (Elhage et al. 2021's setting), trained alike on random
tokens, one on sequences where a span of random length reappears at a random offset, the control on sequences
where nothing reappears. Measured every ``eval_every`` steps on held-out repeated sequences:

    in-context score    loss on the first occurrence's tokens − loss on the second's (nats): > 0 only if the
                        model uses its context; Olsson et al. see it jump within a short window of training
    prefix matching     the best layer-2 head's mean attention from a repeated token to the token after its
                        earlier occurrence, read off the attention patterns
    copying             that head's OV-circuit eigenvalue ratio Σ Re λ / Σ |λ|

then, with no gradient step, few-shot accuracy on a key -> label lookup (a fresh map per prompt) as the number
of examples k grows, beside the fraction of prompts whose query appeared among the examples (what copying
can reach at best).
"""
from __future__ import annotations

import dataclasses
import functools
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lineage_jax.config import ConfigError
from lineage_jax.lessons import harness
from lineage_jax.reasoning import induction, sft, tiny


@dataclasses.dataclass(frozen=True)
class Config:
    seed: int = 0
    steps: int = 1500
    eval_every: int = 100
    batch: int = 64
    length: int = 32
    vocab: int = 32
    d: int = 64
    heads: int = 4
    lr: float = 3e-3
    shots: str = "0,1,2,4,8"
    eval_batch: int = 256

    def __post_init__(self):
        harness.at_least_one(self, "steps", "eval_every", "batch", "d", "heads", "eval_batch")
        if self.length < 8:
            raise ConfigError(f"length={self.length}: at least 8 (two spans of length >= 2 and room to move)")
        if self.vocab < 8:
            raise ConfigError(f"vocab={self.vocab}: at least 8")
        if not 0 < self.lr < 1:
            raise ConfigError(f"lr={self.lr}: between 0 and 1")
        if self.d % self.heads:
            raise ConfigError(f"d={self.d}: must be divisible by heads={self.heads}")
        try:
            ks = self.shot_list
        except ValueError:
            ks = []
        if len(ks) < 2 or ks != sorted(set(ks)) or ks[0] < 0 or 2 * ks[-1] + 1 > self.length:
            raise ConfigError(f"shots={self.shots}: at least two increasing integers >= 0 with 2k+1 <= length, "
                              f"e.g. 0,1,2,4,8")

    @property
    def shot_list(self) -> list[int]:
        return [int(s) for s in self.shots.split(",")]


QUICK = dict(steps=200, eval_every=50, batch=32, d=32, eval_batch=64, shots="0,2,8")


def phase_window(curve: list[tuple[int, float]]) -> tuple[int, int] | None:
    """(first step at >= 10%, first step at >= 90%) of the final in-context score (Olsson's phase change: the
    rise happens within a short window); None when the final score is under 0.1 nats (nothing rose)."""
    final = curve[-1][1]
    if final < 0.1:
        return None
    at = lambda frac: next(s for s, v in curve if v >= frac * final)
    return at(0.1), at(0.9)


def supports(rows: list[dict]) -> bool:
    """The repeated-span model uses its context (score >= 1 nat) with an induction head (prefix matching >= 0.3,
    copying > 0.5) formed in a phase change (10% -> 90% of the score within a quarter of training); the control
    has no such head (prefix matching < 0.15); few-shot accuracy rises by >= 0.3 from the fewest to the most shots."""
    m = {r["model"]: r for r in rows if r["part"] == "pretrain"}
    shots = sorted((r["k"], r["accuracy"]) for r in rows if r["part"] == "few-shot")
    rep, ctl = m["repeats"], m["control"]
    return (rep["icl_score"] >= 1.0 and rep["prefix_matching"] >= 0.3 and rep["copying"] > 0.5
            and rep["phase_width"] is not None and rep["phase_width"] <= 0.25 * rep["steps"]
            and ctl["prefix_matching"] < 0.15
            and shots[-1][1] - shots[0][1] >= 0.3)


def _train(cfg: Config, repeats: bool, progress: bool) -> tuple[tiny.TinyLM, dict, list[dict], dict]:
    mc = tiny.TinyConfig(vocab=cfg.vocab, context=cfg.length, d=cfg.d, heads=cfg.heads, layers=2, mlp=False,
                         norm=False)
    model, params = tiny.init(mc, jax.random.key(cfg.seed))
    apply = lambda p, t: model.apply({"params": p}, t)
    tx = optax.adam(cfg.lr)
    step = sft.make_sft_step(apply, tx)
    rng = np.random.default_rng(cfg.seed + (0 if repeats else 1))
    ones = np.ones((cfg.batch, cfg.length), np.float32)
    batch_at = lambda _: (induction.repeated_spans(rng, cfg.batch, cfg.length, cfg.vocab, repeats=repeats)[0], ones)
    erng = np.random.default_rng(10_000 + cfg.seed)
    ev = induction.repeated_spans(erng, cfg.eval_batch, cfg.length, cfg.vocab)
    rr = jnp.asarray(induction.repeated_random(erng, min(cfg.eval_batch, 64), cfg.length // 2, cfg.vocab))
    losses = jax.jit(lambda p, t, late, early: induction.icl_losses(apply(p, t), t, late, early))

    def evaluate(state, s):
        params = state[0]
        out = {k: float(v) for k, v in losses(params, *map(jnp.asarray, ev)).items()}
        out["prefix_matching"] = float(induction.prefix_matching(model, params, rr)[1].max())
        return out

    eval_at = list(range(cfg.eval_every, cfg.steps + 1, cfg.eval_every)) or [cfg.steps]
    state, history, evals = harness.fit(step, (params, tx.init(params)), batch_at, cfg.steps, log_every=cfg.eval_every,
                                        evaluate=evaluate, eval_at=eval_at, progress=progress,
                                        desc="repeated spans" if repeats else "control (no repeats)")
    params = state[0]
    pm = induction.prefix_matching(model, params, rr)
    head = int(pm[1].argmax())
    prev = induction.previous_token(model, params, rr)
    lo, hi = phase_window([(e["step"], e["icl_score"]) for e in evals]) or (None, None)
    row = {"part": "pretrain", "model": "repeats" if repeats else "control", "steps": cfg.steps,
           **{k: evals[-1][k] for k in ("late_loss", "early_loss", "icl_score")},
           "prefix_matching": float(pm[1, head]), "head": head, "copying": float(induction.copying(params, 1)[head]),
           "previous_token": float(prev[0].max()), "phase_start": lo, "phase_end": hi,
           "phase_width": None if lo is None else hi - lo}
    return model, params, evals, row


def run(cfg: Config, out_dir: str | Path | None = None, progress: bool = True) -> harness.LessonResult:
    t0 = time.perf_counter()
    model, params, curve, row = _train(cfg, True, progress)
    _, _, control_curve, control_row = _train(cfg, False, progress)
    rows = [row, control_row]
    rng = np.random.default_rng(20_000 + cfg.seed)
    for k in cfg.shot_list:
        prompts, answers, seen = induction.lookup_prompts(rng, cfg.eval_batch, k, cfg.vocab)
        pred = np.asarray(jnp.argmax(model.apply({"params": params}, jnp.asarray(prompts))[:, -1], -1))
        rows.append({"part": "few-shot", "model": "repeats", "k": k, "accuracy": float((pred == answers).mean()),
                     "query_seen": float(seen.mean()), "accuracy_when_seen": float((pred == answers)[seen].mean())
                     if seen.any() else 0.0})
    figures = [] if out_dir is None else [harness.figure(
        out_dir, "icl.png", functools.partial(plot, curves={"repeats": curve, "control": control_curve},
                                              shots=[r for r in rows if r["part"] == "few-shot"]), panels=3,
        title=f"2-layer attention-only model, d={cfg.d}, {cfg.heads} heads: induction head and in-context learning")]
    return harness.result("icl", rows, supports, figures, curves={"repeats": curve, "control": control_curve},
                          seconds=round(time.perf_counter() - t0, 1), config=dataclasses.asdict(cfg))


def report(res: harness.LessonResult) -> list[str]:
    r = next(x for x in res.rows if x.get("model") == "repeats" and x["part"] == "pretrain")
    return [f"phase change between steps {r['phase_start']} and {r['phase_end']}; layer-2 head {r['head']}: "
            f"prefix matching {r['prefix_matching']:.2f}, copying {r['copying']:.2f}"]


def plot(axes, curves, shots) -> None:
    a, b, c = axes
    for name, ev in curves.items():
        s = [e["step"] for e in ev]
        a.plot(s, [e["icl_score"] for e in ev], label=name)
        b.plot(s, [e["prefix_matching"] for e in ev], label=name)
    a.set_ylabel("in-context score: early − late loss (nats)")
    b.set_ylabel("prefix matching (best layer-2 head)")
    for ax in (a, b):
        ax.set_xlabel("training step")
        ax.legend()
        ax.grid(alpha=0.3)
    ks = [r["k"] for r in shots]
    c.plot(ks, [r["accuracy"] for r in shots], "o-", label="accuracy")
    c.plot(ks, [r["query_seen"] for r in shots], "k--", label="query among the examples")
    c.set_xlabel("examples in the prompt k (no gradient step)")
    c.set_ylabel("few-shot lookup accuracy")
    c.legend()
    c.grid(alpha=0.3)
