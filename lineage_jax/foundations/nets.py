"""The foundations chapter's networks as Flax linen modules: a plain MLP (with optional inverted dropout) and
the AlexNet-shaped two-tower CNN, each parameter named with logical axes (``lineage_jax.nn.hooks.param``) so
the parallel layer can shard them, ``dtype`` (compute) separate from ``param_dtype`` (storage).

They compute exactly what the pure functions of ``mlp.forward`` (Rumelhart et al. 1986), ``lessons.dropout``
(Srivastava et al. 2014) and ``alexnet.towers`` (Krizhevsky et al. 2012) compute on the same parameters:
``to_layers`` / ``from_layers`` move parameters between the list-of-dicts layout that the hand-written backward
passes read (``[{"w", "b"}, …]``) and the linen tree (``{"layer_0": {"kernel", "bias"}, …}``), so a lesson can
keep the hand backward (the subject of ``backprop`` and ``relu``) and apply the module, and the tests prove the
two equal.

Logical names: MLP kernels alternate ``("embed", "mlp")`` and ``("mlp", "embed")`` (a Megatron column/row
pair), the classifier's output axis unnamed; AlexNet's kernels name their output channels ``"mlp"``, the axis
the paper split between its two GPUs (tensor parallel over the towers), and their input channels ``"embed"``.
Dropout takes its key as an argument (a value, split once per hidden layer like ``lessons.dropout``), not
from a hidden RNG stream.
"""
from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from lineage_jax.foundations import alexnet as ax
from lineage_jax.foundations import mlp
from lineage_jax.foundations.dropout import dropout
from lineage_jax.nn.hooks import Axes, param

_SCALE = {"glorot": ("fan_avg", 1.0), "lecun": ("fan_in", 1.0), "he": ("fan_in", 2.0)}


def kernel_init(scheme: str):
    """``mlp.init``'s schemes as a linen initializer: N(0, σ²) with σ² = 2/(n_in+n_out), 1/n_in or 2/n_in
    (flax's fan_avg divides by (n_in+n_out)/2, so glorot is scale 1)."""
    if scheme not in _SCALE:
        raise ValueError(f"init scheme {scheme!r}: unknown; allowed: {', '.join(_SCALE)}")
    mode, scale = _SCALE[scheme]
    return nn.initializers.variance_scaling(scale, mode, "normal")


def _axes(l: int, last: bool) -> Axes:
    a, b = ("embed", "mlp") if l % 2 == 0 else ("mlp", "embed")
    return (a, None if last else b)


class Dense(nn.Module):
    """x @ kernel + bias over the last axis, kernel [in, features] named ``axes``, bias named ``axes[1:]``."""
    features: int
    axes: Axes
    scheme: str = "glorot"        # the kernel's initialisation (``kernel_init``)
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        w = param(self, "kernel", kernel_init(self.scheme), (x.shape[-1], self.features), self.param_dtype, self.axes)
        b = param(self, "bias", nn.initializers.zeros, (self.features,), self.param_dtype, self.axes[1:])
        return x.astype(self.dtype) @ w.astype(self.dtype) + b.astype(self.dtype)


class MLP(nn.Module):
    """Dense layers of ``features`` widths (the last: the logits), ``act`` between them, inverted dropout of
    ``rate`` after every hidden activation when ``key`` is given (``[B, in] -> [B, features[-1]]``)."""
    features: Sequence[int]
    act: str = "tanh"
    scheme: str = "glorot"        # the kernels' initialisation: glorot, lecun or he (``mlp.init``'s)
    rate: float = 0.0
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, key: jax.Array | None = None) -> jax.Array:
        if self.act not in mlp.ACTIVATIONS:
            raise ValueError(f"activation {self.act!r}: unknown; allowed: {', '.join(mlp.ACTIVATIONS)}")
        f = mlp.ACTIVATIONS[self.act][0]
        keys = None if key is None else jax.random.split(key, len(self.features))
        h = x.astype(self.dtype)
        for l, n_out in enumerate(self.features):
            last = l == len(self.features) - 1
            h = Dense(n_out, _axes(l, last), self.scheme, self.dtype, self.param_dtype, name=f"layer_{l}")(h)
            if not last:
                h = f(h)
                if keys is not None and self.rate > 0.0:
                    h = dropout(keys[l], h, self.rate)
        return h


def to_layers(params) -> list[dict]:
    """A linen MLP's or AlexNet's params (unboxed) -> ``[{"w": kernel, "b": bias}, …]`` in layer order."""
    names = sorted(params, key=lambda k: int(k.rsplit("_", 1)[1]))
    return [{"w": params[k]["kernel"], "b": params[k]["bias"]} for k in names]


def from_layers(layers: list[dict]) -> dict:
    """``[{"w", "b"}, …]`` (``mlp.init``, ``lessons.alexnet.init``) -> the linen params tree."""
    return {f"layer_{l}": {"kernel": p["w"], "bias": p["b"]} for l, p in enumerate(layers)}


class Conv(nn.Module):
    """NHWC × HWIO convolution, SAME padding, ``groups`` towers (``alexnet.conv``); He-normal kernel
    [3, 3, in/groups, features] named (None, None, "embed", "mlp"), bias named ("mlp",)."""
    features: int
    groups: int = 1
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        shape = (3, 3, x.shape[-1] // self.groups, self.features)
        w = param(self, "kernel", kernel_init("he"), shape, self.param_dtype, (None, None, "embed", "mlp"))
        b = param(self, "bias", nn.initializers.zeros, (self.features,), self.param_dtype, ("mlp",))
        return ax.conv(x.astype(self.dtype), w.astype(self.dtype), b.astype(self.dtype), groups=self.groups)


class AlexNet(nn.Module):
    """``alexnet.towers`` as a module: ``layout`` [(kind, cross), …] with ``widths`` outputs per layer (the
    last: the classes). Conv layers within a tower are grouped ``towers_n`` ways; LRN within each tower after
    conv 1; overlapping max pooling after convs 1 and 2; dropout ``rate`` after every hidden dense layer, from
    ``fold_in(key, layer index)`` when ``key`` is given. NHWC images -> logits."""
    layout: Sequence[tuple[str, bool]]
    widths: Sequence[int]
    towers_n: int = 2
    rate: float = 0.0
    pool_padding: str = "VALID"
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, key: jax.Array | None = None) -> jax.Array:
        if len(self.layout) != len(self.widths):
            raise ValueError(f"layout has {len(self.layout)} layers, widths {len(self.widths)}: one width per layer")
        h = x.astype(self.dtype)
        for i, ((kind, cross), n) in enumerate(zip(self.layout, self.widths)):
            if n % self.towers_n:
                raise ValueError(f"{kind} layer {i} with {n} outputs: not divisible into {self.towers_n} towers")
            if kind == "conv":
                groups = 1 if cross else self.towers_n
                h = jax.nn.relu(Conv(n, groups, self.dtype, self.param_dtype, name=f"layer_{i}")(h))
                if i == 0:
                    h = jnp.concatenate([ax.lrn(t) for t in jnp.split(h, self.towers_n, axis=-1)], axis=-1)
                if i < 2:
                    h = ax.max_pool(h, padding=self.pool_padding)
            else:
                h = h.reshape(h.shape[0], -1) if h.ndim > 2 else h
                h = Dense(n, ("embed", "mlp"), "he", self.dtype, self.param_dtype, name=f"layer_{i}")(h)
                if i < len(self.layout) - 1:
                    h = jax.nn.relu(h)
                    if key is not None and self.rate > 0.0:
                        h = dropout(jax.random.fold_in(key, i), h, self.rate)
        return h
