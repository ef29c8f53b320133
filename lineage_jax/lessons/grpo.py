"""Lesson: RL from verifiable rewards raises accuracy over the SFT start (Shao et al. 2024; DeepSeek-AI 2025).

A small decoder is first fine-tuned (SFT) on additions written either way, half answered directly
(``>125.``), half with the column scratchpad first. Then GRPO (``reasoning.grpo``): each step samples a group
of G completions for each of P training prompts, rewards each with the verifier (1 if the tagged answer is
right, + 0.1 if the format is followed), and takes one step on the clipped objective with the k3 KL to the
SFT model as reference; no value model. Two runs from the same start: GRPO (std-scaled advantages,
per-response length normalisation) and Dr. GRPO (Liu et al. 2025: neither).

Measured on held-out problems every ``eval_every`` steps: greedy accuracy, mean response length and the
fraction of responses that use the scratchpad (R1's "the response length grows" comes, here, from the
policy choosing the longer format because it is more often right); before and after, pass@1 and pass@k
from k samples (RL sharpening the distribution raises pass@1 more than pass@k).
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
from lineage_jax.reasoning import arith, evaluate, grpo, sample, sft, tiny

VARIANTS = {"grpo": ("group", "grpo"), "dr_grpo": ("none", "dr_grpo")}   # advantage scale, loss type


@dataclasses.dataclass(frozen=True)
class Config:
    seed: int = 0
    digits: int = 2              # problems of exactly this many digits per operand
    sft_steps: int = 800
    rl_steps: int = 40
    prompts: int = 8             # P prompts per RL step
    group: int = 8               # G samples per prompt
    lr: float = 2e-3
    rl_lr: float = 3e-4
    beta: float = 0.04
    epsilon: float = 0.2
    d: int = 48
    layers: int = 2
    heads: int = 4
    eval_every: int = 10
    test: int = 200
    k: int = 8                   # samples per held-out problem for pass@k

    def __post_init__(self):
        harness.at_least_one(self, "sft_steps", "rl_steps", "prompts", "d", "layers", "heads", "eval_every", "test")
        if not 1 <= self.digits <= 6:
            raise ConfigError(f"digits={self.digits}: between 1 and 6")
        if self.group < 2 or self.k < 2:
            raise ConfigError(f"group={self.group}, k={self.k}: at least 2 samples each")
        if not (0 < self.lr < 1 and 0 < self.rl_lr < 1 and self.beta >= 0 and 0 < self.epsilon < 1):
            raise ConfigError(f"lr={self.lr}, rl_lr={self.rl_lr} in (0, 1); beta={self.beta} >= 0; "
                              f"epsilon={self.epsilon} in (0, 1)")
        if self.d % self.heads:
            raise ConfigError(f"d={self.d}: must be divisible by heads={self.heads}")

    @property
    def window(self) -> int:
        return 2 * self.digits + 2 + 9 * (self.digits + 1) + self.digits + 4


QUICK = dict(digits=1, sft_steps=60, rl_steps=4, prompts=4, group=4, d=32, eval_every=2, test=16, k=4)


def supports(rows: list[dict]) -> bool:
    """GRPO's final held-out greedy accuracy exceeds the SFT start's by at least 0.05."""
    acc = {(r["variant"], r["step"]): r["accuracy"] for r in rows if r["part"] == "curve"}
    last = max(s for v, s in acc if v == "grpo")
    return acc[("grpo", last)] >= acc[("grpo", 0)] + 0.05


def _greedy_stats(apply, params, test, cfg) -> dict:
    comps = evaluate.solve(apply, params, test, window=cfg.window, max_new=cfg.window - 2 * cfg.digits - 2,
                           key=jax.random.key(0))
    first = [c[0] for c in comps]
    return {"accuracy": float(evaluate.correct(test, comps)[:, 0].mean()),
            "mean_length": float(np.mean([len(c) for c in first])),
            "scratchpad_fraction": float(np.mean([not c.startswith(arith.ANSWER) for c in first])),
            "formatted": float(np.mean([arith.check(p, c)["formatted"] for p, c in zip(test, first)]))}


def _pass_at(apply, params, test, cfg, key) -> dict:
    comps = evaluate.solve(apply, params, test, window=cfg.window, max_new=cfg.window - 2 * cfg.digits - 2, key=key,
                           samples=cfg.k, greedy=False)
    c = evaluate.correct(test, comps).sum(axis=1)
    return {"pass@1": float(np.mean([evaluate.pass_at_k(cfg.k, int(x), 1) for x in c])),
            f"pass@{cfg.k}": float(np.mean([evaluate.pass_at_k(cfg.k, int(x), cfg.k) for x in c]))}


def _sft(cfg: Config, train, progress: bool):
    mc = tiny.TinyConfig(vocab=arith.VOCAB.size, context=cfg.window, d=cfg.d, heads=cfg.heads, layers=cfg.layers)
    model, params = tiny.init(mc, jax.random.key(cfg.seed))
    apply = lambda p, t: model.apply({"params": p}, t)
    tx = optax.adamw(optax.warmup_cosine_decay_schedule(0.0, cfg.lr, min(50, cfg.sft_steps // 10 + 1), cfg.sft_steps))
    rng = np.random.default_rng(cfg.seed)

    def batch_at(_):
        pick = rng.integers(0, len(train), 64)
        return arith.encode_pairs([(train[i].prompt, train[i].completion(bool(rng.integers(2)))) for i in pick],
                                  cfg.window)

    state, _, _ = harness.fit(sft.make_sft_step(apply, tx), (params, tx.init(params)), batch_at, cfg.sft_steps,
                              progress=progress, desc="SFT (mixed formats)")
    return apply, state[0]


def _rl(cfg: Config, variant: str, apply, start, train, test, progress: bool) -> list[dict]:
    scale, loss_type = VARIANTS[variant]
    max_new = cfg.window - 2 * cfg.digits - 2
    tx = optax.adam(cfg.rl_lr)
    step = grpo.make_grpo_step(apply, tx, epsilon=cfg.epsilon, beta=cfg.beta, loss_type=loss_type, max_len=max_new)
    ref_logp = jax.jit(functools.partial(grpo.sequence_logprobs, apply))
    state, rng, key = (start, tx.init(start)), np.random.default_rng(cfg.seed + 1), jax.random.key(cfg.seed + 1)
    curve = [{"part": "curve", "variant": variant, "step": 0, **_greedy_stats(apply, start, test, cfg)}]
    from tqdm.auto import tqdm
    for s in tqdm(range(1, cfg.rl_steps + 1), disable=not progress, desc=variant):
        group = [train[i] for i in rng.integers(0, len(train), cfg.prompts) for _ in range(cfg.group)]
        tokens, lengths = arith.encode_prompts([p.prompt for p in group], cfg.window)
        key, sub = jax.random.split(key)
        out = sample.sample(apply, state[0], tokens, lengths, sub, max_new=max_new, end_id=arith.VOCAB.end_id)
        rewards = jnp.array([arith.reward(p, c) for p, c in zip(group, sample.completions(arith.VOCAB, out, lengths))])
        batch = {"tokens": out["tokens"], "mask": out["mask"], "old_logp": out["logprobs"],
                 "ref_logp": ref_logp(start, out["tokens"]),
                 "advantages": grpo.group_advantages(rewards, cfg.group, scale)}
        state, metrics = step(state, batch)
        if s % cfg.eval_every == 0 or s == cfg.rl_steps:
            curve.append({"part": "curve", "variant": variant, "step": s, "train_reward": float(rewards.mean()),
                          "kl": float(metrics["kl"]), **_greedy_stats(apply, state[0], test, cfg)})
    curve[-1]["params"] = state[0]
    return curve


def run(cfg: Config, out_dir: str | Path | None = None, progress: bool = True) -> harness.LessonResult:
    t0 = time.perf_counter()
    train, test = arith.split("add", 20_000, cfg.test, [cfg.digits], cfg.seed)
    apply, start = _sft(cfg, train, progress)
    rows = [{"part": "pass@k", "variant": "sft", **_pass_at(apply, start, test, cfg, jax.random.key(5))}]
    for variant in VARIANTS:
        curve = _rl(cfg, variant, apply, start, train, test, progress)
        final = curve[-1].pop("params")
        rows += curve
        rows.append({"part": "pass@k", "variant": variant, **_pass_at(apply, final, test, cfg, jax.random.key(5))})
    figures = [] if out_dir is None else [harness.figure(
        out_dir, "grpo.png", functools.partial(plot, rows=rows), panels=3,
        title=f"GRPO from an SFT start: {cfg.prompts} prompts x {cfg.group} samples per step, {cfg.digits}-digit "
              f"addition")]
    return harness.result("grpo", rows, supports, figures, seconds=round(time.perf_counter() - t0, 1),
                          config=dataclasses.asdict(cfg))


def report(res: harness.LessonResult) -> list[str]:
    c = [r for r in res.rows if r["part"] == "curve"]
    return [f"{v}: held-out accuracy {rs[0]['accuracy']:.2f} -> {rs[-1]['accuracy']:.2f}, mean response length "
            f"{rs[0]['mean_length']:.1f} -> {rs[-1]['mean_length']:.1f}"
            for v in VARIANTS for rs in [[r for r in c if r["variant"] == v]]]


def plot(axes, rows) -> None:
    a, b, c = axes
    for v in VARIANTS:
        rs = [r for r in rows if r["part"] == "curve" and r["variant"] == v]
        a.plot([r["step"] for r in rs], [r["accuracy"] for r in rs], "o-", label=v)
        b.plot([r["step"] for r in rs], [r["mean_length"] for r in rs], "o-", label=v)
    a.set_ylabel("held-out greedy accuracy")
    b.set_ylabel("mean response length (tokens)")
    for ax in (a, b):
        ax.set_xlabel("RL step")
        ax.legend()
        ax.grid(alpha=0.3)
    pk = [r for r in rows if r["part"] == "pass@k"]
    names = [k for k in pk[0] if k.startswith("pass@")]
    x = np.arange(len(pk))
    for i, n in enumerate(names):
        c.bar(x + 0.4 * i, [r[n] for r in pk], 0.4, label=n)
    c.set_xticks(x + 0.2, [r["variant"] for r in pk])
    c.set_ylabel("held-out pass@k")
    c.legend()
