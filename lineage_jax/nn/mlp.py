"""The position-wise feed-forward networks: GELU (GPT-2) and SwiGLU (Llama).

Both are config-free: widths, init scales, dropout and dtypes are fields, so every model
(and every new chapter) builds its FFN from the same two modules. Kernels are logically
named ``("embed", "mlp")`` in and ``("mlp", "embed")`` out; the input hook (Megatron's f)
runs once per FFN. Flax runs every module method under ``jax.named_scope`` (``flax_profile``),
so profiles and HLO dumps name each FFN by its module path (``blocks_0/mlp/fc``).
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from lineage_jax.nn.hooks import constrain, hooks
from lineage_jax.nn.linear import Dense


class GeluMLP(nn.Module):
    """FFN(x) = GELU(x W_fc + b_fc) W_proj + b_proj (Hendrycks & Gimpel 2016, tanh form; GPT-2).

    ``proj_std``: GPT-2 §2.3 scales the residual projection's init by 1/√(2L)."""
    hidden: int
    width: int
    init_std: float = 0.02
    proj_std: float = 0.02
    dropout: float = 0.0
    deterministic: bool = True
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = Dense((self.hidden,), ("embed", "mlp"), init_std=self.init_std, hook_input=True,
                  dtype=self.dtype, param_dtype=self.param_dtype, name="fc")(x)
        h = constrain(jax.nn.gelu(h, approximate=True), ("batch", "length", "mlp"))
        out = Dense((self.width,), ("mlp", "embed"), init_std=self.proj_std,
                    dtype=self.dtype, param_dtype=self.param_dtype, name="proj")(h)
        return nn.Dropout(self.dropout, deterministic=self.deterministic)(out)


class SwiGLU(nn.Module):
    """FFN_SwiGLU(x) = (Swish₁(x W_gate) ⊙ x W_up) W_down (Shazeer 2020, eq. 6; Swish₁ = SiLU), no biases."""
    hidden: int
    width: int
    init_std: float = 0.02
    down_std: float = 0.02
    dropout: float = 0.0
    deterministic: bool = True
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        dense = lambda f, axes, name, std: Dense((f,), axes, use_bias=False, init_std=std, dtype=self.dtype,
                                                 param_dtype=self.param_dtype, name=name)
        x = hooks().dense_in(x, ("embed", "mlp"), 1)           # once for gate and up
        h = (jax.nn.silu(dense(self.hidden, ("embed", "mlp"), "gate", self.init_std)(x))
             * dense(self.hidden, ("embed", "mlp"), "up", self.init_std)(x))
        h = constrain(h, ("batch", "length", "mlp"))
        out = dense(self.width, ("mlp", "embed"), "down", self.down_std)(h)
        return nn.Dropout(self.dropout, deterministic=self.deterministic)(out)
