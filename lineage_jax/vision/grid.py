"""Sample grids as PNG files: images in [-1, 1] (the diffusion models' range) tiled row by row.

``image_grid`` is pure numpy (tested for layout and range); ``save_png`` encodes with Pillow (a
matplotlib dependency) and writes through ``runs.atomic`` so a reader never sees half a file.
"""
from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np

from lineage_jax.runs.atomic import write_bytes


def image_grid(images, nrow: int | None = None, pad: int = 1) -> np.ndarray:
    """[N, H, W, C] floats in [-1, 1] -> one uint8 image [rows·(H+pad)+pad, nrow·(W+pad)+pad, C];
    values outside [-1, 1] are clipped, empty cells and padding are black. nrow: images per row (default ⌈√N⌉)."""
    x = np.asarray(images, np.float32)
    if x.ndim != 4:
        raise ValueError(f"image_grid: images must be [N, H, W, C], got shape {x.shape}")
    N, H, W, C = x.shape
    nrow = nrow or math.ceil(math.sqrt(N))
    rows = math.ceil(N / nrow)
    grid = np.zeros((rows * (H + pad) + pad, nrow * (W + pad) + pad, C), np.uint8)
    pixels = np.round((np.clip(x, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)
    for i in range(N):
        r, c = divmod(i, nrow)
        grid[pad + r * (H + pad): pad + r * (H + pad) + H, pad + c * (W + pad): pad + c * (W + pad) + W] = pixels[i]
    return grid


def save_png(path: str | Path, grid: np.ndarray) -> Path:
    """Write a uint8 [H, W, 1 or 3] image as a PNG (atomically); returns the path."""
    from PIL import Image
    arr = grid[..., 0] if grid.shape[-1] == 1 else grid
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    write_bytes(path, buf.getvalue())
    return Path(path)
