"""Building blocks shared by the models: a linear map with a hand-written backward pass,
a Dense module carrying logical axis names, causal attention in query chunks.

Dimension letters used across the project: B batch, T time, D model width, H heads,
K head dim, F feed-forward width, V vocab.
"""
from __future__ import annotations

import functools
import math
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

Axes = tuple[str | None, ...]


def constrain(x: jax.Array, axes: Axes) -> jax.Array:
    """The models' one hook for activation sharding: logical names only, a no-op without rules."""
    return nn.with_logical_constraint(x, axes)


# --------------------------------------------------------------------------- backprop, by hand

@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def linear(x: jax.Array, w: jax.Array, transpose_w: bool = False) -> jax.Array:
    """y = x · w (w: [I, O]) or x · wᵀ (w: [O, I]) over the last axis of x.

    Backprop (Rumelhart et al. 1986) for a linear map, written out: dx = dy · wᵀ and
    dw = xᵀ · dy, where the weight gradient contracts the flattened batch/time axis of x and
    dy directly. Autodiff's version transposes operands first, which XLA:CPU materialises
    (see PERF_NOTES); numerically the two are equal (tests/test_layers.py).
    """
    return lax.dot_general(x, w, (((x.ndim - 1,), (1 if transpose_w else 0,)), ((), ())))


def _linear_fwd(x, w, transpose_w):
    return linear(x, w, transpose_w), (x, w)


def _linear_bwd(transpose_w, res, dy):
    x, w = res
    x2, dy2 = x.reshape(-1, x.shape[-1]), dy.reshape(-1, dy.shape[-1])  # [N, I], [N, O]
    if transpose_w:  # y = x wᵀ, w: [O, I]
        dx = lax.dot_general(dy, w, (((dy.ndim - 1,), (0,)), ((), ())))
        dw = lax.dot_general(dy2, x2, (((0,), (0,)), ((), ())))          # [O, I]
    else:            # y = x w, w: [I, O]
        dx = lax.dot_general(dy, w, (((dy.ndim - 1,), (1,)), ((), ())))
        dw = lax.dot_general(x2, dy2, (((0,), (0,)), ((), ())))          # [I, O]
    return dx.astype(x.dtype), dw.astype(w.dtype)


linear.defvjp(_linear_fwd, _linear_bwd)


class Dense(nn.Module):
    """A linear layer whose kernel has a logical name for every axis.

    ``in_axes`` input axes (counted from the end) are contracted with the kernel's leading
    axes; ``features`` become the trailing output axes. The kernel is stored as
    [*in_shape, *features] in ``param_dtype`` and computed in ``dtype``.
    """
    features: Sequence[int]
    kernel_axes: Axes
    in_axes: int = 1
    use_bias: bool = True
    init_std: float = 0.02
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        in_shape = x.shape[x.ndim - self.in_axes:]
        features = tuple(self.features)
        kernel = self.param(
            "kernel", nn.with_logical_partitioning(nn.initializers.normal(self.init_std), self.kernel_axes),
            (*in_shape, *features), self.param_dtype)
        kernel = constrain(kernel, self.kernel_axes)   # in compute layout (ZeRO-3: gathered here, per layer)
        lead = x.shape[:x.ndim - self.in_axes]
        x = x.astype(self.dtype).reshape(*lead, math.prod(in_shape))
        y = linear(x, kernel.astype(self.dtype).reshape(math.prod(in_shape), math.prod(features)))
        y = y.reshape(*lead, *features)
        if self.use_bias:
            bias = self.param(
                "bias", nn.with_logical_partitioning(nn.initializers.zeros, self.kernel_axes[self.in_axes:]),
                features, self.param_dtype)
            y = y + constrain(bias, self.kernel_axes[self.in_axes:]).astype(self.dtype)
        return y


def layer_norm(name: str, eps: float, dtype, param_dtype) -> nn.LayerNorm:
    """LayerNorm (Ba et al. 2016) with logically named scale and bias; statistics in float32."""
    return nn.LayerNorm(
        epsilon=eps, dtype=dtype, param_dtype=param_dtype, name=name,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)))


# --------------------------------------------------------------------------- attention

def causal_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, chunks: int = 1,
                     dropout: Callable[[jax.Array], jax.Array] | None = None) -> jax.Array:
    """softmax(q kᵀ / √K + causal mask) v (Vaswani et al. 2017, eq. 1), in query chunks.

    q, k, v: [B, T, H, K] -> [B, T, H, K]. The T queries are split into ``chunks`` blocks;
    block i attends only to keys 0 … (i+1)·T/chunks, so the fully masked blocks above the
    diagonal are never computed (a fraction (C-1)/(2C) of the work). Softmax is in float32.
    """
    B, T, H, K = q.shape
    if T % chunks:
        chunks = 1
    c = T // chunks
    scale = 1.0 / math.sqrt(K)
    qh, kh, vh = (a.transpose(0, 2, 1, 3) for a in (q * jnp.asarray(scale, q.dtype), k, v))  # [B, H, T, K]
    outs = []
    for i in range(chunks):
        lo, hi = i * c, (i + 1) * c
        s = jnp.einsum("bhqk,bhsk->bhqs", qh[:, :, lo:hi], kh[:, :, :hi]).astype(jnp.float32)
        visible = (lo + jnp.arange(c))[:, None] >= jnp.arange(hi)[None, :]
        s = jnp.where(visible, s, jnp.finfo(jnp.float32).min)
        p = jax.nn.softmax(s, axis=-1).astype(v.dtype)
        if dropout is not None:
            p = dropout(p)
        outs.append(jnp.einsum("bhqs,bhsk->bhqk", p, vh[:, :, :hi]))
    out = outs[0] if chunks == 1 else jnp.concatenate(outs, axis=2)
    return out.transpose(0, 2, 1, 3)
