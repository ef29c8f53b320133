"""Lesson: mixed-precision training and loss scaling (Micikevicius et al. 2018, §3.2, Fig. 3).

A ReLU MLP (the linen ``nets.MLP``, dtype float16, param_dtype float32) trains with fp16 compute, float32 master weights (§3.1), the loss in float32 (§3.3) and the
project's dynamic loss scaling (``parallel/precision.py``: multiply the loss by S, unscale the gradients in
float32, skip a step and halve S on overflow, double S after ``period`` clean steps). At checkpoints, on a
fixed batch of training examples, the activation gradients δ_l = ∂E/∂a_l of every layer are computed four
ways (``lineage_jax/foundations/gradstats.py``): float32 (the reference), fp16 without scaling, fp16 at the
current S, and bf16 without scaling. Rows: the fraction of the non-zero float32 gradients that flush to
zero in each. As the net fits its training set, its δ shrink below fp16's 2^-24: unscaled fp16 loses them,
the dynamic S (shifting the histogram by log2 S) recovers them, bf16's float32 exponent range never loses
them. The PNG is the paper's Fig. 3: the histogram of log2|δ| with fp16's range marked.
"""
from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from lineage_jax.config import ConfigError
from lineage_jax.foundations import gradstats, mlp, nets
from lineage_jax.foundations.tasks import teacher_task
from lineage_jax.lessons import harness
from parallel import precision


@flax.struct.dataclass
class State:
    params: Any                       # float32 master weights (§3.1): a ``nets.MLP`` params tree
    opt_state: Any
    loss_scale: precision.LossScale


def model_for(params, policy: precision.Policy, act: str = "relu") -> nets.MLP:
    """The linen MLP of ``params``' widths computing in the policy's dtype, its parameters stored in float32."""
    return nets.MLP([params[f"layer_{l}"]["bias"].shape[0] for l in range(len(params))], act=act,
                    dtype=policy.compute_dtype, param_dtype=jnp.float32)


def make_train_step(tx, policy: precision.Policy, period: int, act: str = "relu"):
    """Pure ``train_step(state, (x, y)) -> (state, metrics)``: forward/backward in the policy's compute dtype
    (the module casts the float32 master weights, ``dtype`` apart from ``param_dtype``), S·L differentiated,
    gradients unscaled in float32; a non-finite step is skipped and S halved."""
    def train_step(state: State, batch):
        x, y = batch
        model = model_for(state.params, policy, act)

        def scaled_loss(params):
            logits = model.apply({"params": params}, x)
            loss = mlp.softmax_cross_entropy(logits.astype(jnp.float32), y)[0]     # §3.3: reductions in f32
            return precision.scale_loss(loss, state.loss_scale), loss
        grads, loss = jax.grad(scaled_loss, has_aux=True)(state.params)
        grads = precision.unscale(grads, state.loss_scale)
        finite = precision.all_finite(grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        new_params = optax.apply_updates(state.params, updates)
        params, opt_state = precision.select_update(finite, (new_params, opt_state), (state.params, state.opt_state))
        ls = precision.adjust(state.loss_scale, finite, period=period)
        return State(params=params, opt_state=opt_state, loss_scale=ls), \
            {"loss": loss, "scale": state.loss_scale.scale, "finite": finite.astype(jnp.float32)}
    return jax.jit(train_step)


def measure(params, x, y, scale: float, act: str = "relu") -> tuple[dict, list]:
    """Flushed fractions of the activation gradients on (x, y); and the float32 reference δ."""
    ref = gradstats.deltas(params, x, y, act, jnp.float32)
    fp16 = gradstats.deltas(params, x, y, act, jnp.float16)
    fp16_scaled = gradstats.deltas(params, x, y, act, jnp.float16, scale)
    bf16 = gradstats.deltas(params, x, y, act, jnp.bfloat16)
    return {"loss_scale": scale,
            "below_fp16_subnormal": gradstats.below_fraction(ref, gradstats.FP16_MIN_SUBNORMAL),
            "below_fp16_normal": gradstats.below_fraction(ref, gradstats.FP16_MIN_NORMAL),
            "fp16_flushed": gradstats.flushed_fraction(ref, fp16),
            "fp16_scaled_flushed": gradstats.flushed_fraction(ref, fp16_scaled),
            "fp16_scaled_overflow": float(np.mean([not np.isfinite(np.asarray(d, np.float32)).all()
                                                   for d in fp16_scaled])),
            "bf16_flushed": gradstats.flushed_fraction(ref, bf16),
            "fp16_norm_lost": gradstats.norm_lost(ref, fp16),
            "fp16_scaled_norm_lost": gradstats.norm_lost(ref, fp16_scaled, scale)}, ref


@dataclasses.dataclass(frozen=True)
class Config:
    seed: int = 0
    steps: int = 4000
    batch: int = 256
    hidden: int = 256            # two hidden ReLU layers
    n_train: int = 4096
    lr: float = 1e-3             # Adam
    init_scale: float = 2.0 ** 15
    period: int = 100            # clean steps before S doubles (Apex/GradScaler: 2000, for runs 100× longer)
    evals: int = 8

    def __post_init__(self):
        harness.at_least_one(self, "steps", "batch", "hidden", "n_train", "period", "evals")
        if not self.lr > 0 or not self.init_scale >= 1:
            raise ConfigError(f"lr={self.lr}, init_scale={self.init_scale}: need lr > 0 and init_scale >= 1")


QUICK = dict(steps=600, n_train=1024, evals=2, period=50)


def supports(rows: list[dict]) -> bool:
    """At the last checkpoint fp16 without scaling flushes ≥ 5% of the non-zero activation gradients, the
    dynamic loss scale recovers most of those (at most half still flushed) with no overflow, and bf16
    flushes < 0.1%."""
    last = rows[-1]
    return (last["fp16_flushed"] >= 0.05 and last["fp16_scaled_flushed"] <= last["fp16_flushed"] / 2
            and last["fp16_scaled_overflow"] == 0.0 and last["bf16_flushed"] < 1e-3)


def run(cfg: Config, out_dir: str | Path | None = None, progress: bool = True) -> harness.LessonResult:
    t0 = time.perf_counter()
    xtr, ytr, _, _ = teacher_task(cfg.seed, cfg.n_train, 1, inputs=16, classes=4, label_noise=0.0)
    tx = optax.adam(cfg.lr)
    # mlp.init's draw (He normal) in the linen tree: the committed results stay those of the same numbers
    params = nets.from_layers(mlp.init(jax.random.key(cfg.seed + 1), [16, cfg.hidden, cfg.hidden, 4], "he"))
    state = State(params=params, opt_state=tx.init(params), loss_scale=precision.loss_scale_init(cfg.init_scale))
    order = np.concatenate([np.random.default_rng(cfg.seed + 2).permutation(cfg.n_train)
                            for _ in range(-(-cfg.steps * cfg.batch // cfg.n_train))])
    batch_at = lambda s: (xtr[order[(s - 1) * cfg.batch: s * cfg.batch]], ytr[order[(s - 1) * cfg.batch: s * cfg.batch]])
    probe = (xtr[:cfg.batch], ytr[:cfg.batch])
    refs = {}

    def evaluate(st, step):
        layers = nets.to_layers(st.params)        # the hand backward of gradstats reads [{"w", "b"}, …]
        row, refs[step] = measure(layers, *probe, float(st.loss_scale.scale))
        return {**row, "skipped_steps": int(st.loss_scale.skipped),
                "train_accuracy": float(mlp.accuracy(layers, xtr, ytr, "relu"))}
    eval_at = sorted({1} | {round(cfg.steps * (i + 1) / cfg.evals) for i in range(cfg.evals)})
    state, history, rows = harness.fit(make_train_step(tx, precision.policy_for("fp16"), cfg.period), state,
                                       batch_at, cfg.steps, log_every=max(1, cfg.steps // 50), evaluate=evaluate,
                                       eval_at=eval_at, progress=progress, desc="fp16 + dynamic loss scaling")
    last = rows[-1]
    figures = [] if out_dir is None else [harness.figure(
        out_dir, "mixed_precision.png", lambda axes: plot(axes, refs[last["step"]], last, rows), panels=2,
        title="Activation gradients against fp16's range (Micikevicius et al. 2018, Fig. 3)")]
    return harness.result("mixed_precision", rows, supports, figures, final_loss_scale=last["loss_scale"],
                          fp16_flushed=last["fp16_flushed"], fp16_scaled_flushed=last["fp16_scaled_flushed"],
                          bf16_flushed=last["bf16_flushed"], final_loss=history[-1]["loss"],
                          seconds=round(time.perf_counter() - t0, 1), config=dataclasses.asdict(cfg))


def report(res: harness.LessonResult) -> list[str]:
    d = res.details
    return [f"activation gradients flushed to zero at the end: fp16 {d['fp16_flushed']:.1%}, fp16 with the dynamic "
            f"loss scale S = {d['final_loss_scale']:g}: {d['fp16_scaled_flushed']:.2%}, bf16 {d['bf16_flushed']:.2%}"]


def plot(axes, ref, last, rows) -> None:
    a, b = axes
    counts, edges = gradstats.log2_histogram(ref)
    shift = math.log2(last["loss_scale"])
    total = max(counts.sum(), 1)
    a.bar(edges[:-1], counts / total, width=1.0, align="edge", alpha=0.6, label="float32 δ (unscaled)")
    a.bar(edges[:-1] + shift, counts / total, width=1.0, align="edge", alpha=0.4, label=f"× S = 2^{shift:.0f}")
    for x, label in ((-24, "fp16 min subnormal 2^-24"), (-14, "fp16 min normal 2^-14"), (math.log2(65504), "fp16 max")):
        a.axvline(x, color="k", ls="--" if x != -24 else "-", lw=1)
        a.text(x, a.get_ylim()[1] * 0.9, label, rotation=90, ha="right", va="top", fontsize=7)
    a.axvspan(edges[0], -25, color="red", alpha=0.08, label="flushes to zero in fp16")
    a.set_xlabel("log2 |activation gradient|")
    a.set_ylabel("fraction of non-zero values")
    a.legend(fontsize=7, loc="upper left")
    steps = [r["step"] for r in rows]
    for key, label in (("fp16_flushed", "fp16, no scaling"), ("fp16_scaled_flushed", "fp16, dynamic S"),
                       ("bf16_flushed", "bf16, no scaling")):
        b.plot(steps, [r[key] for r in rows], "o-", label=label)
    b.set_xlabel("step")
    b.set_ylabel("fraction of non-zero δ flushed to zero")
    b.legend()
    b.grid(alpha=0.3)
