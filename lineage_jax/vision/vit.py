"""The Vision Transformer (Dosovitskiy et al. 2021, "An Image is Worth 16x16 Words").

An image [B, H, W, C] is cut into N = (H/P)(W/P) patches of P×P pixels; each flattened patch is
projected to the width D (eq. 1: x_p E, the same as a P×P convolution with stride P), a learned
class token is prepended, learned positions are added, and L pre-LN encoder blocks follow
(eqs. 2-3: x + MSA(LN(x)), x + MLP(LN(x))). The image's representation is the final LN of the
class token (eq. 4) or, with ``pool="mean"``, the mean over patches.

The block is built from ``lineage_jax.nn`` (``Dense``, ``layer_norm``, ``GeluMLP``) and
``attention.mha.attention`` without a mask (bidirectional), so it shards like the language
models: every parameter has logical axis names (``embed``, ``heads``, ``kv``, ``mlp``,
``position``); the patch pixels (P, P, C) stay replicated (None). The MLP uses GELU's tanh form
(as GPT-2 here); Hugging Face's ViT uses the exact erf form, so only the embeddings are compared
number for number (tests/vision).

Used purely: ``params = ViT(cfg).init(key, images)["params"]``; ``ViT(cfg).apply(...)``.
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from lineage_jax.attention.mha import attention
from lineage_jax.config.errors import ConfigError
from lineage_jax.nn import Dense, GeluMLP, LayerNorm, constrain, layer_norm, param


@dataclasses.dataclass(frozen=True)
class ViTConfig:
    """ViT-Ti/S/B are (192, 12, 3), (384, 12, 6), (768, 12, 12) in (width, depth, heads); defaults here are tiny."""
    image_size: int = 32
    patch_size: int = 4
    channels: int = 3
    width: int = 64
    depth: int = 2
    heads: int = 4
    mlp_dim: int = 128
    num_classes: int = 0            # 0: no classification head (an encoder, as CLIP uses it)
    pool: str = "cls"               # "cls" (the class token, eq. 4) or "mean" (average of the patches)
    layernorm_eps: float = 1e-6
    init_std: float = 0.02
    dropout: float = 0.0
    dtype: str = "float32"
    param_dtype: str = "float32"

    def __post_init__(self):
        for key in ("image_size", "patch_size", "channels", "width", "depth", "heads", "mlp_dim"):
            if getattr(self, key) < 1:
                raise ConfigError(f"vit.{key}={getattr(self, key)}: must be a positive integer")
        if self.image_size % self.patch_size:
            raise ConfigError(f"vit.patch_size={self.patch_size}: must divide image_size={self.image_size}")
        if self.width % self.heads:
            raise ConfigError(f"vit.heads={self.heads}: must divide width={self.width}")
        if self.pool not in ("cls", "mean"):
            raise ConfigError(f"vit.pool='{self.pool}': allowed cls, mean")

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


def patchify(images: jax.Array, p: int) -> jax.Array:
    """[B, H, W, C] -> [B, N, P, P, C], patches in row-major order (as a stride-P convolution's output)."""
    B, H, W, C = images.shape
    x = images.reshape(B, H // p, p, W // p, p, C).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(B, (H // p) * (W // p), p, p, C)


class EncoderBlock(nn.Module):
    """x + MSA(LN(x)), then x + MLP(LN(x)) (ViT eqs. 2-3): bidirectional self-attention, pre-LN."""
    cfg: ViTConfig
    deterministic: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:   # [B, T, D]
        c = self.cfg
        H, K = c.heads, c.width // c.heads
        dtype, pdtype = jnp.dtype(c.dtype), jnp.dtype(c.param_dtype)
        dense = lambda feats, axes, name, in_axes=1: Dense(feats, axes, in_axes=in_axes, init_std=c.init_std,
                                                           dtype=dtype, param_dtype=pdtype, name=name)
        a = layer_norm("ln1", c.layernorm_eps, dtype, pdtype)(x)
        q, k, v = (constrain(dense((H, K), ("embed", "heads", "kv"), n)(a), ("batch", "length", "heads", "kv"))
                   for n in ("query", "key", "value"))
        y = dense((c.width,), ("heads", "kv", "embed"), "out", in_axes=2)(attention(q, k, v))
        x = x + nn.Dropout(c.dropout, deterministic=self.deterministic)(y)
        mlp = GeluMLP(c.mlp_dim, c.width, init_std=c.init_std, proj_std=c.init_std, dropout=c.dropout,
                      deterministic=self.deterministic, dtype=dtype, param_dtype=pdtype, name="mlp")
        x = x + mlp(layer_norm("ln2", c.layernorm_eps, dtype, pdtype)(x))
        return constrain(x, ("batch", "seq", "embed"))


class ViT(nn.Module):
    """images [B, H, W, C] -> features [B, D] (or logits [B, num_classes] with a head)."""
    cfg: ViTConfig
    deterministic: bool = True

    def setup(self):
        c = self.cfg
        dtype, pdtype = jnp.dtype(c.dtype), jnp.dtype(c.param_dtype)
        self.patch = Dense((c.width,), (None, None, None, "embed"), in_axes=3, init_std=c.init_std,
                           dtype=dtype, param_dtype=pdtype)
        self.cls = param(self, "cls", nn.initializers.zeros, (c.width,), pdtype, ("embed",))
        self.pos = param(self, "pos", nn.initializers.normal(c.init_std), (c.num_patches + 1, c.width), pdtype,
                         ("position", "embed"))
        self.blocks = [EncoderBlock(c, self.deterministic) for _ in range(c.depth)]   # blocks_0, blocks_1, ...
        self.drop = nn.Dropout(c.dropout, deterministic=self.deterministic)
        self.ln_f = LayerNorm(c.layernorm_eps, dtype, pdtype)
        if c.num_classes:
            self.head = Dense((c.num_classes,), ("embed", None), init_std=c.init_std, dtype=dtype, param_dtype=pdtype)

    def embed(self, images: jax.Array) -> jax.Array:
        """[B, H, W, C] -> [B, N + 1, D]: class token, then the projected patches, plus positions (eq. 1)."""
        c = self.cfg
        if images.shape[1:] != (c.image_size, c.image_size, c.channels):
            raise ValueError(f"images of shape {images.shape[1:]}; this ViT takes "
                             f"{(c.image_size, c.image_size, c.channels)} (H, W, C)")
        x = self.patch(patchify(images, c.patch_size))                               # [B, N, D]
        cls = jnp.broadcast_to(self.cls.astype(x.dtype), (x.shape[0], 1, c.width))
        x = jnp.concatenate([cls, x], axis=1) + self.pos.astype(x.dtype)
        return constrain(x, ("batch", "seq", "embed"))

    def features(self, images: jax.Array) -> jax.Array:
        """The image representation y = LN(z_L^0) (eq. 4), or LN of the patches' mean."""
        x = self.drop(self.embed(images))
        for block in self.blocks:
            x = block(x)
        x = self.ln_f(x)
        return x[:, 0] if self.cfg.pool == "cls" else x[:, 1:].mean(axis=1)

    def __call__(self, images: jax.Array) -> jax.Array:
        y = self.features(images)
        return self.head(y) if self.cfg.num_classes else y
