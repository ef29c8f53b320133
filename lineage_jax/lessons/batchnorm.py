"""Lesson: batch normalisation (Ioffe & Szegedy 2015), and its contrast with layer normalisation (Ba, Kiros &
Hinton 2016).

(a) The paper's §4.1 net: three fully connected hidden layers of 100 sigmoid units, with and without BN
    (Alg. 1 in training, Alg. 2's population statistics at test), trained by plain SGD at a learning rate
    where the plain net is slow (§3.3: BN "enables higher learning rates"). Rows: held-out accuracy (eval
    mode: running statistics) against step, and the steps each net needs to reach the target accuracy.
(b) BN's train/eval mismatch: in training mode each example is normalised by its batch's statistics, so at
    batch size 1 every pre-activation is exactly β (x − μ_B = 0) and at 2 it is ±γ + β; at test the running
    averages are used instead. The trained BN net's accuracy in training mode at batch size 1, 2, 8, 256
    against eval mode; LayerNorm normalises each example over its own features, so its two modes are the
    same function (mismatch exactly 0).

The network is Flax linen with logical axis names (``lineage_jax/nn/hooks.py``); BN's ``batch_stats``
collection is a value in the train state, threaded through the pure step like the parameters.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.core import meta

from lineage_jax.config import ConfigError
from lineage_jax.foundations.tasks import teacher_task
from lineage_jax.lessons import harness
from lineage_jax.nn.hooks import param

NORMS = ("none", "batch", "layer")


class Dense(nn.Module):
    features: int

    @nn.compact
    def __call__(self, x):
        w = param(self, "kernel", nn.initializers.lecun_normal(), (x.shape[-1], self.features), jnp.float32,
                  ("embed", "mlp"))
        b = param(self, "bias", nn.initializers.zeros_init(), (self.features,), jnp.float32, ("mlp",))
        return x @ w + b


class MLP(nn.Module):
    """[Dense → norm → sigmoid] × layers → Dense; norm = none | batch (flax BatchNorm) | layer (LayerNorm)."""
    hidden: int = 100
    layers: int = 3
    classes: int = 4
    norm: str = "batch"
    momentum: float = 0.9          # flax convention: running ← m·running + (1 − m)·batch

    @nn.compact
    def __call__(self, x, train: bool):
        ones = nn.with_logical_partitioning(nn.initializers.ones_init(), ("mlp",))
        zeros = nn.with_logical_partitioning(nn.initializers.zeros_init(), ("mlp",))
        for i in range(self.layers):
            x = Dense(self.hidden, name=f"dense{i}")(x)
            if self.norm == "batch":
                x = nn.BatchNorm(use_running_average=not train, momentum=self.momentum, epsilon=1e-5,
                                 scale_init=ones, bias_init=zeros, name=f"bn{i}")(x)
            elif self.norm == "layer":
                x = nn.LayerNorm(epsilon=1e-5, scale_init=ones, bias_init=zeros, name=f"ln{i}")(x)
            x = jax.nn.sigmoid(x)
        return Dense(self.classes, name="out")(x)


@flax.struct.dataclass
class State:
    params: Any
    batch_stats: Any      # BN's running mean and variance ({} without BN): a value, like the parameters
    opt_state: Any


def init_state(model: MLP, tx, key, x) -> State:
    variables = meta.unbox(model.init(key, x[:2], train=False))
    params = variables["params"]
    return State(params=params, batch_stats=variables.get("batch_stats", {}), opt_state=tx.init(params))


def make_train_step(model: MLP, tx):
    """Pure ``train_step(state, (x, y)) -> (state, metrics)``: BN in training mode, its updated statistics
    returned in the new state."""
    def train_step(state: State, batch):
        x, y = batch

        def loss_fn(params):
            logits, updates = model.apply({"params": params, "batch_stats": state.batch_stats}, x, train=True,
                                          mutable=["batch_stats"])
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), updates
        (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        u, opt_state = tx.update(grads, state.opt_state, state.params)
        return State(params=optax.apply_updates(state.params, u), batch_stats=updates.get("batch_stats", {}),
                     opt_state=opt_state), {"loss": loss}
    return jax.jit(train_step)


def logits_of(model: MLP, state: State, x, train_mode: bool, batch_size: int | None = None):
    """Logits of ``x`` in eval mode (running statistics) or in training mode over batches of ``batch_size``
    (each batch normalised by its own statistics; the running averages left as they were)."""
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    if not train_mode:
        return model.apply(variables, x, train=False)
    n = x.shape[0] // batch_size * batch_size
    xb = x[:n].reshape(-1, batch_size, x.shape[-1])
    per_batch = jax.vmap(lambda b: model.apply(variables, b, train=True, mutable=["batch_stats"])[0])(xb)
    return per_batch.reshape(n, -1)


def accuracy(logits, y) -> float:
    return float(1.0 - (logits.argmax(-1) != y[:logits.shape[0]]).sum() / logits.shape[0])


@dataclasses.dataclass(frozen=True)
class Config:
    seed: int = 0
    lrs: str = "1.0,8.0"         # plain SGD at each: high enough that the net without BN is slow, or fails
    steps: int = 1000
    batch: int = 64
    hidden: int = 100            # the paper's §4.1: 3 hidden layers of 100 sigmoid units
    layers: int = 3
    n_train: int = 8192
    n_test: int = 2048
    target: float = 0.8          # held-out accuracy to reach (the task's ceiling is ~0.87 for these nets)
    eval_every: int = 20
    mismatch_sizes: str = "1,2,8,256"

    def __post_init__(self):
        harness.at_least_one(self, "steps", "batch", "hidden", "layers", "n_train", "n_test", "eval_every")
        if not 0 < self.target < 1:
            raise ConfigError(f"target={self.target}: must be in (0, 1)")
        harness.positive_list("mismatch_sizes", self.mismatch_sizes, int, "1,2,8")
        harness.positive_list("lrs", self.lrs, float, "1.0,8.0")

    @property
    def lr_list(self) -> list[float]:
        return harness.positive_list("lrs", self.lrs, float, "1.0,8.0")


QUICK = dict(steps=300, lrs="8.0", n_train=2048, n_test=512, mismatch_sizes="1,2,64")


def supports(rows: list[dict]) -> bool:
    """At every learning rate BN reaches the target in fewer steps than the plain net (which may never reach
    it); at batch size 1 BN's training mode is ≥ 20 points less accurate than its eval mode; LayerNorm's two
    modes agree (to rounding: another batch size may run another kernel)."""
    race = {(r["lr"], r["norm"]): r["steps_to_target"] for r in rows if "steps_to_target" in r}
    mismatch = [r for r in rows if "batch_size" in r]
    bn1 = next((r for r in mismatch if r["norm"] == "batch" and r["batch_size"] == 1), None)
    ln = [r for r in mismatch if r["norm"] == "layer"]
    if bn1 is None:        # mismatch_sizes without 1: the claim about batch size 1 was not measured
        return False
    faster = [race[lr, "batch"] is not None and (race[lr, "none"] is None or race[lr, "batch"] < race[lr, "none"])
              for lr in {lr for lr, _ in race}]
    return (bool(faster) and all(faster)
            and bn1["eval_accuracy"] - bn1["train_mode_accuracy"] >= 0.2
            and bool(ln) and all(r["max_logit_difference"] <= 1e-5 for r in ln))   # the same function, to rounding


def train(cfg: Config, norm: str, lr: float, data, progress: bool):
    xtr, ytr, xte, yte = data
    model, tx = MLP(cfg.hidden, cfg.layers, 4, norm), optax.sgd(lr)
    state = init_state(model, tx, jax.random.key(cfg.seed + 1), xtr)
    order = np.concatenate([np.random.default_rng(cfg.seed + 2).permutation(cfg.n_train)
                            for _ in range(-(-cfg.steps * cfg.batch // cfg.n_train))])
    batch_at = lambda s: (xtr[order[(s - 1) * cfg.batch: s * cfg.batch]], ytr[order[(s - 1) * cfg.batch: s * cfg.batch]])
    test_logits = jax.jit(lambda st: logits_of(model, st, xte, train_mode=False))
    evaluate = lambda st, step: {"norm": norm, "lr": lr, "test_accuracy": accuracy(test_logits(st), yte)}
    state, history, evals = harness.fit(make_train_step(model, tx), state, batch_at, cfg.steps,
                                        log_every=cfg.eval_every, evaluate=evaluate,
                                        eval_at=range(cfg.eval_every, cfg.steps + 1, cfg.eval_every),
                                        progress=progress, desc=f"norm={norm} lr={lr}")
    reached = next((r["step"] for r in evals if r["test_accuracy"] >= cfg.target), None)
    return model, state, evals, reached, history


def run(cfg: Config, out_dir: str | Path | None = None, progress: bool = True) -> harness.LessonResult:
    t0 = time.perf_counter()
    data = teacher_task(cfg.seed, cfg.n_train, cfg.n_test, inputs=16, classes=4, label_noise=0.0)
    xte, yte = data[2], data[3]
    rows, curves, nets = [], {}, {}
    for lr in cfg.lr_list:
        for norm in NORMS:
            model, state, evals, reached, _ = train(cfg, norm, lr, data, progress)
            curves[lr, norm] = evals
            nets.setdefault(norm, (model, state))          # the mismatch is measured on the first lr's nets
            rows.append({"norm": norm, "lr": lr, "steps_to_target": reached, "target": cfg.target,
                         "final_test_accuracy": evals[-1]["test_accuracy"]})
    for norm in ("batch", "layer"):
        model, state = nets[norm]
        eval_logits = logits_of(model, state, xte, train_mode=False)
        for size in harness.positive_list("mismatch_sizes", cfg.mismatch_sizes, int, "1,2,8"):
            train_logits = logits_of(model, state, xte, train_mode=True, batch_size=size)
            rows.append({"norm": norm, "batch_size": size, "eval_accuracy": accuracy(eval_logits, yte),
                         "train_mode_accuracy": accuracy(train_logits, yte),
                         "max_logit_difference": float(jnp.abs(train_logits - eval_logits[:train_logits.shape[0]]).max())})
    figures = [] if out_dir is None else [harness.figure(
        out_dir, "batchnorm.png", lambda axes: plot(axes, curves, rows, cfg), panels=2,
        title="Batch normalisation: faster at a high learning rate; batch-dependent in training mode")]
    race = {f"lr={r['lr']} {r['norm']}": r["steps_to_target"] for r in rows if "steps_to_target" in r}
    return harness.result("batchnorm", rows, supports, figures, steps_to_target=race,
                          seconds=round(time.perf_counter() - t0, 1), config=dataclasses.asdict(cfg))


def report(res: harness.LessonResult) -> list[str]:
    d = res.details
    race = ", ".join(f"{k}: {v if v is not None else 'not reached'}" for k, v in d["steps_to_target"].items())
    return [f"steps to {d['config']['target']:.0%} held-out accuracy: {race}"]


def plot(axes, curves, rows, cfg) -> None:
    a, b = axes
    styles = dict(zip(cfg.lr_list, ("-", "--", ":", "-.")))
    colours = {"none": "tab:red", "batch": "tab:blue", "layer": "tab:green"}
    for (lr, norm), evals in curves.items():
        a.plot([r["step"] for r in evals], [r["test_accuracy"] for r in evals], styles.get(lr, "-"),
               color=colours[norm], label=f"{norm}, lr {lr}")
    a.axhline(cfg.target, color="k", ls="--", lw=1)
    a.set_xlabel("step")
    a.set_ylabel("held-out accuracy (eval mode)")
    a.set_title(f"plain SGD, {cfg.layers} × {cfg.hidden} sigmoid units")
    a.legend()
    a.grid(alpha=0.3)
    for norm in ("batch", "layer"):
        rs = [r for r in rows if r.get("batch_size") and r["norm"] == norm]
        b.plot([r["batch_size"] for r in rs], [r["train_mode_accuracy"] for r in rs], "o-",
               label=f"{norm} norm, training mode")
        b.axhline(rs[0]["eval_accuracy"], ls=":", color=b.lines[-1].get_color(), label=f"{norm} norm, eval mode")
    b.set_xscale("log", base=2)
    b.set_xlabel("batch size at test (training-mode statistics)")
    b.set_ylabel("held-out accuracy")
    b.legend()
    b.grid(alpha=0.3)
