"""Sample grids: the requested layout, [-1, 1] mapped to 0..255, a valid PNG that reads back equal;
a grid of DDIM samples is the same file for the same seed."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lineage_jax import diffusion as D
from lineage_jax.vision import image_grid, save_png

PIL = pytest.importorskip("PIL.Image")


def test_grid_layout_and_range():
    imgs = np.stack([np.full((4, 5, 1), v, np.float32) for v in (-1.0, 0.0, 1.0, 3.0, -7.0)])
    g = image_grid(imgs, nrow=3, pad=1)
    assert g.shape == (2 * 5 + 1, 3 * 6 + 1, 1) and g.dtype == np.uint8
    assert g[1, 1, 0] == 0 and g[1, 7, 0] == 128 and g[1, 13, 0] == 255      # -1, 0, 1
    assert g[6, 1, 0] == 255 and g[6, 7, 0] == 0                              # clipped
    assert g[6, 13, 0] == 0 and g[0].max() == 0                               # empty cell, padding


def test_png_is_valid_and_sampling_is_deterministic_given_a_seed(tmp_path):
    sched = D.make_schedule("linear", 100)
    eps = lambda p, x, t, c: 0.3 * x
    paths = []
    for i, seed in enumerate((7, 7, 8)):
        x = D.sample(eps, None, sched, (6, 8, 8, 3), jax.random.key(seed), sampler="ddim", steps=5)
        paths.append(save_png(tmp_path / f"g{i}.png", image_grid(x, nrow=3)))
    with PIL.open(paths[0]) as im:
        assert im.format == "PNG" and im.size == (3 * 9 + 1, 2 * 9 + 1) and im.mode == "RGB"
        back = np.asarray(im)
    x = D.sample(eps, None, sched, (6, 8, 8, 3), jax.random.key(7), sampler="ddim", steps=5)
    np.testing.assert_array_equal(back, image_grid(x, nrow=3))
    assert paths[0].read_bytes() == paths[1].read_bytes() != paths[2].read_bytes()
