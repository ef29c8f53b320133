"""Lesson: an AlexNet-shaped CNN on real images (Krizhevsky, Sutskever & Hinton 2012), scaled down to the
1,797 8×8 handwritten digits that scikit-learn ships (``lineage_jax/data/digits.py``, a TFDS builder; no
download).

The net is the linen ``nets.AlexNet`` (logical axis names on every parameter), built of the paper's pieces
(``lineage_jax/foundations/alexnet.py``): conv → ReLU → local response normalisation
(k = 2, n = 5, α = 1e-4, β = 0.75, §3.3) → overlapping 3×3 / stride-2 max pooling (§3.4), twice; two more
convolutions; three dense layers with dropout 0.5 after the hidden two (§4.2). Every layer's kernels are
split between two towers as between the paper's two GPUs (§3.2, Fig. 2): conv 2 and conv 4 see only their
own tower's maps (grouped convolutions here; a 2-device ``shard_map`` in the tests), conv 3 and the dense
layers see both. Target: ≥ 97% test accuracy; PNGs of the first layer's filters and the confusion matrix.
"""
from __future__ import annotations

import dataclasses
import math
import os
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lineage_jax.config import ConfigError
from lineage_jax.data.digits import load_digits
from lineage_jax.foundations import alexnet as ax
from lineage_jax.foundations import nets
from lineage_jax.lessons import harness

# (kind, cross-tower): conv 1 sees the whole image; conv 2, 4 their own tower; conv 3, dense layers both
LAYOUT = (("conv", True), ("conv", False), ("conv", True), ("conv", False), ("dense", True), ("dense", True),
          ("dense", True))
POOL = "SAME"     # 8×8 → 4×4 → 2×2 (VALID would leave 1×1 after the second pooling)


def init(key, c1: int, c2: int, c3: int, c4: int, dense: int, classes: int = 10):
    """He-normal kernels (HWIO; within-tower kernels see half their input channels), zero biases, as the params
    tree of ``nets.AlexNet`` (the draw of the pure version, so the committed results are those numbers)."""
    shapes = [(3, 3, 1, c1), (3, 3, c1 // 2, c2), (3, 3, c2, c3), (3, 3, c3 // 2, c4), (2 * 2 * c4, dense),
              (dense, dense), (dense, classes)]
    layers = ax.tower_params([{"w": jax.random.normal(k, s) * math.sqrt(2.0 / math.prod(s[:-1])),
                               "b": jnp.zeros(s[-1])} for k, s in zip(jax.random.split(key, len(shapes)), shapes)],
                             LAYOUT)
    return nets.from_layers(layers)


def model_for(params, rate: float = 0.0) -> nets.AlexNet:
    """The linen two-tower CNN of ``params``' widths (logical axis "mlp" on every output-channel axis)."""
    return nets.AlexNet(LAYOUT, [params[f"layer_{l}"]["bias"].shape[0] for l in range(len(LAYOUT))], rate=rate,
                        pool_padding=POOL)


def logits(params, x, key=None, rate: float = 0.0):
    return model_for(params, rate).apply({"params": params}, x, key)


def loss_fn(params, x, y, key=None, rate: float = 0.0):
    return optax.softmax_cross_entropy_with_integer_labels(logits(params, x, key, rate), y).mean()


def make_train_step(tx, rate: float):
    """Pure ``train_step((params, opt_state, key, step), (x, y))``: dropout masks from fold_in(key, step)."""
    def train_step(state, batch):
        params, opt_state, key, step = state
        loss, grads = jax.value_and_grad(loss_fn)(params, *batch, jax.random.fold_in(key, step), rate)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state, key, step + 1), {"loss": loss}
    return jax.jit(train_step)


@dataclasses.dataclass(frozen=True)
class Config:
    seed: int = 0
    steps: int = 1500
    batch: int = 64
    lr: float = 1e-3             # Adam
    dropout: float = 0.5
    c1: int = 32
    c2: int = 64
    c3: int = 96
    c4: int = 64
    dense: int = 256
    evals: int = 5
    data_dir: str = ""           # where the TFDS copy is prepared ("" : $TFDS_DATA_DIR or ~/.cache/lineage_jax/tfds)

    def __post_init__(self):
        harness.at_least_one(self, "steps", "batch", "dense", "evals")
        for f in ("c1", "c2", "c3", "c4"):
            if getattr(self, f) < 2 or getattr(self, f) % 2:
                raise ConfigError(f"{f}={getattr(self, f)}: must be even and at least 2 (split between two towers)")
        if not 0 <= self.dropout < 1 or not self.lr > 0:
            raise ConfigError(f"dropout={self.dropout}, lr={self.lr}: need 0 <= dropout < 1 and lr > 0")


QUICK = dict(steps=150, c1=16, c2=32, c3=32, c4=32, dense=64, evals=1)


def supports(rows: list[dict]) -> bool:
    """The final test accuracy is at least 97%."""
    return rows[-1]["test_accuracy"] >= 0.97


def run(cfg: Config, out_dir: str | Path | None = None, progress: bool = True) -> harness.LessonResult:
    t0 = time.perf_counter()
    data_dir = cfg.data_dir or os.environ.get("TFDS_DATA_DIR") or str(Path.home() / ".cache" / "lineage_jax" / "tfds")
    data = load_digits(data_dir)
    (xtr, ytr), (xte, yte) = [(jnp.asarray(x, jnp.float32) / 16.0, jnp.asarray(y)) for x, y in (data["train"], data["test"])]
    tx = optax.adam(cfg.lr)
    params = init(jax.random.key(cfg.seed), cfg.c1, cfg.c2, cfg.c3, cfg.c4, cfg.dense)
    state = (params, tx.init(params), jax.random.key(cfg.seed + 1), jnp.int32(0))
    n = xtr.shape[0]
    order = np.concatenate([np.random.default_rng(cfg.seed + 2).permutation(n)
                            for _ in range(-(-cfg.steps * cfg.batch // n))])
    batch_at = lambda s: (xtr[order[(s - 1) * cfg.batch: s * cfg.batch]], ytr[order[(s - 1) * cfg.batch: s * cfg.batch]])
    predict = jax.jit(lambda p, x: logits(p, x).argmax(-1))
    evaluate = lambda st, step: {"test_accuracy": float((predict(st[0], xte) == yte).mean()),
                                 "train_accuracy": float((predict(st[0], xtr) == ytr).mean())}
    eval_at = {round(cfg.steps * (i + 1) / cfg.evals) for i in range(cfg.evals)}
    state, history, rows = harness.fit(make_train_step(tx, cfg.dropout), state, batch_at, cfg.steps,
                                       log_every=max(1, cfg.steps // 50), evaluate=evaluate, eval_at=eval_at,
                                       progress=progress, desc="alexnet digits")
    pred = np.asarray(predict(state[0], xte))
    confusion = np.zeros((10, 10), np.int64)
    np.add.at(confusion, (np.asarray(yte), pred), 1)
    figures = [] if out_dir is None else [harness.figure(
        out_dir, "alexnet.png", lambda axes: plot(axes, state[0], confusion), panels=2,
        title="AlexNet-shaped CNN on the 8×8 digits: first-layer filters (two towers), confusion matrix")]
    return harness.result("alexnet", rows, supports, figures, test_accuracy=rows[-1]["test_accuracy"],
                          n_train=int(n), n_test=int(xte.shape[0]), confusion=confusion.tolist(),
                          params=int(sum(p.size for p in jax.tree.leaves(state[0]))),
                          final_loss=history[-1]["loss"], seconds=round(time.perf_counter() - t0, 1),
                          config=dataclasses.asdict(cfg))


def report(res: harness.LessonResult) -> list[str]:
    d = res.details
    return [f"test accuracy {d['test_accuracy']:.1%} on {d['n_test']} held-out digits ({d['n_train']} training, "
            f"{d['params']:,} parameters)"]


def plot(axes, params, confusion) -> None:
    a, b = axes
    w = np.asarray(params["layer_0"]["kernel"])[:, :, 0, :]                      # [3, 3, c1]
    c1 = w.shape[-1]
    cols = c1 // 2
    grid = np.ones((2 * 4, cols * 4)) * np.nan
    for c in range(c1):
        r, q = divmod(c, cols)                                     # row r: tower r
        f = w[:, :, c]
        grid[r * 4:r * 4 + 3, q * 4:q * 4 + 3] = (f - f.min()) / (np.ptp(f) + 1e-9)
    a.imshow(grid, cmap="gray")
    a.set_title("conv 1 filters: tower 0 (top), tower 1 (bottom)")
    a.axis("off")
    b.imshow(confusion, cmap="Blues")
    for i in range(10):
        for j in range(10):
            if confusion[i, j]:
                b.text(j, i, str(confusion[i, j]), ha="center", va="center", fontsize=7)
    b.set_xlabel("predicted")
    b.set_ylabel("true")
    b.set_xticks(range(10))
    b.set_yticks(range(10))
