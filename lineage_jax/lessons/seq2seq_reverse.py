"""Lesson: reversing the source sentence, with deep LSTMs (Sutskever, Vinyals & Le 2014, §3.3–3.4), on the
``translate`` lesson's numbers task ("forty-two thousand and seven" -> "42007").

The model is the paper's (``lineage_jax/foundations/seq2seq.py``): a deep LSTM encoder whose final states start
a deep LSTM decoder, nothing else between them. Each (depth, direction) is trained from the same initial
parameters on the same length-balanced batches for the same number of steps; held-out pairs are stratified by
source length (``seq2seq_attention``'s split). Measured per condition: held-out per-token perplexity (teacher
forced) and exact match of the greedy decoding, overall and per source-length bucket.

The paper: reversing cut test perplexity from 5.8 to 4.7 and raised BLEU from 25.9 to 30.6 (a 4-layer LSTM
of 1,000 cells, WMT'14 English→French); the reason it gives is that the first source words land next to the
first target words. Here the first target digit is decided by the first source words ("forty-two thousand …"),
so the same reason applies. The claim is read at the deepest configured depth (the paper's 4 layers), after
1,500 steps: the budget at which both directions fit the task, so the two are compared trained, not on a plateau.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lineage_jax.config import ConfigError
from lineage_jax.foundations import seq2seq
from lineage_jax.lessons import harness
from lineage_jax.lessons.seq2seq_attention import EDGES, balanced_batches, bucket_names, stratified_split
from lineage_jax.lessons.translate import Vocab, task_pairs

PAPER = {"perplexity": (5.8, 4.7), "bleu": (25.9, 30.6)}     # Sutskever et al. 2014, §3.3: forward -> reversed


def make_train_step(tx: optax.GradientTransformation, reverse: bool):
    """A jitted, pure ``train_step((params, opt_state), batch) -> ((params, opt_state), metrics)``."""
    def loss_fn(p, b):
        total, count = seq2seq.token_nll(seq2seq.forward(p, b["src"], b["src"] != Vocab.PAD, b["tgt_in"], reverse),
                                         b["tgt_out"], Vocab.PAD)
        return total / count

    @jax.jit
    def train_step(state, batch):
        p, opt_state = state
        loss, grads = jax.value_and_grad(loss_fn)(p, batch)
        updates, opt_state = tx.update(grads, opt_state, p)
        return (optax.apply_updates(p, updates), opt_state), {"loss": loss}
    return train_step


@functools.partial(jax.jit, static_argnums=(2,))
def _heldout_nll(p, arrays, reverse: bool):
    logits = seq2seq.forward(p, arrays["src"], arrays["src"] != Vocab.PAD, arrays["tgt_in"], reverse)
    return seq2seq.token_nll(logits, arrays["tgt_out"], Vocab.PAD)


def evaluate(p, reverse: bool, vocab: Vocab, test, buckets, arrays, T: int) -> dict:
    """Held-out perplexity (teacher forced) and greedy exact match, overall and per source-length bucket."""
    total, count = _heldout_nll(p, arrays, reverse)
    src = arrays["src"]
    tokens = seq2seq.greedy(p, src, src != Vocab.PAD, T, Vocab.BOS, reverse)
    hit = np.array([vocab.decode(row) == y for row, (_, y) in zip(np.asarray(tokens), test)])
    names = bucket_names()
    return {"perplexity": float(math.exp(float(total) / float(count))), "exact_match": float(hit.mean()),
            "by_bucket": {names[b]: float(hit[buckets == b].mean()) for b in range(len(EDGES) + 1) if (buckets == b).any()}}


@dataclasses.dataclass(frozen=True)
class Config:
    seed: int = 0
    layers: str = "1,4"          # depths compared; the claim is read at the deepest (the paper's 4)
    steps: int = 1500            # enough for both directions of the 4-layer model to fit the task (500 left
                                 # the deep models undertrained, a comparison of two plateaus)
    batch: int = 64
    embed: int = 32
    hidden: int = 64
    lr: float = 3e-3             # Adam, gradients clipped to global norm `clip` (the paper clipped at 5)
    clip: float = 1.0
    max_number: int = 10_000
    per_bucket: int = 150

    def __post_init__(self):
        harness.at_least_one(self, "steps", "batch", "embed", "hidden", "per_bucket")
        harness.positive_list("layers", self.layers, int, "1,4")
        if not 100 <= self.max_number <= 1_000_000:
            raise ConfigError(f"max_number={self.max_number}: must be in 100 … 1000000")
        if not self.lr > 0 or not self.clip > 0:
            raise ConfigError(f"lr={self.lr}, clip={self.clip}: each must be > 0")

    @property
    def layer_list(self) -> list[int]:
        return sorted(set(harness.positive_list("layers", self.layers, int, "1,4")))


# `--quick`: the 2-layer model only, 120 steps.
QUICK = dict(layers="2", steps=120, per_bucket=40, hidden=32)


def supports(rows: list[dict]) -> bool:
    """At the deepest depth, reading the source reversed gives a lower held-out perplexity and a higher held-out
    exact match than reading it forward."""
    deepest = max(r["layers"] for r in rows)
    by = {r["reversed"]: r for r in rows if r["layers"] == deepest}
    return by[True]["perplexity"] < by[False]["perplexity"] and by[True]["exact_match"] > by[False]["exact_match"]


def run(cfg: Config, out_dir: str | Path | None = None, progress: bool = True) -> harness.LessonResult:
    t0 = time.perf_counter()
    vocab = Vocab()
    pairs = task_pairs("numbers", cfg.max_number)
    train, test, buckets = stratified_split(pairs, cfg.per_bucket, cfg.seed)
    S, T = max(len(x) for x, _ in pairs), max(len(y) for _, y in pairs) + 1
    data = {k: jnp.asarray(v) for k, v in vocab.arrays(train, S, T).items()}
    heldout = {k: jnp.asarray(v) for k, v in vocab.arrays(test, S, T).items()}
    order = balanced_batches(train, cfg.steps, cfg.batch, cfg.seed)
    batch_at = lambda s: {k: v[order[s - 1]] for k, v in data.items()}
    tx = optax.chain(optax.clip_by_global_norm(cfg.clip), optax.adam(cfg.lr))
    rows, curves = [], {}
    for layers in cfg.layer_list:
        params = seq2seq.init(jax.random.key(cfg.seed), len(vocab), cfg.embed, cfg.hidden, layers)
        for reverse in (False, True):
            t1 = time.perf_counter()
            name = f"{layers} layer{'s' if layers > 1 else ''}, {'reversed' if reverse else 'forward'}"
            state, history, _ = harness.fit(make_train_step(tx, reverse), (params, tx.init(params)), batch_at,
                                            cfg.steps, log_every=max(1, cfg.steps // 25), progress=progress,
                                            desc=f"seq2seq {name}")
            ev = evaluate(state[0], reverse, vocab, test, buckets, heldout, T)
            curves[name] = [(h["step"], h["loss"]) for h in history]
            rows.append({"layers": layers, "reversed": reverse, "perplexity": ev["perplexity"],
                         "exact_match": ev["exact_match"], "final_train_loss": history[-1]["loss"],
                         "params": int(sum(x.size for x in jax.tree.leaves(params))),
                         "seconds": round(time.perf_counter() - t1, 1), **{f"em {k}": v for k, v in ev["by_bucket"].items()}})
    deepest = max(cfg.layer_list)
    by = {r["reversed"]: r for r in rows if r["layers"] == deepest}
    figures = [] if out_dir is None else [harness.figure(
        out_dir, "seq2seq_reverse.png", functools.partial(plot, rows=rows, curves=curves), panels=2,
        title="Reversing the source (Sutskever et al. 2014, §3.3)")]
    return harness.result("seq2seq_reverse", rows, supports, figures, layers=deepest,
                          perplexity={"forward": by[False]["perplexity"], "reversed": by[True]["perplexity"]},
                          exact_match={"forward": by[False]["exact_match"], "reversed": by[True]["exact_match"]},
                          paper=PAPER, n_train=len(train), n_test=len(test),
                          seconds=round(time.perf_counter() - t0, 1), config=dataclasses.asdict(cfg))


def report(res: harness.LessonResult) -> list[str]:
    d = res.details
    return [f"{d['layers']} layers, held-out perplexity forward {d['perplexity']['forward']:.3f} -> reversed "
            f"{d['perplexity']['reversed']:.3f} (paper: 5.8 -> 4.7); exact match {d['exact_match']['forward']:.1%} "
            f"-> {d['exact_match']['reversed']:.1%} (paper's BLEU: 25.9 -> 30.6)"]


def plot(axes, rows, curves) -> None:
    a, b = axes
    for name, curve in curves.items():
        a.plot(*zip(*curve), "--" if "forward" in name else "-", label=name)
    a.set_yscale("log")
    a.set_xlabel("step")
    a.set_ylabel("training loss (per token)")
    a.legend()
    a.grid(alpha=0.3)
    names = [k[3:] for k in rows[0] if k.startswith("em ")]
    for r in rows:
        b.plot(names, [r.get(f"em {n}", np.nan) for n in names], "o-" if r["reversed"] else "s--",
               label=f"{r['layers']} layers, {'reversed' if r['reversed'] else 'forward'}")
    b.set_xlabel("source length (characters)")
    b.set_ylabel("held-out exact match (greedy)")
    b.set_ylim(0, 1.02)
    b.legend()
    b.grid(alpha=0.3)
