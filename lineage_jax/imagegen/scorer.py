"""The judge of generated digits: a classifier trained here on the real training digits, whose test accuracy
is reported, scoring samples by (a) the share classified as the digit they were asked for and (b) the
Fréchet distance of their classifier features to the real test digits' (FID's recipe, Heusel et al. 2017,
with this classifier in Inception's place).
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lineage_jax.diffusion.metrics import frechet_from_features
from lineage_jax.vision.classifier import ClassifierConfig, DigitClassifier


class Scorer(NamedTuple):
    cfg: ClassifierConfig
    params: dict
    test_accuracy: float


@dataclasses.dataclass(frozen=True)
class ScorerTraining:
    steps: int = 600
    batch: int = 128
    lr: float = 2e-3
    noise: float = 0.1       # Gaussian pixel noise in training: a judge that tolerates slightly noisy samples
    seed: int = 0


def _apply(cfg: ClassifierConfig):
    return jax.jit(lambda p, x: DigitClassifier(cfg).apply({"params": p}, x))


def train_scorer(train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray],
                 cfg: ClassifierConfig = ClassifierConfig(), how: ScorerTraining = ScorerTraining()) -> Scorer:
    """Adam on cross-entropy over the real training digits; returns the classifier with its test accuracy."""
    import flax.linen as nn
    model = DigitClassifier(cfg)
    x, y = jnp.asarray(train[0]), jnp.asarray(train[1])
    params = nn.unbox(model.init(jax.random.key(how.seed), x[:2])["params"])
    tx = optax.adam(how.lr)

    @jax.jit
    def step(params, opt, key):
        k_idx, k_noise = jax.random.split(key)
        i = jax.random.randint(k_idx, (how.batch,), 0, x.shape[0])
        xb = x[i] + how.noise * jax.random.normal(k_noise, x[i].shape)

        def loss_fn(p):
            return optax.softmax_cross_entropy_with_integer_labels(model.apply({"params": p}, xb)[0], y[i]).mean()
        loss, g = jax.value_and_grad(loss_fn)(params)
        updates, opt = tx.update(g, opt, params)
        return optax.apply_updates(params, updates), opt, loss

    opt, key = tx.init(params), jax.random.key(how.seed + 1)
    for s in range(how.steps):
        params, opt, _ = step(params, opt, jax.random.fold_in(key, s))
    labels, _ = predict(Scorer(cfg, params, 0.0), test[0])
    return Scorer(cfg, params, float(np.mean(labels == np.asarray(test[1]))))


def predict(scorer: Scorer, images, batch: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """(predicted digits [N], features [N, F]) of images [N, H, W, C] in [-1, 1]."""
    fn, out_l, out_f = _apply(scorer.cfg), [], []
    images = np.asarray(images, np.float32)
    for i in range(0, len(images), batch):
        logits, feats = fn(scorer.params, jnp.asarray(images[i:i + batch]))
        out_l.append(np.asarray(logits.argmax(-1)))
        out_f.append(np.asarray(feats))
    return np.concatenate(out_l), np.concatenate(out_f)


def score(scorer: Scorer, samples, intended, reference_features) -> dict[str, float]:
    """{"accuracy": share of samples classified as their intended digit, "fid": Fréchet distance of their
    features to ``reference_features`` (the real test digits')}."""
    labels, feats = predict(scorer, samples)
    return {"accuracy": float(np.mean(labels == np.asarray(intended))),
            "fid": frechet_from_features(feats, reference_features)}
