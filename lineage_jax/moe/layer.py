"""A mixture-of-experts feed-forward layer (Shazeer et al. 2017; GShard; Switch), one device.

    y = Σ_j w[n, j] · FFN_{e[n, j]}(x[n]),   FFN_e(x) = act(x · W_in[e]) · W_out[e]

Parameters (logical axes on every one):
    router/kernel        [D, E]     ("embed", "expert")     router logits x·W_g, float32 math
    router/noise_kernel  [D, E]     ("embed", "expert")     Shazeer only: x·W_noise
    w_in                 [E, D, F]  ("expert", "embed", "mlp")
    w_out                [E, F, D]  ("expert", "mlp", "embed")

The router always runs in float32 whatever ``dtype`` is (Switch §2.4, "selective precision");
the experts run in ``dtype``. Randomness (Shazeer's gate noise, GShard's random second
expert) is drawn from the ``"router"`` RNG stream when ``deterministic=False`` and that
stream is supplied; otherwise routing is deterministic.
"""
from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from lineage_jax.models.layers import param
from lineage_jax.moe import routers
from lineage_jax.moe.dispatch import moe_ffn


class Router(nn.Module):
    """Router logits in float32: x·W_g (and x·W_noise when ``noisy``), W: [D, E] ("embed", "expert")."""
    num_experts: int
    noisy: bool = False
    init_std: float = 0.02
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array | None]:
        D, E = x.shape[-1], self.num_experts
        xf = x.astype(jnp.float32)
        w = param(self, "kernel", nn.initializers.normal(self.init_std), (D, E), self.param_dtype, ("embed", "expert"))
        logits = xf @ w.astype(jnp.float32)
        noise = None
        if self.noisy:  # Shazeer et al. initialise W_noise to zero: noise std softplus(0) at start
            wn = param(self, "noise_kernel", nn.initializers.zeros, (D, E), self.param_dtype, ("embed", "expert"))
            noise = xf @ wn.astype(jnp.float32)
        return logits, noise


class MoEFeedForward(nn.Module):
    """MoE FFN: x [..., D] -> (y [..., D], metrics).

    router     "shazeer" (noisy top-k, k = ``k``) | "gshard" (top-2) | "switch" (top-1)
    backend    "capacity" (C = ceil(capacity_factor · N / E), overflow dropped) | "dropless"
    impl       capacity backend only: "gather" (index arithmetic) | "einsum" (dense one-hot reference)

    metrics: every auxiliary loss (already scaled by its coefficient), ``aux_loss`` (their
    sum, to add to the training loss), ``load`` [E] (assignments per expert before capacity),
    ``dropped_fraction``, ``capacity``.
    """
    num_experts: int
    mlp_dim: int
    router: str = "switch"
    backend: str = "capacity"
    impl: str = "gather"
    k: int = 2
    capacity_factor: float = 1.25
    activation: Callable = jax.nn.gelu
    shazeer_w_importance: float = 0.1
    shazeer_w_load: float = 0.1
    gshard_aux_weight: float = 1.0
    switch_alpha: float = 1e-2
    switch_z_weight: float = 1e-3
    init_std: float = 0.02
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool = True) -> tuple[jax.Array, dict]:
        E, F = self.num_experts, self.mlp_dim
        lead, D = x.shape[:-1], x.shape[-1]
        xt = x.reshape(-1, D)                                               # [N, D]
        N = xt.shape[0]
        logits, noise = Router(E, noisy=self.router == "shazeer", init_std=self.init_std,
                               param_dtype=self.param_dtype, name="router")(xt)
        self.sow("intermediates", "router_logits", logits)
        rng = self.make_rng("router") if (not deterministic and self.has_rng("router")) else None
        cap = routers.capacity(N, E, self.capacity_factor) if self.backend == "capacity" else None
        if self.router == "shazeer":
            eps = None if rng is None else jax.random.normal(rng, logits.shape, jnp.float32)
            r = routers.shazeer_route(logits, noise, self.k, noise=eps, capacity=cap,
                                      w_importance=self.shazeer_w_importance, w_load=self.shazeer_w_load)
        elif self.router == "gshard":
            r = routers.gshard_route(logits, rng=rng, capacity=cap, aux_weight=self.gshard_aux_weight)
        elif self.router == "switch":
            r = routers.switch_route(logits, capacity=cap, alpha=self.switch_alpha, z_weight=self.switch_z_weight)
        else:
            raise ValueError(f"unknown router {self.router!r}; expected one of {routers.ROUTERS}")
        init = nn.initializers.normal(self.init_std)
        w_in = param(self, "w_in", init, (E, D, F), self.param_dtype, ("expert", "embed", "mlp"))
        w_out = param(self, "w_out", init, (E, F, D), self.param_dtype, ("expert", "mlp", "embed"))
        y = moe_ffn(xt.astype(self.dtype), r, w_in.astype(self.dtype), w_out.astype(self.dtype),
                    self.activation, self.backend, self.impl)
        metrics = dict(r.aux)
        metrics["aux_loss"] = sum(r.aux.values())
        metrics.update(load=r.load, dropped_fraction=r.dropped_fraction, capacity=r.capacity)
        return y.astype(self.dtype).reshape(*lead, D), metrics
