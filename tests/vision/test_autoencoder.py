"""Latent diffusion's first stage: shapes (factor 2: 8×8×1 -> 4×4×c), logical names on every parameter, the
KL term equal to the closed form, the scale factor giving unit variance; and the point of it all, read off
the compiled programs: a latent denoising step costs a fraction of a pixel one."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from lineage_jax.config import ConfigError
from lineage_jax.imagegen import cost, setup as S
from lineage_jax.vision.autoencoder import (Autoencoder, AutoencoderConfig, autoencoder_loss, kl_to_standard_normal,
                                            scale_factor)

CFG = AutoencoderConfig(latent_channels=3, base=8, groups=4)


def test_shapes_names_and_loss():
    model = Autoencoder(CFG)
    x = jax.random.uniform(jax.random.key(0), (5, 8, 8, 1), minval=-1, maxval=1)
    boxed = jax.jit(model.init)(jax.random.key(1), x, jax.random.key(2))["params"]
    specs = jax.tree.leaves(nn.get_partition_spec(boxed), is_leaf=lambda s: isinstance(s, P))
    leaves = jax.tree.leaves(nn.unbox(boxed))
    assert len(specs) == len(leaves) and all(len(s) == leaf.ndim for s, leaf in zip(specs, leaves))
    params = nn.unbox(boxed)
    both = jax.jit(lambda p, x: (model.apply({"params": p}, x, method=Autoencoder.encode),
                                 autoencoder_loss(model, p, x, jax.random.key(3), kl_weight=0.5)))
    (mean, logvar), (loss, parts) = both(params, x)
    assert mean.shape == logvar.shape == (5, 4, 4, 3) == (5, *CFG.latent_shape) and CFG.factor == 2
    assert jax.eval_shape(lambda p, z: model.apply({"params": p}, z, method=Autoencoder.decode), params, mean).shape \
        == x.shape
    np.testing.assert_allclose(float(loss), float(parts["recon"] + 0.5 * parts["kl"]), rtol=1e-6)


def test_kl_equals_the_closed_form_and_the_scale_factor_gives_unit_variance():
    mean = jnp.array([[0.0, 1.0], [2.0, -1.0]])
    logvar = jnp.log(jnp.array([[1.0, 4.0], [0.25, 1.0]]))
    by_hand = [0.5 * (0 + 1 - 1 - 0) + 0.5 * (1 + 4 - 1 - np.log(4)),
               0.5 * (4 + 0.25 - 1 - np.log(0.25)) + 0.5 * (1 + 1 - 1 - 0)]
    np.testing.assert_allclose(float(kl_to_standard_normal(mean, logvar)), np.mean(by_hand), rtol=1e-6)
    z = 5.0 * jax.random.normal(jax.random.key(0), (256, 4, 4, 4))
    np.testing.assert_allclose(float(jnp.std(z * scale_factor(z))), 1.0, rtol=1e-5)


def test_a_latent_denoising_step_costs_a_fraction_of_a_pixel_step():
    """The same U-Net (one level, to keep the compile short) on 4×4×4 latents vs 8×8×1 images."""
    kw = dict(base=8, mults="1", groups=2)
    pixel, latent = S.DiffusionConfig(**kw), S.DiffusionConfig(space="latent", **kw)
    fp, fl = cost.denoise_step_flops(pixel), cost.denoise_step_flops(latent)
    assert 0 < fl < 0.5 * fp      # a quarter of the positions; the 4-channel input/output convolutions cost a little


def test_bad_config_is_one_line():
    with pytest.raises(ConfigError, match=r"^autoencoder.downs=4: need >= 1 and image_size=8 divisible by 2\^downs$"):
        AutoencoderConfig(downs=4)
