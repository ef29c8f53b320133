"""A small U-Net ε-model for DDPM (Ho et al. 2020, App. B; after PixelCNN++ and Wide ResNets).

images [B, H, W, C], timesteps [B], labels [B] -> ε̂ [B, H, W, C]. Residual blocks with group
normalisation (Wu & He 2018) and the time embedding added inside each block; the sinusoidal
time embedding of the Transformer (Vaswani et al. 2017, §3.5) through a 2-layer MLP; self-attention
at the lowest resolution; skip connections from each down level to its up level; the last
convolution starts at zero (so ε̂ = 0 at init). A label embedding (row 0 = the null label ∅) is
added to the time embedding: the conditioning that classifier-free guidance drops.

Every parameter is named through ``nn.hooks.param``: convolution kernels (kh, kw, C_in, C_out) as
(None, None, None, "embed"), so ZeRO/FSDP can split output channels at rest; norms and biases
("embed",).
"""
from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from lineage_jax.attention.mha import attention
from lineage_jax.config.errors import ConfigError
from lineage_jax.nn import Dense, param


@dataclasses.dataclass(frozen=True)
class UNetConfig:
    image_size: int = 16
    channels: int = 1
    base: int = 32                       # channels at full resolution
    mults: tuple[int, ...] = (1, 2)      # channel multiplier per level; each level after the first halves H, W
    groups: int = 8                      # group norm groups (must divide every level's channels)
    num_classes: int = 0                 # labels 1..num_classes, 0 = null (unconditional); 0 classes: none
    dtype: str = "float32"
    param_dtype: str = "float32"

    def __post_init__(self):
        if self.image_size % 2 ** (len(self.mults) - 1):
            raise ConfigError(f"unet.image_size={self.image_size}: must be divisible by 2^(levels-1) = "
                              f"{2 ** (len(self.mults) - 1)}")
        bad = [self.base * m for m in self.mults if (self.base * m) % self.groups]
        if bad:
            raise ConfigError(f"unet.groups={self.groups}: must divide every level's channels ({bad[0]} does not)")


def timestep_embedding(t: jax.Array, dim: int, max_period: float = 10000.0) -> jax.Array:
    """[B] -> [B, dim]: sin/cos of t at geometric frequencies (Vaswani et al. 2017, §3.5)."""
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args = t.astype(jnp.float32)[:, None] * freqs[None]
    return jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)


class Conv(nn.Module):
    """A 'SAME' 2-D convolution with logically named kernel and bias."""
    features: int
    kernel: int = 3
    stride: int = 1
    zero_init: bool = False
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        fan_in = self.kernel * self.kernel * x.shape[-1]
        init = nn.initializers.zeros if self.zero_init else nn.initializers.normal(1 / math.sqrt(fan_in))
        w = param(self, "kernel", init, (self.kernel, self.kernel, x.shape[-1], self.features), self.param_dtype,
                  (None, None, None, "embed"))
        b = param(self, "bias", nn.initializers.zeros, (self.features,), self.param_dtype, ("embed",))
        y = jax.lax.conv_general_dilated(x.astype(self.dtype), w.astype(self.dtype), (self.stride, self.stride),
                                         "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return y + b.astype(self.dtype)


class GroupNorm(nn.Module):
    """Group normalisation (Wu & He 2018) over (H, W, C/G) per group, statistics in float32."""
    groups: int
    eps: float = 1e-5
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        B, H, W, C = x.shape
        scale = param(self, "scale", nn.initializers.ones, (C,), self.param_dtype, ("embed",))
        bias = param(self, "bias", nn.initializers.zeros, (C,), self.param_dtype, ("embed",))
        g = x.astype(jnp.float32).reshape(B, H, W, self.groups, C // self.groups)
        mean = g.mean(axis=(1, 2, 4), keepdims=True)
        var = jnp.square(g - mean).mean(axis=(1, 2, 4), keepdims=True)
        y = ((g - mean) * jax.lax.rsqrt(var + self.eps)).reshape(B, H, W, C)
        return (y * scale + bias).astype(x.dtype)


class ResBlock(nn.Module):
    """x + conv(σ(GN(conv(σ(GN(x))) + W·temb))): the Wide-ResNet block with the time added in."""
    features: int
    groups: int
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, temb):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = Conv(self.features, **kw)(nn.silu(GroupNorm(self.groups, param_dtype=self.param_dtype)(x)))
        h = h + Dense((self.features,), (None, "embed"), **kw, name="temb")(nn.silu(temb))[:, None, None, :]
        h = Conv(self.features, zero_init=True, **kw)(nn.silu(GroupNorm(self.groups, param_dtype=self.param_dtype)(h)))
        skip = x if x.shape[-1] == self.features else Conv(self.features, kernel=1, **kw, name="skip")(x)
        return skip + h


class SpatialAttention(nn.Module):
    """Self-attention over the H·W positions of a feature map (one head), residual."""
    groups: int
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        B, H, W, C = x.shape
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = GroupNorm(self.groups, param_dtype=self.param_dtype)(x).reshape(B, H * W, C)
        q, k, v = (Dense((1, C), ("embed", "heads", "kv"), **kw, name=n)(h) for n in ("query", "key", "value"))
        y = Dense((C,), ("heads", "kv", "embed"), in_axes=2, init_std=0.0, **kw, name="out")(attention(q, k, v))
        return x + y.reshape(B, H, W, C)


class UNet(nn.Module):
    cfg: UNetConfig

    @nn.compact
    def __call__(self, x: jax.Array, t: jax.Array, labels: jax.Array | None = None) -> jax.Array:
        c = self.cfg
        kw = dict(dtype=jnp.dtype(c.dtype), param_dtype=jnp.dtype(c.param_dtype))
        D = 4 * c.base
        temb = Dense((D,), (None, "embed"), **kw, name="time_in")(timestep_embedding(t, c.base))
        temb = Dense((D,), ("embed", "mlp"), **kw, name="time_out")(nn.silu(temb))
        if c.num_classes:
            table = param(self, "label_embed", nn.initializers.normal(0.02), (c.num_classes + 1, D),
                          kw["param_dtype"], (None, "mlp"))
            lab = jnp.zeros(x.shape[:1], jnp.int32) if labels is None else labels
            temb = temb + jnp.take(table, lab, axis=0).astype(temb.dtype)
        h = Conv(c.base, **kw, name="conv_in")(x)
        skips = []
        for i, m in enumerate(c.mults):
            h = ResBlock(c.base * m, c.groups, **kw, name=f"down_{i}")(h, temb)
            skips.append(h)
            if i < len(c.mults) - 1:
                h = Conv(c.base * m, stride=2, **kw, name=f"downsample_{i}")(h)
        h = ResBlock(h.shape[-1], c.groups, **kw, name="mid_1")(h, temb)
        h = SpatialAttention(c.groups, **kw, name="mid_attn")(h)
        h = ResBlock(h.shape[-1], c.groups, **kw, name="mid_2")(h, temb)
        for i in reversed(range(len(c.mults))):
            h = ResBlock(c.base * c.mults[i], c.groups, **kw, name=f"up_{i}")(
                jnp.concatenate([h, skips.pop()], axis=-1), temb)
            if i > 0:
                B, H, W, C = h.shape
                h = jax.image.resize(h, (B, 2 * H, 2 * W, C), "nearest")
                h = Conv(c.base * c.mults[i - 1], **kw, name=f"upsample_{i}")(h)
        h = nn.silu(GroupNorm(c.groups, param_dtype=kw["param_dtype"], name="norm_out")(h))
        return Conv(c.channels, zero_init=True, **kw, name="conv_out")(h)


def eps_model(cfg: UNetConfig):
    """The U-Net as ``eps_fn(params, x_t, t, labels)``, the form ``lineage_jax.diffusion`` samples and trains."""
    net = UNet(cfg)
    return lambda params, x, t, labels=None: net.apply({"params": params}, x, t, labels)
