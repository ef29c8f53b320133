"""A small CNN digit classifier: the judge of generated digits (its accuracy on the intended class) and
the feature map of their Fréchet distance (``lineage_jax/diffusion/metrics.py``).

images [B, H, W, C] in [-1, 1] -> (logits [B, classes], features [B, F]): two 3×3 conv + ReLU + 2×2
average-pool stages, then a dense feature layer (ReLU) and the class layer. The features are the
penultimate activations, as FID reads Inception's pool layer (Heusel et al. 2017); F is kept small
(32) so a covariance fitted to a few hundred samples is well determined. Every parameter is named
through ``nn.hooks.param`` (the U-Net's ``Conv``; ``nn.Dense``).
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from lineage_jax.config.errors import ConfigError
from lineage_jax.nn import Dense
from lineage_jax.vision.unet import Conv


@dataclasses.dataclass(frozen=True)
class ClassifierConfig:
    image_size: int = 8
    channels: int = 1
    widths: tuple[int, ...] = (16, 32)    # conv channels per stage; each stage halves H, W
    features: int = 32                    # the penultimate (feature) width
    classes: int = 10

    def __post_init__(self):
        if self.image_size % 2 ** len(self.widths):
            raise ConfigError(f"classifier.image_size={self.image_size}: must be divisible by 2^stages = "
                              f"{2 ** len(self.widths)}")


class DigitClassifier(nn.Module):
    cfg: ClassifierConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        h = x.astype(jnp.float32)
        for i, w in enumerate(self.cfg.widths):
            h = nn.relu(Conv(w, name=f"conv_{i}")(h))
            h = nn.avg_pool(h, (2, 2), (2, 2))
        h = h.reshape(h.shape[0], -1)
        feats = nn.relu(Dense((self.cfg.features,), ("embed", "mlp"), init_std=(1.0 / h.shape[-1]) ** 0.5,
                              name="features")(h))
        logits = Dense((self.cfg.classes,), ("mlp", "vocab"), init_std=(1.0 / self.cfg.features) ** 0.5,
                       name="logits")(feats)
        return logits, feats
