"""CLIP's training settings, checked in one line each without importing JAX (so a command can refuse
a bad argument before JAX starts); the strategy name is checked by ``clip.setup.build``, before compiling."""
from __future__ import annotations

import dataclasses

from lineage_jax.config.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    steps: int = 600
    batch_size: int = 64
    lr: float = 5e-4
    warmup: int = 50
    weight_decay: float = 0.1
    seed: int = 0
    strategy: str = "DP"
    save_every: int = 200
    dataset: str = "default"          # the captioned_shapes config: default (4,000 train pairs) | tiny (300)

    def __post_init__(self):
        for key in ("steps", "batch_size", "save_every"):
            if not isinstance(getattr(self, key), int) or getattr(self, key) < 1:
                raise ConfigError(f"{key}={getattr(self, key)}: must be a positive integer")
        if self.warmup < 0:
            raise ConfigError(f"warmup={self.warmup}: must be >= 0")
        if not self.lr > 0 or self.weight_decay < 0:
            raise ConfigError(f"lr={self.lr}, weight_decay={self.weight_decay}: need lr > 0 and weight_decay >= 0")
        if self.dataset not in ("default", "tiny"):
            raise ConfigError(f"dataset={self.dataset!r}: allowed default, tiny")
