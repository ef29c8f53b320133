"""Lesson: rectified linear units in deep plain nets (Glorot, Bordes & Bengio 2011; Krizhevsky, Sutskever &
Hinton 2012, Fig. 1; the vanishing gradient of Glorot & Bengio 2010, Fig. 7).

Deep plain MLPs (``depth`` hidden layers of ``width`` units, no normalisation, no skip connections) with
sigmoid, tanh and ReLU, each with its customary variance-preserving initialisation (Glorot & Bengio 2010 for
sigmoid and tanh, He et al. 2015 for ReLU). Measured at initialisation, by the hand backward of
``lineage_jax/foundations/mlp.py``:

    ‖∂E/∂W_l‖ per layer   sigmoid's f' ≤ 1/4 shrinks δ_l = (δ_{l+1} W_{l+1}ᵀ) ⊙ f'(a_l) at every layer: the
                          first layer's gradient is orders of magnitude below the last's (vanishing)
    P(h = 0) with ReLU    max(0, a) is exactly zero for about half the units (Glorot et al. 2011, §3: sparsity)

and in training (SGD with momentum 0.9 on random labels, so the rate measures optimisation alone, not how
well a function class fits a teacher): steps to 25% training error, each activation at its fastest
learning rate of a small grid (as AlexNet chose them, "independently … as fast as possible"). AlexNet's
Fig. 1 (a 4-layer CNN on CIFAR-10): ReLU reached 25% training error six times faster than tanh. The
ratio measured here is reported next to that number; in these plain MLPs it does not reproduce (the full
run: tanh 300 steps, ReLU 290, a ratio of 1.03; at 4–8 layers tanh was the faster), while sigmoid, at the
same depth, stalls. ``progress`` is unused: the races stop at the target, so they run their own loop of
jitted chunks rather than ``harness.fit``'s fixed step count.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from lineage_jax.config import ConfigError
from lineage_jax.foundations import mlp
from lineage_jax.foundations.tasks import random_labels
from lineage_jax.lessons import harness

ACTS = ("sigmoid", "tanh", "relu")
NATURAL_INIT = {"sigmoid": "glorot", "tanh": "glorot", "relu": "he"}
ALEXNET_RATIO = 6.0   # Krizhevsky et al. 2012, Fig. 1: tanh needs ~6× the epochs of ReLU to reach 25%


def at_init(params, x, y, act: str) -> dict:
    """Per-layer ‖∂E/∂W_l‖ (hand backward) and the fraction of hidden units exactly zero."""
    _, grads = mlp.loss_and_grad(params, x, y, act)
    norms = [float(jnp.linalg.norm(g["w"])) for g in grads]
    _, cache = mlp.forward(params, x, act)
    f = mlp.ACTIVATIONS[act][0]
    hidden = [f(a) for _, a in cache[:-1]]
    return {"norms": norms, "zero_fraction": float(np.mean([float((h == 0).mean()) for h in hidden]))}


def make_chunk(act: str, lr: float, momentum: float, x, y):
    """A pure, jitted chunk of SGD-with-momentum updates (one per row of ``idx``), then the training error
    on the whole training set."""
    def update(state, idx):
        params, velocity = state
        _, grads = mlp.loss_and_grad(params, x[idx], y[idx], act)
        velocity = jax.tree.map(lambda v, g: momentum * v - lr * g, velocity, grads)
        return (jax.tree.map(jnp.add, params, velocity), velocity), None

    def chunk(state, idx):
        state, _ = jax.lax.scan(update, state, idx)
        return state, {"train_error": 1.0 - mlp.accuracy(state[0], x, y, act)}
    return jax.jit(chunk)


def race(act, params, x, y, lr, cfg, progress) -> tuple[int | None, list[dict]]:
    """Updates until the training error reaches the target (None: not within ``cfg.steps``) and the curve."""
    n, every = x.shape[0], cfg.eval_every
    chunk = make_chunk(act, lr, cfg.momentum, x, y)
    batch_at = lambda c: jnp.asarray(np.random.default_rng([cfg.seed, c]).integers(0, n, (every, cfg.batch)))
    state, curve = (params, jax.tree.map(jnp.zeros_like, params)), []
    for c in range(1, cfg.steps // every + 1):        # stops at the target: harness.fit runs a fixed count
        state, metrics = chunk(state, batch_at(c))
        curve.append({"step": c * every, "train_error": float(metrics["train_error"])})
        if curve[-1]["train_error"] <= cfg.target_error:
            return c * every, curve
    return None, curve


@dataclasses.dataclass(frozen=True)
class Config:
    seed: int = 0
    depth: int = 12              # hidden layers
    width: int = 64
    examples: int = 1024
    inputs: int = 32
    classes: int = 10
    batch: int = 128
    steps: int = 3000            # most updates per race
    eval_every: int = 10
    lrs: str = "0.003,0.01,0.03,0.1"   # each activation races at its fastest of these
    momentum: float = 0.9
    target_error: float = 0.25   # AlexNet Fig. 1's 25% training error

    def __post_init__(self):
        harness.at_least_one(self, "depth", "width", "examples", "inputs", "classes", "batch", "steps", "eval_every")
        harness.positive_list("lrs", self.lrs, float, "0.01,0.1")
        if not 0 < self.target_error < 1 or not 0 <= self.momentum < 1:
            raise ConfigError(f"target_error={self.target_error}, momentum={self.momentum}: each must be in (0, 1)")

    @property
    def lr_grid(self) -> list[float]:
        return harness.positive_list("lrs", self.lrs, float, "0.01,0.1")


QUICK = dict(depth=8, steps=600, lrs="0.1", examples=512)


def supports(rows: list[dict]) -> bool:
    """Sigmoid's first-layer gradient is < 1% of its last layer's; ReLU zeroes 40–60% of units at init;
    ReLU reaches the target error and does so before sigmoid does (sigmoid may never reach it)."""
    by = {r["activation"]: r for r in rows if "activation" in r}
    relu, sig = by["relu"], by["sigmoid"]
    return (sig["first_over_last"] < 1e-2 and 0.4 <= relu["zero_fraction"] <= 0.6
            and relu["steps_to_target"] is not None
            and (sig["steps_to_target"] is None or relu["steps_to_target"] < sig["steps_to_target"]))


def run(cfg: Config, out_dir: str | Path | None = None, progress: bool = True) -> harness.LessonResult:
    t0 = time.perf_counter()
    x, y = random_labels(cfg.seed, cfg.examples, cfg.inputs, cfg.classes)
    sizes = [cfg.inputs] + [cfg.width] * cfg.depth + [cfg.classes]
    rows, norms, curves = [], {}, {}
    for act in ACTS:
        params = mlp.init(jax.random.key(cfg.seed + 1), sizes, NATURAL_INIT[act])
        init = at_init(params, x[:256], y[:256], act)
        races = {lr: race(act, params, x, y, lr, cfg, progress) for lr in cfg.lr_grid}
        best = min(races, key=lambda lr: (races[lr][0] is None, races[lr][0] or 0, -lr))
        steps, curve = races[best]
        norms[act], curves[act] = init["norms"], curve
        rows.append({"activation": act, "init": NATURAL_INIT[act], "grad_norm_first": init["norms"][0],
                     "grad_norm_last": init["norms"][-1], "first_over_last": init["norms"][0] / init["norms"][-1],
                     "zero_fraction": init["zero_fraction"], "best_lr": best, "steps_to_target": steps,
                     "final_train_error": curve[-1]["train_error"],
                     "steps_by_lr": {str(lr): s for lr, (s, _) in races.items()}})
    by = {r["activation"]: r for r in rows}
    ratio = (by["tanh"]["steps_to_target"] / by["relu"]["steps_to_target"]
             if by["tanh"]["steps_to_target"] and by["relu"]["steps_to_target"] else None)
    rows.append({"comparison": "tanh steps / ReLU steps to target", "measured": ratio, "alexnet": ALEXNET_RATIO})
    figures = [] if out_dir is None else [harness.figure(
        out_dir, "relu.png", lambda axes: plot(axes, norms, curves, cfg), panels=2,
        title=f"{cfg.depth} hidden layers × {cfg.width}: sigmoid, tanh, ReLU")]
    return harness.result("relu", rows, supports, figures, tanh_over_relu=ratio, alexnet_ratio=ALEXNET_RATIO,
                          alexnet_ratio_reproduced=ratio is not None and ratio >= ALEXNET_RATIO / 2,
                          seconds=round(time.perf_counter() - t0, 1), config=dataclasses.asdict(cfg))


def report(res: harness.LessonResult) -> list[str]:
    d = res.details
    ratio = "n/a" if d["tanh_over_relu"] is None else f"{d['tanh_over_relu']:.2f}x"
    return [f"steps to {d['config']['target_error']:.0%} training error, tanh / ReLU: {ratio} "
            f"(AlexNet Fig. 1: ~{d['alexnet_ratio']:.0f}x; reproduced here: {d['alexnet_ratio_reproduced']})"]


def plot(axes, norms, curves, cfg) -> None:
    a, b = axes
    for act in ACTS:
        a.semilogy(range(1, len(norms[act]) + 1), norms[act], "o-", label=act)
        b.plot([r["step"] for r in curves[act]], [r["train_error"] for r in curves[act]], label=act)
    a.set_xlabel("layer (1 = input side)")
    a.set_ylabel("‖∂E/∂W_l‖ at initialisation")
    a.legend()
    a.grid(alpha=0.3)
    b.axhline(cfg.target_error, color="k", ls="--", lw=1, label=f"{cfg.target_error:.0%} target")
    b.set_xlabel("update")
    b.set_ylabel("training error (random labels)")
    b.legend()
    b.grid(alpha=0.3)
