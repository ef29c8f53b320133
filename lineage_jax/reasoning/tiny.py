"""A small decoder-only Transformer for the chapter's experiments, which can hand back its attention patterns.

The project's GPT (``lineage_jax.models.gpt``) computes attention inside a fused kernel switch and returns
logits only; the induction-head measurements of Olsson et al. (2022) need each head's pattern A [B, H, T, T]
and its OV circuit. ``TinyLM`` is the same decoder in a few lines, with two switches of theirs:

    mlp=False   the attention-only model of Elhage et al. (2021) / Olsson et al. (2022): the residual
                stream is embeddings + the heads' outputs, so every path is a product of weight matrices
    norm=False  no LayerNorm, so the OV circuit W_U·W_O·W_V·W_E is exactly what a head adds to the logits

Used purely: ``params = TinyLM(cfg).init(key, tokens)["params"]``, ``logits = TinyLM(cfg).apply({"params":
params}, tokens)``; with ``mutable=["attention"]`` the patterns are sown as ``attention/layer_i/pattern`` [B, H, T, T].
Every parameter carries logical axis names (``lineage_jax.nn.hooks.param``).
"""
from __future__ import annotations

import dataclasses
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from lineage_jax.config import ConfigError
from lineage_jax.nn.hooks import param


@dataclasses.dataclass(frozen=True)
class TinyConfig:
    vocab: int
    context: int
    d: int = 64
    heads: int = 4
    layers: int = 2
    mlp: bool = True
    norm: bool = True
    dtype: str = "float32"
    param_dtype: str = "float32"

    def __post_init__(self):
        for f in ("vocab", "context", "d", "heads", "layers"):
            if getattr(self, f) < 1:
                raise ConfigError(f"{f}={getattr(self, f)}: must be at least 1")
        if self.d % self.heads:
            raise ConfigError(f"d={self.d}: must be divisible by heads={self.heads}")


def _norm(module: nn.Module, name: str, x: jax.Array, cfg: TinyConfig) -> jax.Array:
    if not cfg.norm:
        return x
    scale = param(module, f"{name}_scale", nn.initializers.ones, (cfg.d,), jnp.dtype(cfg.param_dtype), ("embed",))
    x32 = x.astype(jnp.float32)
    y = (x32 - x32.mean(-1, keepdims=True)) * jax.lax.rsqrt(x32.var(-1, keepdims=True) + 1e-5)
    return (y * scale).astype(x.dtype)


class Layer(nn.Module):
    cfg: TinyConfig
    index: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = self.cfg
        H, K, T = c.heads, c.d // c.heads, x.shape[1]
        dt, pdt = jnp.dtype(c.dtype), jnp.dtype(c.param_dtype)
        init = nn.initializers.normal(c.d ** -0.5)
        wq, wk, wv = (param(self, n, init, (c.d, H, K), pdt, ("embed", "heads", "kv")) for n in ("wq", "wk", "wv"))
        wo = param(self, "wo", nn.initializers.normal((H * K) ** -0.5 / math.sqrt(2 * c.layers)), (H, K, c.d), pdt,
                   ("heads", "kv", "embed"))
        a = _norm(self, "ln1", x, c)
        q, k, v = (jnp.einsum("btd,dhk->bhtk", a, w.astype(dt)) for w in (wq, wk, wv))
        scores = jnp.einsum("bhtk,bhsk->bhts", q, k) / math.sqrt(K)
        causal = jnp.tril(jnp.ones((T, T), bool))
        pattern = jax.nn.softmax(jnp.where(causal, scores.astype(jnp.float32), -1e30), axis=-1)
        self.sow("attention", "pattern", pattern)
        x = x + jnp.einsum("bhts,bhsk,hkd->btd", pattern.astype(dt), v, wo.astype(dt))
        if c.mlp:
            w1 = param(self, "w1", init, (c.d, 4 * c.d), pdt, ("embed", "mlp"))
            w2 = param(self, "w2", nn.initializers.normal((4 * c.d) ** -0.5 / math.sqrt(2 * c.layers)),
                       (4 * c.d, c.d), pdt, ("mlp", "embed"))
            h = jax.nn.gelu(_norm(self, "ln2", x, c) @ w1.astype(dt))
            x = x + h @ w2.astype(dt)
        return x


class TinyLM(nn.Module):
    cfg: TinyConfig

    @nn.compact
    def __call__(self, tokens: jax.Array) -> jax.Array:
        """tokens [B, T] int -> logits [B, T, V] (float32)."""
        c = self.cfg
        if tokens.shape[-1] > c.context:
            raise ValueError(f"sequence length {tokens.shape[-1]} exceeds context={c.context}")
        pdt, dt = jnp.dtype(c.param_dtype), jnp.dtype(c.dtype)
        wte = param(self, "wte", nn.initializers.normal(1.0), (c.vocab, c.d), pdt, ("vocab", "embed"))
        wpe = param(self, "wpe", nn.initializers.normal(1.0), (c.context, c.d), pdt, ("position", "embed"))
        unembed = param(self, "unembed", nn.initializers.normal(c.d ** -0.5), (c.d, c.vocab), pdt,
                        ("embed", "vocab"))
        x = (wte[tokens] + wpe[: tokens.shape[-1]]).astype(dt)
        for i in range(c.layers):
            x = Layer(c, i, name=f"layer_{i}")(x)
        return (_norm(self, "ln_f", x, c) @ unembed.astype(dt)).astype(jnp.float32)


def attention_patterns(model: TinyLM, params, tokens: jax.Array) -> list[jax.Array]:
    """Every layer's attention pattern [B, H, T, T] on ``tokens`` (row t: where position t looks)."""
    return _patterns(model, params, tokens)


@functools.partial(jax.jit, static_argnums=0)
def _patterns(model, params, tokens):
    _, sown = model.apply({"params": params}, tokens, mutable=["attention"])
    return [sown["attention"][f"layer_{i}"]["pattern"][0] for i in range(model.cfg.layers)]


def init(cfg: TinyConfig, key: jax.Array):
    """The model and its (unboxed) parameters."""
    from flax.core import meta
    model = TinyLM(cfg)
    params = model.init(key, jnp.zeros((1, cfg.context), jnp.int32))["params"]
    return model, meta.unbox(params)


def count_params(params) -> int:
    return int(sum(math.prod(x.shape) for x in jax.tree.leaves(params)))
