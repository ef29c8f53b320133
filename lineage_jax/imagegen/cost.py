"""FLOPs of compiled programs (XLA's ``cost_analysis``): a denoising step in pixel vs latent space, and a
train step, read off what the compiler will actually run rather than a formula."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from lineage_jax.imagegen import setup as S


def flops(compiled) -> float:
    """The ``flops`` entry of a compiled program's cost analysis (a dict, or a list of one in older JAX)."""
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", 0.0))


def denoise_step_flops(cfg: S.DiffusionConfig, batch: int = 1) -> float:
    """FLOPs of one ε-prediction (one reverse step, unguided) on ``batch`` images or latents."""
    params = jax.eval_shape(lambda: nn.unbox(S.init_params(cfg, jax.random.key(0))))
    x = jax.ShapeDtypeStruct((batch, *cfg.data_shape()), jnp.float32)
    t = jax.ShapeDtypeStruct((batch,), jnp.int32)
    eps = S.eps_model(cfg.unet())
    return flops(jax.jit(eps).lower(params, x, t, t).compile())


def decode_flops(cfg: S.DiffusionConfig, batch: int = 1) -> float:
    """FLOPs of decoding ``batch`` latents to pixels (paid once per sample, not per step)."""
    from lineage_jax.vision.autoencoder import Autoencoder
    boxed = jax.eval_shape(lambda: Autoencoder(cfg.autoencoder()).init(
        jax.random.key(0), jnp.zeros((1, *S.IMAGE)), jax.random.key(0))["params"])
    z = jax.ShapeDtypeStruct((batch, *cfg.autoencoder().latent_shape), jnp.float32)
    return flops(jax.jit(S.decoder(cfg)).lower(nn.unbox(boxed), z).compile())
