"""Backprop by hand for the linear map, and the Dense layer built on it.

Dimension letters used across the project: B batch, T time, D model width, H heads,
K head dim, F feed-forward width, V vocab.
"""
from __future__ import annotations

import functools
import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from lineage_jax.nn.hooks import Axes, hooks, param

@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def linear(x: jax.Array, w: jax.Array, transpose_w: bool = False) -> jax.Array:
    """y = x · w (w: [I, O]) or x · wᵀ (w: [O, I]) over the last axis of x.

    Backprop (Rumelhart et al. 1986) for a linear map, written out: dx = dy · wᵀ and
    dw = xᵀ · dy, where the weight gradient contracts the flattened batch/time axis of x and
    dy directly. Autodiff's version transposes operands first, which XLA:CPU materialises
    (see PERF_NOTES); numerically the two are equal (tests/nn/test_layers.py).
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
    hook_input: bool = False     # call hooks().dense_in (the caller may do it once for several Denses)
    init_std: float = 0.02
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = hooks()
        if self.hook_input:
            x = h.dense_in(x, self.kernel_axes, self.in_axes)
        in_shape = h.global_shape(x.shape[x.ndim - self.in_axes:], self.kernel_axes[:self.in_axes])
        features, out_axes = tuple(self.features), self.kernel_axes[self.in_axes:]
        # in compute layout (ZeRO-3: gathered here, per layer); under shard_map, this device's block
        kernel = param(self, "kernel", nn.initializers.normal(self.init_std), (*in_shape, *features),
                       self.param_dtype, self.kernel_axes)
        k_in, k_out = kernel.shape[:self.in_axes], kernel.shape[self.in_axes:]
        lead = x.shape[:x.ndim - self.in_axes]
        x = x.astype(self.dtype).reshape(*lead, math.prod(k_in))
        y = linear(x, kernel.astype(self.dtype).reshape(math.prod(k_in), math.prod(k_out)))
        y = h.dense_out(y.reshape(*lead, *k_out), self.kernel_axes, self.in_axes)
        if self.use_bias:
            bias = param(self, "bias", nn.initializers.zeros, features, self.param_dtype, out_axes)
            y = y + bias.astype(self.dtype)
        return y
