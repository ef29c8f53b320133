"""Lesson: backpropagation written out by hand (Rumelhart, Hinton & Williams 1986), and reverse-mode
automatic differentiation as a tape of primitives (Linnainmaa 1970).

(a) A multi-layer perceptron whose backward pass is the generalised delta rule by hand (the paper's
    eqs. 13–14, ``lineage_jax/foundations/mlp.py``; no ``jax.grad``), trained by the paper's rule with
    momentum (eq. 9): Δw(t) = −ε ∂E/∂w(t) + α Δw(t−1), on XOR (the paper's first example, §"XOR") and on
    two interleaved spirals (Lang & Witbrock 1988), each to 100% training accuracy.
(b) A tiny reverse-mode AD (``lineage_jax/foundations/tape.py``): a graph of primitives walked once in
    reverse topological order.

Proof rows: on random nets (random widths, depths, activations), in float64, the hand backward = the tape
= ``jax.grad`` = central finite differences, each relative error ≤ 1e-6.
"""
from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from lineage_jax.config import ConfigError
from lineage_jax.foundations import gradcheck, mlp, tape
from lineage_jax.lessons import harness

TOLERANCE = 1e-6


# --------------------------------------------------------------------------- the data

def xor() -> tuple[np.ndarray, np.ndarray]:
    """The four XOR patterns (inputs in {0, 1}², class = x1 XOR x2)."""
    x = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], np.float32)
    return x, np.array([0, 1, 1, 0], np.int32)


def spirals(points: int = 97) -> tuple[np.ndarray, np.ndarray]:
    """Lang & Witbrock's two spirals: ``points`` per spiral, three turns each, the second the first
    rotated by π; inputs scaled to [−1, 1]."""
    i = np.arange(points)
    angle = i * math.pi / 16.0
    radius = (104 - i) / 104.0
    a = np.stack([radius * np.sin(angle), radius * np.cos(angle)], 1)
    return np.concatenate([a, -a]).astype(np.float32), np.repeat(np.array([0, 1], np.int32), points)


# --------------------------------------------------------------------------- training by the delta rule

def make_train_step(act: str, lr: float, momentum: float):
    """A pure, jitted step: hand gradients, then eq. 9's momentum update; state = (params, Δw)."""
    def train_step(state, batch):
        params, velocity = state
        x, y = batch
        loss, grads = mlp.loss_and_grad(params, x, y, act)
        velocity = jax.tree.map(lambda v, g: momentum * v - lr * g, velocity, grads)
        params = jax.tree.map(lambda p, v: p + v, params, velocity)
        return (params, velocity), {"loss": loss, "accuracy": mlp.accuracy(params, x, y, act)}
    return jax.jit(train_step)


def train(task: str, x, y, sizes, act, steps, lr, momentum, seed, progress):
    params = mlp.init(jax.random.key(seed), sizes, "glorot")
    state = (params, jax.tree.map(jnp.zeros_like, params))
    batch = (jnp.asarray(x), jnp.asarray(y))
    state, history, _ = harness.fit(make_train_step(act, lr, momentum), state, lambda s: batch, steps,
                                    log_every=max(1, steps // 100), progress=progress, desc=f"backprop {task}")
    return state[0], history


# --------------------------------------------------------------------------- the proof

def random_net(rng: np.random.Generator) -> tuple[list[int], str]:
    depth = int(rng.integers(1, 4))
    return [int(rng.integers(2, 6)) for _ in range(depth + 1)] + [int(rng.integers(2, 5))], \
        str(rng.choice(["tanh", "sigmoid", "relu"]))


def check_gradients(seed: int, sizes: list[int], act: str, batch: int = 5) -> dict:
    """Hand, tape, jax.grad and central differences on one random net and batch, in float64."""
    with jax.enable_x64(True):
        kx, kp, ky = jax.random.split(jax.random.key(seed), 3)
        params = mlp.init(kp, sizes, "glorot", jnp.float64)
        params = [{"w": p["w"], "b": jax.random.normal(k, p["b"].shape, jnp.float64) * 0.1}
                  for p, k in zip(params, jax.random.split(ky, len(params)))]
        x = jax.random.normal(kx, (batch, sizes[0]), jnp.float64)
        y = jax.random.randint(ky, (batch,), 0, sizes[-1])
        loss, hand = mlp.loss_and_grad(params, x, y, act)
        auto = jax.grad(mlp.loss)(params, x, y, act)
        np_params = jax.tree.map(np.asarray, params)
        _, (taped,) = tape.grad(lambda p: tape.mlp_loss(p, np.asarray(x), np.asarray(y), act), np_params)
        loss_fn = jax.jit(mlp.loss, static_argnums=3)
        numeric = gradcheck.central_differences(lambda p: loss_fn(p, x, y, act), np_params)
        hand = jax.tree.map(np.asarray, hand)
        return {"check": f"{act} {'-'.join(map(str, sizes))}", "params": int(gradcheck.flatten(hand).size),
                "hand_vs_tape": gradcheck.relative_error(hand, taped),
                "hand_vs_jax_grad": gradcheck.relative_error(hand, jax.tree.map(np.asarray, auto)),
                "hand_vs_finite_diff": gradcheck.relative_error(hand, numeric),
                "tape_vs_finite_diff": gradcheck.relative_error(taped, numeric)}


ERRORS = ("hand_vs_tape", "hand_vs_jax_grad", "hand_vs_finite_diff", "tape_vs_finite_diff")


# --------------------------------------------------------------------------- the lesson

@dataclasses.dataclass(frozen=True)
class Config:
    seed: int = 0
    checks: int = 8              # random nets for the gradient proof
    xor_steps: int = 1000
    xor_hidden: int = 4
    spiral_steps: int = 5000
    spiral_hidden: int = 32      # two hidden layers of this width
    act: str = "tanh"
    lr: float = 0.5              # ε of eq. 9 (on the mean cross-entropy)
    momentum: float = 0.9        # α of eq. 9

    def __post_init__(self):
        harness.at_least_one(self, "checks", "xor_steps", "xor_hidden", "spiral_steps", "spiral_hidden")
        if self.act not in mlp.ACTIVATIONS or self.act == "linear":
            raise ConfigError(f"act={self.act}: unknown; allowed: tanh, sigmoid, relu")
        if not self.lr > 0 or not 0 <= self.momentum < 1:
            raise ConfigError(f"lr={self.lr}, momentum={self.momentum}: need lr > 0 and 0 <= momentum < 1")


QUICK = dict(checks=2, xor_steps=300, spiral_steps=2000, spiral_hidden=16)


def supports(rows: list[dict]) -> bool:
    """Every gradient agrees to ≤ 1e-6 and both tasks reach 100% training accuracy."""
    checks = [r for r in rows if "check" in r]
    trained = [r for r in rows if "task" in r]
    return bool(checks) and all(r[e] <= TOLERANCE for r in checks for e in ERRORS) \
        and len(trained) == 2 and all(r["train_accuracy"] == 1.0 for r in trained)


def run(cfg: Config, out_dir: str | Path | None = None, progress: bool = True) -> harness.LessonResult:
    t0 = time.perf_counter()
    rng = np.random.default_rng(cfg.seed)
    rows = [check_gradients(cfg.seed * 1000 + i, *random_net(rng)) for i in range(cfg.checks)]

    curves, nets = {}, {}
    for task, (x, y), sizes, steps in (("xor", xor(), [2, cfg.xor_hidden, 2], cfg.xor_steps),
                                       ("spirals", spirals(), [2, cfg.spiral_hidden, cfg.spiral_hidden, 2],
                                        cfg.spiral_steps)):
        params, history = train(task, x, y, sizes, cfg.act, steps, cfg.lr, cfg.momentum, cfg.seed, progress)
        acc = float(mlp.accuracy(params, jnp.asarray(x), jnp.asarray(y), cfg.act))
        first = next((r["step"] for r in history if r["accuracy"] == 1.0), None)
        rows.append({"task": task, "net": "-".join(map(str, sizes)), "points": len(y), "steps": steps,
                     "train_accuracy": acc, "final_loss": history[-1]["loss"], "first_step_at_100pct": first})
        curves[task], nets[task] = history, (params, x, y)

    figures = [] if out_dir is None else [harness.figure(
        out_dir, "backprop.png", lambda axes: plot(axes, curves, nets, cfg.act), panels=2,
        title="Backpropagation by hand: the delta rule with momentum (Rumelhart et al. 1986)")]
    return harness.result("backprop", rows, supports, figures, tolerance=TOLERANCE,
                          worst_error=max(r[e] for r in rows if "check" in r for e in ERRORS),
                          seconds=round(time.perf_counter() - t0, 1), config=dataclasses.asdict(cfg))


def report(res: harness.LessonResult) -> list[str]:
    d = res.details
    trained = [r for r in res.rows if "task" in r]
    return [f"worst relative gradient error over {d['config']['checks']} random nets: {d['worst_error']:.2g} "
            f"(tolerance {d['tolerance']:g})"] + \
        [f"{r['task']}: training accuracy {r['train_accuracy']:.0%} after {r['steps']} steps "
         f"(first 100% at step {r['first_step_at_100pct']})" for r in trained]


def plot(axes, curves, nets, act) -> None:
    a, b = axes
    for task, history in curves.items():
        a.plot([r["step"] for r in history], [r["loss"] for r in history], label=task)
    a.set_xlabel("step")
    a.set_ylabel("cross-entropy (nats)")
    a.set_yscale("log")
    a.legend()
    a.grid(alpha=0.3)
    params, x, y = nets["spirals"]
    g = np.linspace(-1.1, 1.1, 200, dtype=np.float32)
    grid = np.stack(np.meshgrid(g, g), -1).reshape(-1, 2)
    p = np.asarray(jax.nn.softmax(mlp.forward(params, jnp.asarray(grid), act)[0])[:, 1]).reshape(200, 200)
    b.contourf(g, g, p, levels=20, cmap="coolwarm", alpha=0.6)
    b.scatter(x[:, 0], x[:, 1], c=y, cmap="coolwarm", edgecolors="k", s=12)
    b.set_title("two spirals: the learned decision surface")
    b.set_aspect("equal")
