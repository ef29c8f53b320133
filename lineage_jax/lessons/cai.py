"""Lesson: Constitutional AI / RLAIF against a gold preference (Bai et al. 2022; Lee et al. 2023).

The toy task of ``lineage_jax/align/task.py`` (instructions over short words answered right, wrong, padded
or rude; ``gold_score`` — correct, then brief, then polite — only measures). The chain, all from
``lineage_jax/align``, on one device and in memory:

1. SFT of a small GPT on the crowd's demonstrations (as in the ``rlhf`` lesson);
2. the AI feedback model (``align.feedback``): the SFT trunk with one head per principle of the written
   constitution (``align.constitution``), trained on its few worked examples only;
3. SL-CAI: the SFT policy's own samples on training prompts are critiqued by the judge and revised (the
   best of a few fresh samples by the constitution), then SFT on the revisions;
4. RLAIF: the same comparison pairs the noisy human labelled, re-ordered by the judge, then DPO (β)
   from SFT; beside it RLHF = DPO on the human's labels, and the full CAI chain = DPO on AI labels from the
   SL-CAI policy.

Measured: the agreement of each labeller with the gold preference (on pairs gold does not tie), the gold
score of every policy on held-out prompts, its KL to SFT. The verdict is read off those rows — if AI
feedback is worse at this scale, the result says so.
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
from lineage_jax.align import cai, constitution as C, dataset, evaluate as ev, feedback as F, steps, task
from lineage_jax.align.config import PROMPT_WIDTH
from lineage_jax.config import ConfigError, load_config
from lineage_jax.lessons import harness
from lineage_jax.tokenize import get_tokenizer
from lineage_jax.train.state import TrainState
from parallel import precision

T = 32


@dataclasses.dataclass(frozen=True)
class Config:
    sft_steps: int = 800
    judge_steps: int = 150
    examples: int = 32              # worked examples per principle (the judge's only teaching)
    revise_prompts: int = 1024      # SL-CAI: training prompts whose samples are critiqued and revised
    candidates: int = 4             # SL-CAI: fresh samples a revision is chosen from
    slcai_steps: int = 200
    dpo_steps: int = 150
    beta: float = 0.5
    batch: int = 32
    eval_prompts: int = 256
    tolerance: float = 0.1          # the claim's "about as well as RLHF" (gold score)
    train_rows: int = 4000
    width: int = 64
    layers: int = 2
    seed: int = 0

    def __post_init__(self):
        harness.at_least_one(self, "sft_steps", "judge_steps", "revise_prompts", "candidates", "slcai_steps",
                                   "dpo_steps", "batch", "eval_prompts", "train_rows", "width", "layers")
        if self.examples < 2:
            raise ConfigError(f"examples={self.examples}: must be at least 2 (one following, one breaking)")
        if not self.beta > 0:
            raise ConfigError(f"beta={self.beta}: must be > 0")
        if self.tolerance < 0:
            raise ConfigError(f"tolerance={self.tolerance}: must be >= 0")


QUICK = dict(sft_steps=40, judge_steps=10, examples=8, revise_prompts=16, candidates=2, slcai_steps=5, dpo_steps=5,
             batch=8, eval_prompts=16, train_rows=200, width=32, layers=1)


def supports(rows: list[dict]) -> bool:
    """AI labels agree with gold about as often as the human's (within 5 points), and SL-CAI, RLAIF and the
    full CAI chain each raise the gold score over SFT, RLAIF to within ``tolerance`` of RLHF."""
    by = {r["policy"]: r for r in rows}
    sft, tol = by["sft"]["gold"], by["sft"]["tolerance"]
    return (by["rlaif"]["agreement"] >= by["rlhf"]["agreement"] - 0.05
            and all(by[p]["gold"] > sft for p in ("sl-cai", "rlaif", "cai"))
            and by["rlaif"]["gold"] >= by["rlhf"]["gold"] - tol)


def _state(params, tx):
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      loss_scale=precision.loss_scale_for("fp32", 1.0))


def _fit(step, state, batch_at, n, progress, desc):
    return harness.fit(jax.jit(step), state, batch_at, n, log_every=max(n // 5, 1), progress=progress, desc=desc)[0]


def run(cfg: Config, out_dir: str | Path | None = None, progress: bool = True) -> harness.LessonResult:
    tok = get_tokenizer("byte")
    mcfg = load_config("tiny", [f"model.layers={cfg.layers}", f"model.width={cfg.width}", "model.heads=4",
                                f"model.context={T}", "model.attn_chunks=1"]).model
    model = models.build(mcfg)
    rows = list(task.examples(cfg.seed, cfg.train_rows))
    test_prompts = [r["prompt"] for r in task.examples(cfg.seed + 1000, cfg.eval_prompts)]
    P_ = [r["prompt"] for r in rows]
    demo = dataset.encode(tok, P_, [r["demonstration"] for r in rows], T)
    ch = dataset.encode(tok, P_, [r["chosen"] for r in rows], T)
    rj = dataset.encode(tok, P_, [r["rejected"] for r in rows], T)
    rng = np.random.default_rng(cfg.seed)
    idx = lambda n: (lambda s: rng.integers(0, n, cfg.batch))   # noqa: E731

    def sft_on(params, enc, n_steps, desc):
        tx, draw = optax.adam(3e-3 if desc == "sft" else 1e-3), idx(len(enc["tokens"]))
        return _fit(steps.make_sft_step(model, tx), _state(params, tx),
                    lambda s: (lambda i: {"tokens": enc["tokens"][i], "mask": enc["mask"][i]})(draw(s)), n_steps,
                    progress, desc).params

    init = nn.unbox(model.init(jax.random.key(cfg.seed), jnp.zeros((1, T), jnp.int32))["params"])
    sft = sft_on(init, demo, cfg.sft_steps, "sft")

    # 2. the AI feedback model, from the constitution's worked examples only
    exb = cai.judge_batch(tok, C.worked_examples(cfg.examples, seed=cfg.seed + 12345), T)
    tx = optax.adam(1e-3)
    judge = _fit(F.make_judge_step(model, tx), _state(F.init_judge(jax.random.key(1), sft, cfg.width, len(C.NAMES)),
                                                      tx), lambda s: exb, cfg.judge_steps, progress, "judge").params
    held = list(task.examples(cfg.seed + 2000, 256))   # responses of every kind, held out (measurement only)
    judge_acc = cai.judge_accuracy(model, judge, tok, [r["prompt"] for r in held] * 2,
                                   [r["chosen"] for r in held] + [r["rejected"] for r in held], T)

    # 4. AI labels on the human's pairs
    ai_ch, ai_rj, ai_first = cai.relabel(model, judge, ch, rj)
    human_agree = cai.agreement(P_, [r["chosen"] for r in rows], [r["rejected"] for r in rows], np.ones(len(rows)))
    ai_agree = cai.agreement(P_, [r["chosen"] for r in rows], [r["rejected"] for r in rows], ai_first)

    # 3. SL-CAI: critique (the judge's verdicts on the policy's own samples) and revision, then SFT on revisions
    revised, slcai_info = cai.revise(model, sft, judge, tok, P_[:cfg.revise_prompts], candidates=cfg.candidates,
                                     new_tokens=T - PROMPT_WIDTH, seed=cfg.seed + 100)
    slcai = sft_on(sft, revised, cfg.slcai_steps, "sl-cai")

    logprob = jax.jit(steps.make_logprob_fn(model))

    def dpo(start, c, r, desc):
        tx, draw = optax.adam(3e-4), idx(len(c["tokens"]))

        def batch(s):
            i = draw(s)
            b = {"chosen": c["tokens"][i], "chosen_mask": c["mask"][i], "rejected": r["tokens"][i],
                 "rejected_mask": r["mask"][i]}
            b["ref_chosen"] = logprob(start, b["chosen"], b["chosen_mask"])[0]
            b["ref_rejected"] = logprob(start, b["rejected"], b["rejected_mask"])[0]
            return b
        return _fit(steps.make_dpo_step(model, tx, beta=cfg.beta), _state(start, tx), batch, cfg.dpo_steps,
                    progress, desc).params

    policies = [("sft", "-", sft, None), ("sl-cai", "ai critique", slcai, None),
                ("rlhf", "human", dpo(sft, ch, rj, "dpo human"), human_agree),
                ("rlaif", "ai", dpo(sft, ai_ch, ai_rj, "dpo ai"), ai_agree),
                ("cai", "ai", dpo(slcai, ai_ch, ai_rj, "dpo ai from sl-cai"), ai_agree)]
    table = []
    for name, labels, params, agree in policies:
        r = ev.evaluate(model, params, sft, tok, test_prompts, new_tokens=T - PROMPT_WIDTH, seed=cfg.seed + 7)
        table.append({"policy": name, "labels": labels, "agreement": agree, "gold": r["gold"], "correct": r["correct"],
                      "rude": r["rude"], "length": r["length"], "kl": r["kl"], "tolerance": cfg.tolerance})
    figures = [] if out_dir is None else [
        harness.figure(out_dir, "cai_gold.png", lambda axes: _draw(axes, table), panels=2,
                       title="Constitutional AI: labels and policies against the gold preference")]
    return harness.result("cai", table, supports, figures, constitution=C.render(), judge_accuracy=judge_acc,
                          slcai=slcai_info,
                          config=dataclasses.asdict(cfg))


def report(res: harness.LessonResult) -> list[str]:
    d = res.details
    acc = ", ".join(f"{k} {v:.2f}" for k, v in d["judge_accuracy"].items())
    s = d["slcai"]
    return [f"judge verdicts vs the task's truth (held-out): {acc}",
            f"SL-CAI: {s['critiqued']:.0%} of samples critiqued; gold of samples {s['gold_samples']:.3f} -> "
            f"revisions {s['gold_revisions']:.3f}"]


def _draw(axes, rows) -> None:
    lab = [r for r in rows if r["agreement"] is not None][:2]
    axes[0].bar([r["labels"] for r in lab], [r["agreement"] for r in lab], color=["tab:blue", "tab:orange"])
    axes[0].set_ylabel("agreement with gold (pairs gold does not tie)")
    axes[0].set_ylim(0, 1)
    axes[0].set_title("labellers")
    for r in rows:
        axes[1].scatter(r["kl"], r["gold"], s=50, label=r["policy"])
    axes[1].set_xlabel("KL(π ‖ π_SFT), nats per response")
    axes[1].set_ylabel("gold score (held-out prompts)")
    axes[1].set_title("policies")
    axes[1].grid(alpha=0.3)
    axes[1].legend()
