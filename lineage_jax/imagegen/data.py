"""The images diffusion learns here: scikit-learn's 8×8 digits (the ``sklearn_digits`` TFDS builder of
``lineage_jax/data/digits.py``, no download), as float32 in [-1, 1] with their labels.

They stay at their native 8×8: the 16 grey levels carry no more detail at 16×16, and on two CPU cores
a U-Net at 8×8 costs a quarter of one at 16×16 per step. Latent diffusion then runs at 4×4.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

DEFAULT_DATA_DIR = Path.home() / ".cache" / "lineage_jax" / "tfds"


def resolve(data_dir: str | Path | None) -> Path:
    """``data_dir``, else ``$TFDS_DATA_DIR``, else ``~/.cache/lineage_jax/tfds`` (as every TFDS set here)."""
    return Path(data_dir or os.environ.get("TFDS_DATA_DIR") or DEFAULT_DATA_DIR).expanduser()


def to_signed(images) -> np.ndarray:
    """uint8 grey levels 0 … 16 -> float32 in [-1, 1] (0 -> -1: the background is black)."""
    return np.asarray(images, np.float32) / 8.0 - 1.0


def digit_images(data_dir: str | Path | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{"train": (x [N, 8, 8, 1] float32 in [-1, 1], y [N] int32 digits 0-9), "test": …}."""
    from lineage_jax.data.digits import load_digits
    return {split: (to_signed(x), np.asarray(y, np.int32)) for split, (x, y) in load_digits(resolve(data_dir)).items()}
