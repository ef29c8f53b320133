"""AlexNet's pieces (Krizhevsky, Sutskever & Hinton 2012): local response normalisation (§3.3), overlapping
pooling (§3.4), and the two-GPU split of §3.2 / Fig. 2, as pure functions on NHWC arrays.

Local response normalisation, across n adjacent channels at each position (the paper's k = 2, n = 5,
α = 1e-4, β = 0.75):

    b^i = a^i / (k + α Σ_{j = max(0, i − n/2)}^{min(N − 1, i + n/2)} (a^j)²)^β

``torch.nn.LocalResponseNorm`` divides α by n (an average, not a sum), so ours(α) = torch(α·n).

The two-GPU split: half of every layer's kernels live on each GPU; "the GPUs communicate only in certain
layers" — conv 3 and the fully connected layers see both halves, conv 2, 4, 5 only their own. On one device
that is a grouped convolution (``feature_group_count=2``) for the within-tower layers; on two devices
(``towers_sharded``, a ``shard_map``) each device holds the last-axis half of every parameter, computes its
tower, and all-gathers the channels only before a cross-tower layer.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

from lineage_jax.foundations.dropout import dropout


def lrn(x: jax.Array, k: float = 2.0, n: int = 5, alpha: float = 1e-4, beta: float = 0.75) -> jax.Array:
    """Local response normalisation over the last (channel) axis, the window clipped at the edges."""
    sq = jnp.pad(x * x, [(0, 0)] * (x.ndim - 1) + [(n // 2, (n - 1) // 2)])
    C = x.shape[-1]
    window = sum(sq[..., j:j + C] for j in range(n))
    return x / (k + alpha * window) ** beta


def max_pool(x: jax.Array, window: int = 3, stride: int = 2, padding: str = "VALID") -> jax.Array:
    """Overlapping max pooling (window 3 > stride 2, §3.4) over H and W of NHWC."""
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, window, window, 1), (1, stride, stride, 1), padding)


def _dense_dropout(h, key, rate, i):
    return h if key is None or rate == 0.0 else dropout(jax.random.fold_in(key, i), h, rate)


def conv(x: jax.Array, w: jax.Array, b: jax.Array, groups: int = 1, stride: int = 1) -> jax.Array:
    """NHWC × HWIO convolution, SAME padding; ``groups`` > 1: output group g sees only input group g."""
    y = jax.lax.conv_general_dilated(x, w, (stride, stride), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                     feature_group_count=groups)
    return y + b


# a layer: ("conv", cross) or ("dense", cross); cross = True where the paper's GPUs exchange activations
Layout = Sequence[tuple[str, bool]]


def towers(params, x: jax.Array, layout: Layout, towers_n: int = 2, key: jax.Array | None = None,
           rate: float = 0.0, pool_padding: str = "VALID") -> jax.Array:
    """One device: conv layers grouped ``towers_n`` ways where not cross, full where cross; every conv is
    followed by ReLU, LRN (within each tower) after the first, overlapping max pooling after the first two;
    dense layers last, dropout (``rate``, from ``key``) after every hidden dense layer. The first layer
    must be cross (every tower sees the whole image).
    Output channels are ordered [tower 0's half, tower 1's half] in every layer."""
    h = x
    for i, ((kind, cross), p) in enumerate(zip(layout, params)):
        if kind == "conv":
            h = jax.nn.relu(conv(h, p["w"], p["b"], groups=1 if cross else towers_n))
            if i == 0:   # each GPU normalised its own maps: LRN within each tower
                h = jnp.concatenate([lrn(t) for t in jnp.split(h, towers_n, axis=-1)], axis=-1)
            if i < 2:
                h = max_pool(h, padding=pool_padding)
        else:
            h = h.reshape(h.shape[0], -1) if h.ndim > 2 else h
            h = h @ p["w"] + p["b"]
            if i < len(layout) - 1:
                h = _dense_dropout(jax.nn.relu(h), key, rate, i)
    return h


def tower_body(params, x: jax.Array, layout: Layout, axis: str, pool_padding: str = "VALID") -> jax.Array:
    """The ``shard_map`` body of ``towers``: this device's tower. Every parameter holds this device's half
    of its last axis; activations hold this tower's channels; a cross layer first all-gathers the channels
    of both towers (the only communication, as in Fig. 2)."""
    h = x
    for i, ((kind, cross), p) in enumerate(zip(layout, params)):
        if kind == "conv":
            if cross and i > 0:
                h = jax.lax.all_gather(h, axis, axis=h.ndim - 1, tiled=True)
            h = jax.nn.relu(conv(h, p["w"], p["b"]))
            if i == 0:
                h = lrn(h)
            if i < 2:
                h = max_pool(h, padding=pool_padding)
        else:
            if cross:
                if h.ndim > 2:   # flatten in the one-device order: H, W, then all channels
                    h = jax.lax.all_gather(h, axis, axis=h.ndim - 1, tiled=True)
                    h = h.reshape(h.shape[0], -1)
                else:
                    h = jax.lax.all_gather(h, axis, axis=1, tiled=True)
            h = h @ p["w"] + p["b"]
            if i < len(layout) - 1:
                h = jax.nn.relu(h)
    return h


def tower_params(params, layout: Layout, towers_n: int = 2):
    """Parameters as ``towers`` reads them (the same arrays: within-tower kernels already have the grouped
    input width) — a check that every last axis splits evenly across the towers."""
    for (kind, _), p in zip(layout, params):
        if p["w"].shape[-1] % towers_n:
            raise ValueError(f"{kind} layer with {p['w'].shape[-1]} outputs: not divisible into {towers_n} towers")
    return params
