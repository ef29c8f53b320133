"""Lesson: dropout (Srivastava, Hinton, Krizhevsky, Sutskever & Salakhutdinov 2014), §4 and Fig. 9's point:
on a small training set, dropping hidden units with p = 0.5 shrinks the gap between training and test.

The net is a plain ReLU MLP, the linen ``nets.MLP`` (logical axis names on every parameter), whose hidden units
pass through inverted dropout (``lineage_jax/foundations/dropout.py``): ỹ = m ⊙ y / p, m ~ Bernoulli(p),
p = 1 − rate at training, the plain net at test. The train step is pure: the PRNG key lives in the state and
the step's key is fold_in(key, step) (and fold_in(·, device) inside ``shard_map``), so replaying a step
replays its masks. The task: a random two-layer teacher labels Gaussian inputs into 4 classes; 512
training examples, a fifth of their labels redrawn at random (so memorising them is overfitting), and
4,096 clean held-out examples. Without dropout the net fits every training label, noise included.
"""
from __future__ import annotations

import dataclasses
import functools
import time
from pathlib import Path
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import PartitionSpec as P

from lineage_jax.config import ConfigError
from lineage_jax.foundations import dropout as dr
from lineage_jax.foundations import mlp, nets
from lineage_jax.foundations.tasks import teacher_task
from lineage_jax.lessons import harness


def model_for(params, rate: float) -> nets.MLP:
    """The linen ReLU MLP whose layer widths are those of ``params`` (a ``nets.MLP`` params tree)."""
    return nets.MLP([params[f"layer_{l}"]["bias"].shape[0] for l in range(len(params))], act="relu", rate=rate)


def forward(params, x, key, rate: float, deterministic: bool):
    """ReLU MLP logits (``nets.MLP``); every hidden layer's output through inverted dropout, its own key per layer
    (split from ``key``); the plain net when ``deterministic``."""
    return model_for(params, rate).apply({"params": params}, x, None if deterministic else key)


@flax.struct.dataclass
class State:
    step: jax.Array
    params: Any
    opt_state: Any
    key: jax.Array       # step t draws its masks from fold_in(key, t) (and the device index)


def make_train_step(tx: optax.GradientTransformation, rate: float, axis_name: str | None = None):
    """``train_step(state, (x, y)) -> (state, metrics)``, pure. With ``axis_name`` it is the body of a
    data-parallel ``shard_map``: each device draws its own masks and the gradients are averaged."""
    def train_step(state: State, batch):
        x, y = batch
        key = dr.step_key(state.key, state.step, axis_name)
        loss_fn = lambda params: mlp.softmax_cross_entropy(forward(params, x, key, rate, False), y)[0]
        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        if axis_name is not None:
            loss, grads = jax.lax.pmean((loss, grads), axis_name)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        return state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                             opt_state=opt_state), {"loss": loss}
    return train_step


def data_parallel(train_step, mesh, axis: str = "data"):
    """``train_step`` (made with ``axis_name=axis``) over ``mesh``: state replicated, the batch split."""
    return jax.jit(jax.shard_map(train_step, mesh=mesh, in_specs=(P(), P(axis)), out_specs=(P(), P()),
                                 check_vma=False))


@jax.jit
def _scores(params, x, y):
    logits = forward(params, x, jax.random.key(0), 0.0, True)      # test time: the plain net
    return 1.0 - (logits.argmax(-1) != y).sum() / y.shape[0], mlp.softmax_cross_entropy(logits, y)[0]


def evaluate(params, x, y) -> dict:
    accuracy, loss = _scores(params, x, y)
    return {"accuracy": float(accuracy), "loss": float(loss)}


@dataclasses.dataclass(frozen=True)
class Config:
    seed: int = 0
    rate: float = 0.5            # the paper's p = 0.5 on hidden units (keep probability 0.5)
    hidden: int = 128            # two hidden layers
    n_train: int = 512
    n_test: int = 4096
    inputs: int = 16
    classes: int = 4
    label_noise: float = 0.2     # fraction of training labels redrawn uniformly
    batch: int = 64
    steps: int = 1500
    lr: float = 1e-3             # Adam
    evals: int = 10

    def __post_init__(self):
        harness.at_least_one(self, "hidden", "n_train", "n_test", "inputs", "classes", "batch", "steps", "evals")
        if not 0 < self.rate < 1:
            raise ConfigError(f"rate={self.rate}: must be in (0, 1)")
        if not 0 <= self.label_noise < 1:
            raise ConfigError(f"label_noise={self.label_noise}: must be in [0, 1)")
        if not self.lr > 0:
            raise ConfigError(f"lr={self.lr}: must be positive")


QUICK = dict(steps=500, n_test=1024, evals=2)


def supports(rows: list[dict]) -> bool:
    """With dropout the final train − test accuracy gap is smaller and the test accuracy no lower."""
    last = {r["rate"]: r for r in rows if r["step"] == max(q["step"] for q in rows)}
    plain, drop = last[0.0], last[max(last)]
    return drop["gap"] < plain["gap"] and drop["test_accuracy"] >= plain["test_accuracy"]


def train(cfg: Config, rate: float, data, progress: bool) -> list[dict]:
    xtr, ytr, xte, yte = data
    tx = optax.adam(cfg.lr)
    # mlp.init's draw (He normal) in the linen tree: the committed results stay those of the same numbers
    params = nets.from_layers(mlp.init(jax.random.key(cfg.seed + 1), [cfg.inputs, cfg.hidden, cfg.hidden, cfg.classes],
                                       "he"))
    state = State(step=jnp.int32(0), params=params, opt_state=tx.init(params), key=jax.random.key(cfg.seed + 2))
    order = np.concatenate([np.random.default_rng(cfg.seed + 3).permutation(cfg.n_train)
                            for _ in range(-(-cfg.steps * cfg.batch // cfg.n_train))])
    batch_at = lambda s: (xtr[order[(s - 1) * cfg.batch: s * cfg.batch]], ytr[order[(s - 1) * cfg.batch: s * cfg.batch]])

    def score(st, step):
        tr, te = evaluate(st.params, xtr, ytr), evaluate(st.params, xte, yte)
        return {"rate": rate, "train_accuracy": tr["accuracy"], "test_accuracy": te["accuracy"],
                "gap": tr["accuracy"] - te["accuracy"], "train_loss": tr["loss"], "test_loss": te["loss"]}
    eval_at = {round(cfg.steps * (i + 1) / cfg.evals) for i in range(cfg.evals)}
    _, _, evals = harness.fit(jax.jit(make_train_step(tx, rate)), state, batch_at, cfg.steps, log_every=cfg.steps,
                              evaluate=score, eval_at=eval_at, progress=progress, desc=f"dropout rate={rate}")
    return evals


def run(cfg: Config, out_dir: str | Path | None = None, progress: bool = True) -> harness.LessonResult:
    t0 = time.perf_counter()
    data = teacher_task(cfg.seed, cfg.n_train, cfg.n_test, cfg.inputs, cfg.classes, cfg.label_noise)
    rows = train(cfg, 0.0, data, progress) + train(cfg, cfg.rate, data, progress)
    figures = [] if out_dir is None else [harness.figure(
        out_dir, "dropout.png", functools.partial(plot, rows=rows), panels=2,
        title=f"Dropout on {cfg.n_train} training examples (Srivastava et al. 2014)")]
    last = {r["rate"]: r for r in rows if r["step"] == cfg.steps}
    return harness.result("dropout", rows, supports, figures, gap_without=last[0.0]["gap"],
                          gap_with=last[cfg.rate]["gap"], test_accuracy_without=last[0.0]["test_accuracy"],
                          test_accuracy_with=last[cfg.rate]["test_accuracy"],
                          seconds=round(time.perf_counter() - t0, 1), config=dataclasses.asdict(cfg))


def report(res: harness.LessonResult) -> list[str]:
    d = res.details
    return [f"train - test accuracy gap: {d['gap_without']:.1%} without dropout, {d['gap_with']:.1%} with "
            f"(test accuracy {d['test_accuracy_without']:.1%} -> {d['test_accuracy_with']:.1%})"]


def plot(axes, rows) -> None:
    a, b = axes
    for rate in sorted({r["rate"] for r in rows}):
        rs = [r for r in rows if r["rate"] == rate]
        steps = [r["step"] for r in rs]
        line, = a.plot(steps, [r["train_accuracy"] for r in rs], "--", label=f"train, rate {rate}")
        a.plot(steps, [r["test_accuracy"] for r in rs], "-", color=line.get_color(), label=f"test, rate {rate}")
        b.plot(steps, [r["gap"] for r in rs], "o-", label=f"rate {rate}")
    a.set_xlabel("step")
    a.set_ylabel("accuracy")
    a.legend()
    a.grid(alpha=0.3)
    b.set_xlabel("step")
    b.set_ylabel("train − test accuracy")
    b.legend()
    b.grid(alpha=0.3)
