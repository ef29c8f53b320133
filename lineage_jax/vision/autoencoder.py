"""A small KL-regularised autoencoder: latent diffusion's first stage (Rombach et al. 2022, §3, App. G).

The encoder maps an image [B, H, W, C] to the mean and log-variance of a diagonal Gaussian over a latent
[B, H/f, W/f, c] (f = 2^downs; each down stage a stride-2 convolution); the decoder maps a latent back
to pixels (nearest upsampling + convolutions). Trained on reconstruction error plus a small KL term
towards N(0, I) (the paper's "KL-reg", weight ~1e-6 there beside a perceptual and GAN loss; here the
squared error and a larger weight), so the latent space stays smooth and bounded without quantisation.
Diffusion then runs on the latents scaled to unit variance (``scale_factor``, Stable Diffusion's 0.18215
computed the same way: 1 / std of the training latents).
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from lineage_jax.config.errors import ConfigError
from lineage_jax.vision.unet import Conv, GroupNorm


@dataclasses.dataclass(frozen=True)
class AutoencoderConfig:
    image_size: int = 8
    channels: int = 1
    latent_channels: int = 4      # c (Stable Diffusion: 4)
    base: int = 32
    downs: int = 1                # f = 2^downs (1: 8×8 -> 4×4)
    groups: int = 8

    def __post_init__(self):
        if self.downs < 1 or self.image_size % 2 ** self.downs:
            raise ConfigError(f"autoencoder.downs={self.downs}: need >= 1 and image_size={self.image_size} "
                              f"divisible by 2^downs")
        if self.base % self.groups:
            raise ConfigError(f"autoencoder.groups={self.groups}: must divide base={self.base}")

    @property
    def factor(self) -> int:
        return 2 ** self.downs

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        s = self.image_size // self.factor
        return (s, s, self.latent_channels)


def _block(x, features, groups, name):
    """conv → group norm → SiLU."""
    return nn.silu(GroupNorm(groups, name=f"{name}_norm")(Conv(features, name=f"{name}_conv")(x)))


class Encoder(nn.Module):
    cfg: AutoencoderConfig

    @nn.compact
    def __call__(self, x):
        c = self.cfg
        h = _block(x, c.base, c.groups, "in")
        for i in range(c.downs):
            h = nn.silu(Conv(c.base, stride=2, name=f"down_{i}")(h))
            h = _block(h, c.base, c.groups, f"mid_{i}")
        moments = Conv(2 * c.latent_channels, name="moments")(h)
        mean, logvar = jnp.split(moments, 2, axis=-1)
        return mean, jnp.clip(logvar, -30.0, 20.0)


class Decoder(nn.Module):
    cfg: AutoencoderConfig

    @nn.compact
    def __call__(self, z):
        c = self.cfg
        h = _block(z, c.base, c.groups, "in")
        for i in range(c.downs):
            B, H, W, C = h.shape
            h = jax.image.resize(h, (B, 2 * H, 2 * W, C), "nearest")
            h = _block(h, c.base, c.groups, f"up_{i}")
        return Conv(c.channels, name="out")(h)


class Autoencoder(nn.Module):
    """``__call__`` (for init and training): (reconstruction, mean, logvar) from a sampled latent;
    ``encode`` / ``decode`` through ``apply(..., method=...)``."""
    cfg: AutoencoderConfig

    def setup(self):
        self.encoder, self.decoder = Encoder(self.cfg), Decoder(self.cfg)

    def encode(self, x):
        return self.encoder(x)

    def decode(self, z):
        return self.decoder(z)

    def __call__(self, x, key):
        mean, logvar = self.encoder(x)
        z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(key, mean.shape)
        return self.decoder(z), mean, logvar


def kl_to_standard_normal(mean, logvar) -> jax.Array:
    """KL(N(μ, σ²) ‖ N(0, 1)) summed over latent elements, averaged over the batch: ½ Σ (μ² + σ² - 1 - log σ²)."""
    kl = 0.5 * (jnp.square(mean) + jnp.exp(logvar) - 1.0 - logvar)
    return kl.reshape(kl.shape[0], -1).sum(-1).mean()


def autoencoder_loss(model: Autoencoder, params, x, key, kl_weight: float) -> tuple[jax.Array, dict]:
    """Σ_pixels (x - x̂)² (per image, batch mean) + kl_weight · KL: the VAE bound with a reweighted KL."""
    recon, mean, logvar = model.apply({"params": params}, x, key)
    rec = jnp.square(recon - x).reshape(x.shape[0], -1).sum(-1).mean()
    kl = kl_to_standard_normal(mean, logvar)
    return rec + kl_weight * kl, {"recon": rec, "kl": kl}


def scale_factor(latents) -> float:
    """1 / std of the training latents: Stable Diffusion's scale factor, so diffusion sees unit variance."""
    return float(1.0 / jnp.std(jnp.asarray(latents, jnp.float32)))
