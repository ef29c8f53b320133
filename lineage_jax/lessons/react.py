"""Lesson: a model that calls a calculator beats the same model answering in its head (Yao et al. 2023, ReAct).

Two identical small decoders (``reasoning.tiny``, same vocabulary, same parameters), trained for the same steps
on the same multiplications (``a*b``, ``a`` of 1 … ``max_digits`` digits, ``b`` of ``b_digits``), differ only in
their targets: one answers directly (``123*45=`` -> ``>5535.``), the other writes a tool call, reads the
observation and answers (``[calc(123*45)]``, then the loop appends ``=5535;``, then ``>5535.``). The observation is
masked out of its loss (``react.encode_traces``): it learns to call and to read, not to multiply.

Measured on held-out problems, by digits of ``a`` (one length beyond training included): greedy accuracy of the
direct model, of the ReAct model through the loop (``react.run_batch``: generation cut at ``]``, the calculator
run, the observation appended), and of the same ReAct model with the tool taken away (its call answered by an
error observation), plus how often it calls and how its traces stop.
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
from lineage_jax.reasoning import arith, react, sft, tiny, tools

TOOLBOX = {"calc": tools.calculate}
MODELS = ("direct", "react", "react_without_tool")


@dataclasses.dataclass(frozen=True)
class Config:
    seed: int = 0
    steps: int = 1500
    batch: int = 32
    max_digits: int = 3          # a has 1 … max_digits digits in training; tested up to max_digits + 1
    b_digits: int = 2
    d: int = 48
    heads: int = 4
    layers: int = 2
    lr: float = 2e-3
    test_per_size: int = 100
    max_steps: int = 4           # ReAct rounds before a trace is stopped

    def __post_init__(self):
        harness.at_least_one(self, "steps", "batch", "d", "heads", "layers", "test_per_size", "max_steps")
        if not 1 <= self.max_digits <= 6 or not 1 <= self.b_digits <= 3:
            raise ConfigError(f"max_digits={self.max_digits}, b_digits={self.b_digits}: max_digits between 1 and "
                              f"6, b_digits between 1 and 3")
        if not 0 < self.lr < 1:
            raise ConfigError(f"lr={self.lr}: in (0, 1)")
        if self.d % self.heads:
            raise ConfigError(f"d={self.d}: must be divisible by heads={self.heads}")

    @property
    def window(self) -> int:
        """Tokens of the longest trace: prompt, call, observation and answer of the largest test problem."""
        n = self.max_digits + 1 + self.b_digits
        return 4 * n + 16


QUICK = dict(steps=600, max_digits=2, b_digits=1, d=32, test_per_size=16)


def problems(n: int, digits: int, b_digits: int, seed: int) -> list[arith.Problem]:
    rng = np.random.default_rng(seed)
    return [arith.multiplication(rng, digits, b_digits) for _ in range(n)]


def supports(rows: list[dict]) -> bool:
    """Over the trained lengths the ReAct model's mean accuracy beats the direct model's by at least 0.2, and at
    the longest trained length (the largest numbers) by at least 0.3."""
    acc = {(r["model"], r["digits"]): r["accuracy"] for r in rows if r["trained"]}
    trained = sorted({d for _, d in acc})
    gap = [acc[("react", d)] - acc[("direct", d)] for d in trained]
    return float(np.mean(gap)) >= 0.2 and gap[-1] >= 0.3


def _train(cfg: Config, tool: bool, train: list[arith.Problem], progress: bool):
    mc = tiny.TinyConfig(vocab=react.VOCAB.size, context=cfg.window, d=cfg.d, heads=cfg.heads, layers=cfg.layers)
    model, params = tiny.init(mc, jax.random.key(cfg.seed))
    apply = lambda p, t: model.apply({"params": p}, t)
    tx = optax.adamw(optax.warmup_cosine_decay_schedule(0.0, cfg.lr, min(100, cfg.steps // 10 + 1), cfg.steps),
                     weight_decay=0.01)
    step = sft.make_sft_step(apply, tx)
    rng = np.random.default_rng(cfg.seed)

    def batch_at(_):
        picked = [train[i] for i in rng.integers(0, len(train), cfg.batch)]
        if tool:
            return react.encode_traces([react.tool_trace(p) for p in picked], [len(p.prompt) for p in picked],
                                       cfg.window)
        return arith.encode_pairs([(p.prompt, p.completion(False)) for p in picked], cfg.window, react.VOCAB)

    state, history, _ = harness.fit(step, (params, tx.init(params)), batch_at, cfg.steps, log_every=50,
                                    progress=progress, desc="react" if tool else "direct")
    return apply, state[0], history, tiny.count_params(params)


def measure(traces: list[dict], test: list[arith.Problem]) -> dict:
    """Accuracy (the tagged answer after the prompt), calls per problem, and the fraction of traces answering."""
    answers = [arith.parse_answer(t["text"][len(p.prompt):]) for t, p in zip(traces, test)]
    return {"accuracy": float(np.mean([a == p.answer for a, p in zip(answers, test)])),
            "calls_per_problem": float(np.mean([len(t["calls"]) for t in traces])),
            "answered": float(np.mean([t["stop"] == "answer" for t in traces]))}


def run(cfg: Config, out_dir: str | Path | None = None, progress: bool = True) -> harness.LessonResult:
    t0 = time.perf_counter()
    tests = {d: problems(cfg.test_per_size, d, cfg.b_digits, cfg.seed + 7919 * d)
             for d in range(1, cfg.max_digits + 2)}
    held = {p.prompt for ps in tests.values() for p in ps}
    train = [p for d in range(1, cfg.max_digits + 1) for p in problems(20_000 // cfg.max_digits, d, cfg.b_digits,
                                                                      cfg.seed + d) if p.prompt not in held]
    max_new = cfg.window // 2
    rows, histories, examples = [], {}, {}
    for tool in (False, True):
        apply, params, histories["react" if tool else "direct"], n_params = _train(cfg, tool, train, progress)
        generate = react.greedy_generator(apply, params, window=cfg.window, max_new=max_new)
        boxes = {"react": TOOLBOX, "react_without_tool": {}} if tool else {"direct": TOOLBOX}
        for name, box in boxes.items():
            for d, test in tests.items():
                traces = react.run_batch(generate, [p.prompt for p in test], box, max_steps=cfg.max_steps,
                                            max_chars=cfg.window - 1)
                rows.append({"model": name, "digits": d, "trained": d <= cfg.max_digits, **measure(traces, test),
                             "params": n_params})
                examples.setdefault(name, []).append(traces[0]["text"])
    figures = [] if out_dir is None else [harness.figure(
        out_dir, "react.png", functools.partial(plot, rows=rows, max_digits=cfg.max_digits),
        title=f"multiplication by a {cfg.b_digits}-digit number: in its head vs with a calculator "
              f"({rows[0]['params']:,} params each, {cfg.steps} steps)")]
    return harness.result("react", rows, supports, figures, examples=examples,
                          final_loss={k: h[-1]["loss"] for k, h in histories.items()},
                          seconds=round(time.perf_counter() - t0, 1), config=dataclasses.asdict(cfg))


def report(res: harness.LessonResult) -> list[str]:
    acc = {(r["model"], r["digits"]): r["accuracy"] for r in res.rows}
    digits = sorted({d for _, d in acc})
    return [f"{m}: accuracy by digits " + ", ".join(f"{d}: {acc[(m, d)]:.2f}" for d in digits) for m in MODELS]


def plot(ax, rows, max_digits) -> None:
    for name, style in zip(MODELS, ("o-", "s-", "^:")):
        rs = [r for r in rows if r["model"] == name]
        ax.plot([r["digits"] for r in rs], [r["accuracy"] for r in rs], style, label=name.replace("_", " "))
    ax.axvline(max_digits + 0.5, color="gray", ls="--", lw=1, label="longest trained length")
    ax.set_xlabel("digits of the first operand")
    ax.set_ylabel("held-out accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.legend()
    ax.grid(alpha=0.3)
