"""Building blocks shared by the models: a linear map with a hand-written backward pass,
a Dense module carrying logical axis names, causal attention in query chunks.

Dimension letters used across the project: B batch, T time, D model width, H heads,
K head dim, F feed-forward width, V vocab.
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import math
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

Axes = tuple[str | None, ...]


def _same(x, *_):
    return x


def _expert_out(buf: jax.Array) -> jax.Array:
    """GSPMD's return reshard of MoE buffers, experts -> tokens' groups, stated at both ends:
    pinning the expert layout first pins the cotangent there too, so the backward also
    reshards by all-to-all (with the group end alone GSPMD replicated the cotangent, then sliced it)."""
    buf = nn.with_logical_constraint(buf, ("expert_group", "expert", None, "embed"))
    return nn.with_logical_constraint(buf, ("batch", None, None, "embed"))


@dataclasses.dataclass(frozen=True)
class CollectiveHooks:
    """The seams where an explicit (``shard_map``) form puts its collectives; identities by default.

    The models call these at the points a Megatron/ZeRO diagram marks, described only by
    logical axis names; whoever installs them (``collective_hooks``) decides what each does.
    Default (GSPMD or one device): every hook is the identity and ``constrain`` is Flax's
    logical constraint, so the default program is unchanged.

    ``local_shape(shape, axes)``   a parameter's global shape -> its shape on this device at rest
    ``global_shape(shape, axes)``  an activation's per-device (compute) dims -> global dims
    ``param(w, axes)``             a parameter at rest -> in compute layout (ZeRO-3: all-gather)
    ``dense_in(x, kernel_axes, in_axes)``   input of a Dense (column-parallel: Megatron f / SP gather)
    ``dense_out(y, kernel_axes, in_axes)``  output of a Dense before its bias (row-parallel: g / SP scatter)
    ``embed(table, tokens)``       token embedding lookup (vocab-parallel)
    ``positions(table, T, ids)``   the position rows this device adds: rows 0 … T-1, or rows ``ids``
                                   [B, T] (packed documents restart); SP: its sequence shard
    ``index(n, name)``             global indices of this device's n entries of logical axis ``name``
    ``constrain(x, axes)``         activation sharding constraint
    ``expert_in(buf)``             MoE buffers [G, E, C, D] from their tokens' devices to their experts'
    ``expert_out(buf)``            ... and back (expert parallel: the two all-to-alls of GShard)
    """
    local_shape: Callable = lambda shape, axes: tuple(shape)
    global_shape: Callable = lambda shape, axes: tuple(shape)
    param: Callable = _same
    dense_in: Callable = _same
    dense_out: Callable = _same
    embed: Callable = lambda table, tokens: jnp.take(table, tokens, axis=0)
    positions: Callable = lambda table, T, ids=None: table[:T] if ids is None else jnp.take(table, ids, axis=0)
    index: Callable = lambda n, name: jnp.arange(n)
    constrain: Callable = lambda x, axes: nn.with_logical_constraint(x, axes)
    expert_in: Callable = lambda buf: nn.with_logical_constraint(buf, ("expert_group", "expert", None, "embed"))
    expert_out: Callable = _expert_out


_HOOKS: contextvars.ContextVar[CollectiveHooks] = contextvars.ContextVar("collective_hooks", default=CollectiveHooks())


def hooks() -> CollectiveHooks:
    """The hooks in force (identities unless inside ``collective_hooks``)."""
    return _HOOKS.get()


@contextlib.contextmanager
def collective_hooks(**fns):
    """Install hooks (fields of ``CollectiveHooks``) while tracing a model, e.g. inside a shard_map body."""
    token = _HOOKS.set(dataclasses.replace(_HOOKS.get(), **fns))
    try:
        yield
    finally:
        _HOOKS.reset(token)


def constrain(x: jax.Array, axes: Axes) -> jax.Array:
    """The models' one hook for activation sharding: logical names only, a no-op without rules."""
    return hooks().constrain(x, axes)


def param(module: nn.Module, name: str, init, shape: Sequence[int], dtype, axes: Axes) -> jax.Array:
    """``module.param`` with logical names, stored at rest (``local_shape``), used in compute layout."""
    h = hooks()
    w = module.param(name, nn.with_logical_partitioning(init, axes), h.local_shape(tuple(shape), axes), dtype)
    return constrain(h.param(w, axes), axes)


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


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _layer_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, eps: float) -> jax.Array:
    """(x - mean) / sqrt(var + eps) · scale + bias over the last axis, in float32 (or wider).

    The backward is written out (dx = rstd · (g − mean(g) − x̂ · mean(g · x̂)), g = dy · scale),
    saving only x̂ and rstd: autodiff's version kept more intermediates and fused worse on
    XLA:CPU (~3% of the benchmark step).
    """
    return _layer_norm_fwd(x, scale, bias, eps)[0]


def _layer_norm_fwd(x, scale, bias, eps):
    xf = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    mu, mu2 = xf.mean(-1, keepdims=True), lax.square(xf).mean(-1, keepdims=True)
    rstd = lax.rsqrt(jnp.maximum(0.0, mu2 - lax.square(mu)) + eps)
    xhat = (xf - mu) * rstd
    return xhat * scale + bias, (xhat, rstd, scale)


def _layer_norm_bwd(eps, res, dy):
    xhat, rstd, scale = res
    g = dy.astype(xhat.dtype)
    n = math.prod(xhat.shape[:-1])
    dbias = g.reshape(n, -1).sum(0)
    dscale = (g * xhat).reshape(n, -1).sum(0)
    g = g * scale
    dx = rstd * (g - g.mean(-1, keepdims=True) - xhat * (g * xhat).mean(-1, keepdims=True))
    return dx, dscale.astype(scale.dtype), dbias.astype(scale.dtype)


_layer_norm.defvjp(_layer_norm_fwd, _layer_norm_bwd)


class LayerNorm(nn.Module):
    """LayerNorm (Ba et al. 2016) over the last axis, statistics in float32.

    Computes what ``flax.linen.LayerNorm`` (fast variance) computes, with the same
    parameters (``scale``, ``bias``), but reads them through ``param`` so the hooks see them;
    the backward pass is hand-written (``_layer_norm``).
    """
    epsilon: float = 1e-5
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        D = x.shape[-1]
        scale = param(self, "scale", nn.initializers.ones, (D,), self.param_dtype, ("embed",))
        bias = param(self, "bias", nn.initializers.zeros, (D,), self.param_dtype, ("embed",))
        ct = jnp.promote_types(self.dtype, jnp.float32)
        y = _layer_norm(x.astype(jnp.promote_types(x.dtype, ct)), scale.astype(ct), bias.astype(ct), float(self.epsilon))
        return jnp.asarray(y, self.dtype)


def layer_norm(name: str, eps: float, dtype, param_dtype) -> LayerNorm:
    """LayerNorm (Ba et al. 2016) with logically named scale and bias; statistics in float32."""
    return LayerNorm(epsilon=eps, dtype=dtype, param_dtype=param_dtype, name=name)


# --------------------------------------------------------------------------- attention

def attend_causal(q: jax.Array, k: jax.Array, v: jax.Array, *, impl: str = "chunks", chunks: int = 1,
                  dropout=None, segment_ids: jax.Array | None = None) -> jax.Array:
    """The models' one entry to causal self-attention, q [B, T, H, K], k/v [B, T, Hkv, K].

    ``impl="chunks"``: ``causal_attention`` below (query chunks; the only kernel with attention
    dropout); any other name is a kernel of ``lineage_jax.attention.backend.attention``
    (``flash``: blockwise with O(T) memory; ``auto``: cuDNN / Pallas where the device has them).
    ``segment_ids`` [B, T] (packed sequences): a query sees only keys of its own segment."""
    if impl == "chunks":
        G = q.shape[2] // k.shape[2]
        if G > 1:   # grouped-query: query head h reads key/value head h // G
            k, v = jnp.repeat(k, G, axis=2), jnp.repeat(v, G, axis=2)
        return causal_attention(q, k, v, chunks=chunks, dropout=dropout, segment_ids=segment_ids)
    from lineage_jax.attention.backend import attention
    return attention(q, k, v, causal=True, implementation=impl, segment_ids=segment_ids).astype(q.dtype)


def causal_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, chunks: int = 1,
                     dropout: Callable[[jax.Array], jax.Array] | None = None,
                     segment_ids: jax.Array | None = None) -> jax.Array:
    """softmax(q kᵀ / √K + causal mask) v (Vaswani et al. 2017, eq. 1), in query chunks.

    q, k, v: [B, T, H, K] -> [B, T, H, K]. The T queries are split into ``chunks`` blocks;
    block i attends only to keys 0 … (i+1)·T/chunks, so the fully masked blocks above the
    diagonal are never computed (a fraction (C-1)/(2C) of the work). Softmax is in float32.
    ``segment_ids`` [B, T]: packed documents (T5-style packing) do not see each other; the
    diagonal is always visible, so no row is fully masked.
    """
    B, T, H, K = q.shape
    if T % chunks:
        chunks = 1
    c = T // chunks
    scale = 1.0 / math.sqrt(K)
    # Contract in the [B, T, H, K] layout and let XLA choose the head-major layouts for the dots:
    # explicit head transposes here were copied once more per chunk (~2% of the benchmark step).
    q = q * jnp.asarray(scale, q.dtype)
    outs = []
    for i in range(chunks):
        lo, hi = i * c, (i + 1) * c
        s = jnp.einsum("bqhk,bshk->bhqs", q[:, lo:hi], k[:, :hi]).astype(jnp.float32)
        visible = (lo + jnp.arange(c))[:, None] >= jnp.arange(hi)[None, :]
        if segment_ids is not None:   # [B, 1, c, hi]
            visible = visible & (segment_ids[:, lo:hi, None] == segment_ids[:, None, :hi])[:, None]
        s = jnp.where(visible, s, jnp.finfo(jnp.float32).min)
        p = jax.nn.softmax(s, axis=-1).astype(v.dtype)
        if dropout is not None:
            p = dropout(p)
        outs.append(jnp.einsum("bhqs,bshk->bqhk", p, v[:, :hi]))
    return outs[0] if chunks == 1 else jnp.concatenate(outs, axis=1)


def cached_attention(q: jax.Array, k: jax.Array, v: jax.Array, positions: jax.Array) -> jax.Array:
    """Attention of T new queries over a KV cache: q [B, T, H, K], k/v [B, C, H, K], positions [B, T].

    Query t of row b sees cache slots s <= positions[b, t] (the causal mask by position, so rows of
    different lengths share one shape); softmax in float32, as ``causal_attention``.
    """
    scale = 1.0 / math.sqrt(q.shape[-1])
    s = jnp.einsum("bqhk,bshk->bhqs", q * jnp.asarray(scale, q.dtype), k).astype(jnp.float32)
    visible = positions[:, None, :, None] >= jnp.arange(k.shape[1])[None, None, None, :]
    s = jnp.where(visible, s, jnp.finfo(jnp.float32).min)
    p = jax.nn.softmax(s, axis=-1).astype(v.dtype)
    return jnp.einsum("bhqs,bshk->bqhk", p, v)
