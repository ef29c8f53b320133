"""Lesson: a scratchpad beats answering directly, more so as problems grow (Nye et al. 2021; Wei et al. 2022).

Two identical small decoders (``reasoning.tiny``, same parameters), trained for the same steps on the same
batches of multi-digit additions padded to the same window (equal tokens processed), differ only in their
targets: one answers directly (``57+68=`` -> ``>125.``), the other writes each column's sum with its carry
first (``7+8+0=15,5+6+1=12,>125.``). Measured on held-out problems: greedy accuracy by number of digits,
including one length beyond training, and self-consistency (Wang et al. 2023) over sampled scratchpads.
"""
from __future__ import annotations

import dataclasses
import functools
import time
from pathlib import Path

import jax
import numpy as np
import optax

from lineage_jax.config import ConfigError
from lineage_jax.lessons import harness
from lineage_jax.reasoning import arith, evaluate, sft, tiny


@dataclasses.dataclass(frozen=True)
class Config:
    seed: int = 0
    steps: int = 1500
    batch: int = 32
    max_digits: int = 3          # trained on 1 … max_digits; tested on 1 … max_digits + 1
    d: int = 48
    heads: int = 4
    layers: int = 2
    lr: float = 2e-3
    test_per_size: int = 100
    votes: int = 5               # self-consistency samples per problem (0: skip)
    temperature: float = 0.7

    def __post_init__(self):
        harness.at_least_one(self, "steps", "batch", "d", "heads", "layers", "test_per_size")
        if not 2 <= self.max_digits <= 8:
            raise ConfigError(f"max_digits={self.max_digits}: between 2 and 8")
        if self.votes < 0:
            raise ConfigError(f"votes={self.votes}: 0 (skip) or more")
        if not 0 < self.lr < 1 or self.temperature <= 0:
            raise ConfigError(f"lr={self.lr}, temperature={self.temperature}: lr in (0, 1), temperature > 0")
        if self.d % self.heads:
            raise ConfigError(f"d={self.d}: must be divisible by heads={self.heads}")

    @property
    def window(self) -> int:
        """Tokens of the longest test problem with its scratchpad (prompt, 9 per column, the answer)."""
        n = self.max_digits + 1
        return 2 * n + 2 + 9 * (n + 1) + n + 4


QUICK = dict(steps=150, max_digits=2, d=32, layers=2, test_per_size=16, votes=3)


def margins(rows: list[dict]) -> dict[int, float]:
    acc = {(r["format"], r["digits"]): r["accuracy"] for r in rows}
    return {d: acc[("scratchpad", d)] - acc[("direct", d)] for d in sorted({r["digits"] for r in rows})}


def supports(rows: list[dict]) -> bool:
    """Over the trained lengths the scratchpad model's mean accuracy is higher than the direct model's, and
    its margin at the longest trained length exceeds the margin at one digit (it grows with length)."""
    trained = sorted({r["digits"] for r in rows if r["trained"]})
    m = margins([r for r in rows if r["trained"]])
    return float(np.mean([m[d] for d in trained])) > 0 and m[trained[-1]] > m[trained[0]]


def _train(cfg: Config, scratchpad: bool, train: list[arith.Problem], progress: bool):
    mc = tiny.TinyConfig(vocab=arith.VOCAB.size, context=cfg.window, d=cfg.d, heads=cfg.heads, layers=cfg.layers)
    model, params = tiny.init(mc, jax.random.key(cfg.seed))
    apply = lambda p, t: model.apply({"params": p}, t)
    tx = optax.adamw(optax.warmup_cosine_decay_schedule(0.0, cfg.lr, min(100, cfg.steps // 10 + 1), cfg.steps),
                     weight_decay=0.01)
    step = sft.make_sft_step(apply, tx)
    rng = np.random.default_rng(cfg.seed)
    pairs = [(p.prompt, p.completion(scratchpad)) for p in train]
    counted = {"completion_tokens": 0}

    def batch_at(_):
        idx = rng.integers(0, len(pairs), cfg.batch)
        tokens, mask = arith.encode_pairs([pairs[i] for i in idx], cfg.window)
        counted["completion_tokens"] += int(mask.sum())
        return tokens, mask

    state, history, _ = harness.fit(step, (params, tx.init(params)), batch_at, cfg.steps, log_every=50,
                                    progress=progress, desc="scratchpad" if scratchpad else "direct")
    return apply, state[0], history, counted["completion_tokens"], tiny.count_params(params)


def run(cfg: Config, out_dir: str | Path | None = None, progress: bool = True) -> harness.LessonResult:
    t0 = time.perf_counter()
    sizes = list(range(1, cfg.max_digits + 1))
    train, _ = arith.split("add", 20_000, cfg.test_per_size * (cfg.max_digits + 1), sizes, cfg.seed)
    # at most a fifth of each length's distinct problems is held out (1-digit additions are only 100)
    test = [p for d in range(1, cfg.max_digits + 2)
            for p in dict((q.prompt, q) for q in arith.problems(
                "add", min(cfg.test_per_size, 100 ** d // 5), (d,), cfg.seed + 7919 * d)).values()]
    held = {p.prompt for p in test}
    train = [p for p in train if p.prompt not in held]
    rows, histories, examples = [], {}, {}
    for scratch in (False, True):
        fmt = "scratchpad" if scratch else "direct"
        apply, params, histories[fmt], tokens_seen, n_params = _train(cfg, scratch, train, progress)
        max_new = cfg.window - 2 * (cfg.max_digits + 1) - 1
        greedy = evaluate.solve(apply, params, test, window=cfg.window, max_new=max_new, key=jax.random.key(1))
        acc = evaluate.by_size(test, evaluate.correct(test, greedy)[:, 0])
        vote = {}
        if cfg.votes:
            sampled = evaluate.solve(apply, params, test, window=cfg.window, max_new=max_new, key=jax.random.key(2),
                                     samples=cfg.votes, greedy=False, temperature=cfg.temperature)
            vote = evaluate.by_size(test, evaluate.vote_correct(test, sampled))
            single = evaluate.by_size(test, evaluate.correct(test, sampled).mean(axis=1))
        for d in acc:
            rows.append({"format": fmt, "digits": d, "trained": d <= cfg.max_digits, "accuracy": acc[d],
                         **({"sample_accuracy": single[d], "self_consistency": vote[d]} if vote else {}),
                         "params": n_params, "completion_tokens_trained": tokens_seen})
        examples[fmt] = [(p.prompt, c[0]) for p, c in zip(test[-3:], greedy[-3:])]
    figures = [] if out_dir is None else [harness.figure(
        out_dir, "cot.png", functools.partial(plot, rows=rows, max_digits=cfg.max_digits),
        title=f"addition: direct answer vs scratchpad ({rows[0]['params']:,} params each, {cfg.steps} steps)")]
    return harness.result("cot", rows, supports, figures, margins={str(k): v for k, v in margins(rows).items()},
                          examples=examples, seconds=round(time.perf_counter() - t0, 1), config=dataclasses.asdict(cfg))


def report(res: harness.LessonResult) -> list[str]:
    return ["scratchpad − direct accuracy by digits: "
            + ", ".join(f"{d}: {m:+.2f}" for d, m in res.details["margins"].items())]


def plot(ax, rows, max_digits) -> None:
    for fmt, style in (("direct", "o-"), ("scratchpad", "s-")):
        rs = [r for r in rows if r["format"] == fmt]
        ax.plot([r["digits"] for r in rs], [r["accuracy"] for r in rs], style, label=f"{fmt} (greedy)")
        if "self_consistency" in rs[0]:
            ax.plot([r["digits"] for r in rs], [r["self_consistency"] for r in rs], style[0] + ":",
                    label=f"{fmt} (self-consistency)")
    ax.axvline(max_digits + 0.5, color="gray", ls="--", lw=1, label="longest trained length")
    ax.set_xlabel("digits per operand")
    ax.set_ylabel("held-out accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.legend()
    ax.grid(alpha=0.3)
