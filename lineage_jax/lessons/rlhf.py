"""Lesson: RLHF and DPO against a gold preference (Ouyang et al. 2022; Rafailov et al. 2023; Gao et al. 2023).

The toy task of ``lineage_jax/align/task.py``: instructions over short words answered right, wrong, verbose or
rude; a program (``gold_score``: correct, then brief, then polite) plays the human, and a Bradley–Terry
labeller on it makes the noisy comparisons. The chain, all from ``lineage_jax/align`` (the pure steps the
``lineage align`` command runs, here on one device and in memory):

1. SFT of a small GPT on the crowd's demonstrations (mostly right, some verbose, rude or wrong);
2. a reward model (the SFT trunk + a scalar head) on the noisy pairs, Bradley–Terry loss;
3. DPO from the SFT policy, one run per β;
4. PPO from the SFT policy on the reward model's score with a per-token KL penalty to SFT, one run per β_KL.

Each policy samples responses to held-out prompts; rows report the gold score (never seen by training),
the share correct and rude, the KL to the SFT reference (nats per response) and the reward model's score
(the proxy PPO optimises). Figures: gold against KL for every policy (DPO paper Fig. 2's frontier), and
PPO's proxy and gold over iterations (Gao et al.'s over-optimisation: the proxy may keep rising while gold
does not).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from lineage_jax import models
from lineage_jax.align import dataset, evaluate as ev, heads, steps, task
from lineage_jax.align.config import PROMPT_WIDTH
from lineage_jax.align.rollout import rollout
from lineage_jax.config import ConfigError, load_config
from lineage_jax.lessons import harness
from lineage_jax.tokenize import get_tokenizer
from lineage_jax.train.state import TrainState
from parallel import precision

T = 32


@dataclasses.dataclass(frozen=True)
class Config:
    sft_steps: int = 800
    rm_steps: int = 300
    dpo_steps: int = 150
    ppo_iters: int = 25
    betas: str = "0.1,0.5"          # DPO β, one run each
    kl_coefs: str = "0.02,0.2"      # PPO β_KL, one run each
    batch: int = 32
    eval_prompts: int = 256
    kl_bound: float = 15.0          # the claim's "bounded KL" (nats per response)
    train_rows: int = 4000
    width: int = 64
    layers: int = 2
    seed: int = 0

    def __post_init__(self):
        harness.at_least_one(self, "sft_steps", "rm_steps", "dpo_steps", "ppo_iters", "batch", "eval_prompts",
                                   "train_rows", "width", "layers")
        if self.batch % 2:
            raise ConfigError(f"batch={self.batch}: must be even (PPO's two minibatches)")
        harness.positive_list("betas", self.betas, float, "0.1,0.5")
        harness.positive_list("kl_coefs", self.kl_coefs, float, "0.02,0.2")


QUICK = dict(sft_steps=40, rm_steps=10, dpo_steps=5, ppo_iters=2, betas="0.5", kl_coefs="0.2", batch=8,
             eval_prompts=16, train_rows=200, width=32, layers=1)


def supports(rows: list[dict]) -> bool:
    """DPO and PPO each raise the gold score over SFT with a policy whose KL to SFT stays within the bound."""
    sft = next(r for r in rows if r["policy"] == "sft")
    bound = sft["kl_bound"]
    best = lambda name: max((r["gold"] for r in rows if r["policy"] == name and r["kl"] <= bound),  # noqa: E731
                            default=-np.inf)
    return best("dpo") > sft["gold"] and best("ppo") > sft["gold"]


def _state(params, tx):
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      loss_scale=precision.loss_scale_for("fp32", 1.0))


def _fit(step, state, batch_at, n, progress, desc):
    state, hist, _ = harness.fit(jax.jit(step), state, batch_at, n, log_every=max(n // 5, 1), progress=progress,
                                 desc=desc)
    return state, hist


def run(cfg: Config, out_dir: str | Path | None = None, progress: bool = True) -> harness.LessonResult:
    tok = get_tokenizer("byte")
    mcfg = load_config("tiny", [f"model.layers={cfg.layers}", f"model.width={cfg.width}", "model.heads=4",
                                f"model.context={T}", "model.attn_chunks=1"]).model
    model = models.build(mcfg)
    rows = list(task.examples(cfg.seed, cfg.train_rows))
    test = list(task.examples(cfg.seed + 1000, cfg.eval_prompts))
    prompts = [r["prompt"] for r in test]
    demo = dataset.encode(tok, [r["prompt"] for r in rows], [r["demonstration"] for r in rows], T)
    ch = dataset.encode(tok, [r["prompt"] for r in rows], [r["chosen"] for r in rows], T)
    rj = dataset.encode(tok, [r["prompt"] for r in rows], [r["rejected"] for r in rows], T)
    rng = np.random.default_rng(cfg.seed)
    idx = lambda step: rng.integers(0, len(rows), cfg.batch)   # noqa: E731
    B = cfg.batch

    init = nn.unbox(model.init(jax.random.key(cfg.seed), jnp.zeros((1, T), jnp.int32))["params"])
    tx = optax.adam(3e-3)
    st, _ = _fit(steps.make_sft_step(model, tx), _state(init, tx),
                 lambda s: (lambda i: {"tokens": demo["tokens"][i], "mask": demo["mask"][i]})(idx(s)),
                 cfg.sft_steps, progress, "sft")
    sft = st.params

    tx = optax.adam(1e-3)
    rm0 = {"lm": sft, "head": heads.init_head(jax.random.key(1), cfg.width)}
    st, _ = _fit(steps.make_rm_step(model, tx), _state(rm0, tx), lambda s: (lambda i: {
        "chosen": ch["tokens"][i], "chosen_lengths": ch["lengths"][i], "rejected": rj["tokens"][i],
        "rejected_lengths": rj["lengths"][i]})(idx(s)), cfg.rm_steps, progress, "reward model")
    rm = st.params
    tch = dataset.encode(tok, prompts, [r["chosen"] for r in test], T)
    trj = dataset.encode(tok, prompts, [r["rejected"] for r in test], T)
    rm_acc = float(steps.make_rm_eval(model)(rm, {"chosen": tch["tokens"], "chosen_lengths": tch["lengths"],
                                                  "rejected": trj["tokens"], "rejected_lengths": trj["lengths"]})["accuracy"])
    reward_fn = jax.jit(lambda p, t, n: heads.sequence_rewards(model, p, t, n))

    def measure(name, param, lm):
        r = ev.evaluate(model, lm, sft, tok, prompts, new_tokens=T - PROMPT_WIDTH, seed=cfg.seed + 7,
                        keep_rollouts=True)
        out = r["rollouts"]
        proxy = float(np.mean(reward_fn(rm, out["tokens"], out["lengths"])))
        return {"policy": name, "param": param, "gold": r["gold"], "correct": r["correct"], "rude": r["rude"],
                "kl": r["kl"], "proxy": proxy, "kl_bound": cfg.kl_bound}

    table = [measure("sft", 0.0, sft)]
    logprob = jax.jit(steps.make_logprob_fn(model))
    for beta in harness.positive_list("betas", cfg.betas, float, "0.1,0.5"):
        tx = optax.adam(3e-4)

        def dpo_batch(s):
            i = idx(s)
            b = {"chosen": ch["tokens"][i], "chosen_mask": ch["mask"][i], "rejected": rj["tokens"][i],
                 "rejected_mask": rj["mask"][i]}
            b["ref_chosen"] = logprob(sft, b["chosen"], b["chosen_mask"])[0]
            b["ref_rejected"] = logprob(sft, b["rejected"], b["rejected_mask"])[0]
            return b
        st, _ = _fit(steps.make_dpo_step(model, tx, beta=beta), _state(sft, tx), dpo_batch, cfg.dpo_steps, progress,
                     f"dpo β={beta}")
        table.append(measure("dpo", beta, st.params))

    ids, lens = dataset.encode_prompts(tok, [r["prompt"] for r in rows], PROMPT_WIDTH)
    curves = {}
    for kl_coef in harness.positive_list("kl_coefs", cfg.kl_coefs, float, "0.02,0.2"):
        tx = optax.adam(3e-4)
        score = jax.jit(steps.make_score_fn(model, kl_coef=kl_coef, gamma=1.0, lam=0.95))
        update = jax.jit(steps.make_ppo_step(model, tx))
        st = _state({"lm": sft, "head": rm["head"]}, tx)
        curve = []
        for it in range(cfg.ppo_iters):
            i = idx(it)
            ro = rollout(model, st.params["lm"], ids[i], lens[i], jax.random.key(1000 + it), new_tokens=T - PROMPT_WIDTH,
                         eos_id=tok.eos_id, vocab_limit=tok.vocab_size)
            batch, info = score(st.params, sft, rm, {k: ro[k] for k in ("tokens", "mask", "lengths")})
            for _ in range(2):
                perm = rng.permutation(B)
                for half in (perm[:B // 2], perm[B // 2:]):
                    st, _ = update(st, {k: v[half] for k, v in batch.items()})
            if it % max(cfg.ppo_iters // 5, 1) == 0 or it == cfg.ppo_iters - 1:
                m = measure("ppo", kl_coef, st.params["lm"])
                curve.append({"iteration": it + 1, "proxy": m["proxy"], "gold": m["gold"], "kl": m["kl"]})
        curves[kl_coef] = curve
        table.append(measure("ppo", kl_coef, st.params["lm"]))

    figures = [] if out_dir is None else [
        harness.figure(out_dir, "rlhf_frontier.png", lambda ax: _frontier(ax, table), title="gold score vs KL to SFT"),
        harness.figure(out_dir, "rlhf_overoptimisation.png", lambda axes: _curves(axes, curves), panels=2,
                       title="PPO: proxy (reward model) and gold over iterations")]
    return harness.result("rlhf", table, supports, figures, rm_test_accuracy=rm_acc, ppo_curves=curves,
                          config=dataclasses.asdict(cfg))


def report(res: harness.LessonResult) -> list[str]:
    return [f"reward model accuracy on held-out noisy pairs: {res.details['rm_test_accuracy']:.3f}"]


def _frontier(ax, rows) -> None:
    for name, marker in (("sft", "s"), ("dpo", "o"), ("ppo", "^")):
        pts = [r for r in rows if r["policy"] == name]
        ax.scatter([r["kl"] for r in pts], [r["gold"] for r in pts], marker=marker, label=name, s=50)
        for r in pts:
            if name != "sft":
                ax.annotate(f"{r['param']:g}", (r["kl"], r["gold"]), fontsize=8)
    ax.set_xlabel("KL(π ‖ π_SFT), nats per response")
    ax.set_ylabel("gold score (held-out prompts)")
    ax.grid(alpha=0.3)
    ax.legend()


def _curves(axes, curves) -> None:
    for kl, curve in curves.items():
        axes[0].plot([c["kl"] for c in curve], [c["proxy"] for c in curve], "o-", label=f"β_KL={kl:g}")
        axes[1].plot([c["kl"] for c in curve], [c["gold"] for c in curve], "o-", label=f"β_KL={kl:g}")
    for ax, what in zip(axes, ("proxy reward (reward model)", "gold score")):
        ax.set_xlabel("KL(π ‖ π_SFT), nats per response")
        ax.set_ylabel(what)
        ax.grid(alpha=0.3)
        ax.legend()
