"""Synthetic tasks that need no download, shared by the foundations lessons.

``teacher_task``   Gaussian inputs labelled by the argmax of a random two-layer tanh net (a "teacher"), with
                   optional label noise on the training split only: generalisation is measurable against
                   clean held-out labels (dropout, batchnorm, mixed_precision).
``random_labels``  Gaussian inputs with uniformly random labels: fitting them measures optimisation alone,
                   not how well a function class matches a teacher (relu).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from lineage_jax.foundations import mlp


def teacher_task(seed: int, n_train: int, n_test: int, inputs: int = 16, classes: int = 4, label_noise: float = 0.2):
    """(x_train, y_train, x_test, y_test): Gaussian inputs labelled by the argmax of a random tanh teacher
    [inputs, 64, classes]; a fraction ``label_noise`` of the *training* labels redrawn uniformly (the test
    labels stay clean), so a net that memorises its training set learns noise."""
    kx, kt, kn, kl = jax.random.split(jax.random.key(seed), 4)
    x = jax.random.normal(kx, (n_train + n_test, inputs))
    y = mlp.forward(mlp.init(kt, [inputs, 64, classes], "lecun"), x, "tanh")[0].argmax(-1)
    flip = jax.random.bernoulli(kn, label_noise, (n_train,))
    y_train = jnp.where(flip, jax.random.randint(kl, (n_train,), 0, classes), y[:n_train])
    return x[:n_train], y_train, x[n_train:], y[n_train:]


def random_labels(seed: int, n: int, inputs: int, classes: int) -> tuple[jax.Array, jax.Array]:
    """Gaussian inputs with uniformly random labels: fitting them is optimisation alone."""
    kx, ky = jax.random.split(jax.random.key(seed))
    return jax.random.normal(kx, (n, inputs)), jax.random.randint(ky, (n,), 0, classes)
