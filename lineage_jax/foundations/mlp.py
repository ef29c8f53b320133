"""A multi-layer perceptron whose backward pass is written out by hand (Rumelhart, Hinton & Williams 1986).

Layer l maps h_{l-1} [B, n_{l-1}] to the pre-activation a_l = h_{l-1} W_l + b_l and h_l = f(a_l); the last
layer's a_L are the logits of a softmax cross-entropy. The generalised delta rule (the paper's eqs. 13–14,
in matrix form) runs the chain rule backwards from δ_L = ∂E/∂a_L:

    ∂E/∂W_l = h_{l-1}ᵀ δ_l        ∂E/∂b_l = Σ_batch δ_l        δ_{l-1} = (δ_l W_lᵀ) ⊙ f'(a_{l-1})

and for the mean softmax cross-entropy over B examples δ_L = (softmax(a_L) − onehot(y)) / B. No ``jax.grad``
here: ``loss_and_grad`` is the hand pass, ``loss`` the same function for autodiff to check it.
Parameters are a list of ``{"w": [n_in, n_out], "b": [n_out]}``, one per layer.
"""
from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp

Params = list[dict[str, jax.Array]]


def _sigmoid(a):
    return jax.nn.sigmoid(a)


# f and f' (written in terms of a), per activation name
ACTIVATIONS: dict[str, tuple[Callable, Callable]] = {
    "sigmoid": (_sigmoid, lambda a: _sigmoid(a) * (1.0 - _sigmoid(a))),
    "tanh": (jnp.tanh, lambda a: 1.0 - jnp.tanh(a) ** 2),
    "relu": (lambda a: jnp.maximum(a, 0.0), lambda a: (a > 0).astype(a.dtype)),
    "linear": (lambda a: a, lambda a: jnp.ones_like(a)),
}
INITS = ("glorot", "lecun", "he")


def init(key: jax.Array, sizes: list[int], scheme: str = "glorot", dtype=jnp.float32) -> Params:
    """Weights ~ N(0, σ²) with σ² = 2/(n_in + n_out) (glorot, Glorot & Bengio 2010), 1/n_in (lecun) or
    2/n_in (he, He et al. 2015); biases zero. ``sizes`` = [inputs, hidden…, outputs]."""
    if scheme not in INITS:
        raise ValueError(f"init scheme {scheme!r}: unknown; allowed: {', '.join(INITS)}")
    params = []
    for k, (n_in, n_out) in zip(jax.random.split(key, len(sizes) - 1), zip(sizes[:-1], sizes[1:])):
        var = {"glorot": 2.0 / (n_in + n_out), "lecun": 1.0 / n_in, "he": 2.0 / n_in}[scheme]
        params.append({"w": jax.random.normal(k, (n_in, n_out), dtype) * math.sqrt(var),
                       "b": jnp.zeros((n_out,), dtype)})
    return params


def forward(params: Params, x: jax.Array, act: str = "tanh") -> tuple[jax.Array, list[tuple[jax.Array, jax.Array]]]:
    """(logits, cache): cache[l] = (h_{l-1}, a_l), what the backward pass reads."""
    f = ACTIVATIONS[act][0]
    h, cache = x, []
    for l, p in enumerate(params):
        a = h @ p["w"] + p["b"]
        cache.append((h, a))
        h = a if l == len(params) - 1 else f(a)
    return h, cache


def softmax_cross_entropy(logits: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(mean cross-entropy, δ_L = ∂E/∂logits = (softmax − onehot) / B); y holds integer classes."""
    logp = jax.nn.log_softmax(logits, axis=-1)
    onehot = jax.nn.one_hot(y, logits.shape[-1], dtype=logits.dtype)
    B = logits.shape[0]
    return -(onehot * logp).sum() / B, (jnp.exp(logp) - onehot) / B


def backward(params: Params, cache, delta: jax.Array, act: str = "tanh") -> Params:
    """The generalised delta rule: gradients of every W_l, b_l from δ_L (see the module docstring)."""
    df = ACTIVATIONS[act][1]
    grads: Params = [None] * len(params)
    for l in range(len(params) - 1, -1, -1):
        h_prev, _ = cache[l]
        grads[l] = {"w": h_prev.T @ delta, "b": delta.sum(0)}
        if l:
            delta = (delta @ params[l]["w"].T) * df(cache[l - 1][1])
    return grads


def loss_and_grad(params: Params, x: jax.Array, y: jax.Array, act: str = "tanh") -> tuple[jax.Array, Params]:
    """The hand pass: forward, cross-entropy, delta rule. Equals ``jax.value_and_grad(loss)``."""
    logits, cache = forward(params, x, act)
    loss_value, delta = softmax_cross_entropy(logits, y)
    return loss_value, backward(params, cache, delta, act)


def loss(params: Params, x: jax.Array, y: jax.Array, act: str = "tanh") -> jax.Array:
    """The same mean cross-entropy, for ``jax.grad`` and finite differences."""
    return softmax_cross_entropy(forward(params, x, act)[0], y)[0]


def accuracy(params: Params, x: jax.Array, y: jax.Array, act: str = "tanh") -> jax.Array:
    errors = (forward(params, x, act)[0].argmax(-1) != y).sum()
    return 1.0 - errors / y.shape[0]   # exactly 1.0 when all are right (XLA may turn ÷n into ×1/n)


def input_deltas(params: Params, x: jax.Array, y: jax.Array, act: str = "tanh") -> list[jax.Array]:
    """δ_l = ∂E/∂a_l for every layer l (the activation gradients; δ_L last), by the hand pass."""
    logits, cache = forward(params, x, act)
    return deltas_from(params, cache, softmax_cross_entropy(logits, y)[1], act)


def deltas_from(params: Params, cache, delta: jax.Array, act: str = "tanh") -> list[jax.Array]:
    """Every δ_l from δ_L by the delta rule, in δ_L's dtype (δ_L last)."""
    df = ACTIVATIONS[act][1]
    deltas = [delta]
    for l in range(len(params) - 1, 0, -1):
        delta = (delta @ params[l]["w"].T) * df(cache[l - 1][1])
        deltas.append(delta)
    return deltas[::-1]
