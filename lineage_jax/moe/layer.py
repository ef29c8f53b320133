"""A mixture-of-experts feed-forward layer (Shazeer et al. 2017; GShard; Switch), one device.

    y = Σ_j w[n, j] · FFN_{e[n, j]}(x[n]),   FFN_e(x) = act(x · W_in[e]) · W_out[e]

Parameters (logical axes on every one):
    router/kernel        [D, E]     ("embed", "route")      router logits x·W_g, float32 math
    router/noise_kernel  [D, E]     ("embed", "route")      Shazeer only: x·W_noise
    w_in                 [E, D, F]  ("expert", "embed", "mlp")
    w_out                [E, F, D]  ("expert", "mlp", "embed")

The router always runs in float32 whatever ``dtype`` is (Switch §2.4, "selective precision");
the experts run in ``dtype``. Randomness (Shazeer's gate noise, GShard's random second
expert) is drawn from the ``"router"`` RNG stream when ``deterministic=False`` and that
stream is supplied; otherwise routing is deterministic.

``route`` (the router's expert axis) is a name apart from ``expert``: every device routes its
own tokens over all E experts, so the router is replicated while the experts are sharded.

Groups (``grouped=True``, GShard §2.2): x is [G, S, D] and each of the G groups (in the GPT,
each sequence) is routed on its own: its capacity is C = ceil(capacity_factor · S / E) and
the auxiliary losses are per group, averaged over groups. Nothing then depends on how the
batch is split over devices, so expert parallelism computes exactly the one-device function.
The capacity backend keeps the buffers [G, E, C, D] and passes them through the hooks
``expert_in`` / ``expert_out`` around the expert FFN: the seams where expert parallelism
moves them to their experts' devices and back (an all-to-all each way).
"""
from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from lineage_jax.nn import hooks, param
from lineage_jax.moe import routers
from lineage_jax.moe.dispatch import grouped_capacity_ffn, moe_ffn


class Router(nn.Module):
    """Router logits in float32: x·W_g (and x·W_noise when ``noisy``), W: [D, E] ("embed", "route")."""
    num_experts: int
    noisy: bool = False
    init_std: float = 0.02
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array | None]:
        D, E = x.shape[-1], self.num_experts
        xf = x.astype(jnp.float32)
        w = param(self, "kernel", nn.initializers.normal(self.init_std), (D, E), self.param_dtype, ("embed", "route"))
        logits = xf @ w.astype(jnp.float32)
        noise = None
        if self.noisy:  # Shazeer et al. initialise W_noise to zero: noise std softplus(0) at start
            wn = param(self, "noise_kernel", nn.initializers.zeros, (D, E), self.param_dtype, ("embed", "route"))
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

    grouped: bool = False

    def _route(self, logits, noise, rng, cap):
        if self.router == "shazeer":
            eps = None if rng is None else jax.random.normal(rng, logits.shape, jnp.float32)
            return routers.shazeer_route(logits, noise, self.k, noise=eps, capacity=cap,
                                         w_importance=self.shazeer_w_importance, w_load=self.shazeer_w_load)
        if self.router == "gshard":
            return routers.gshard_route(logits, rng=rng, capacity=cap, aux_weight=self.gshard_aux_weight)
        if self.router == "switch":
            return routers.switch_route(logits, capacity=cap, alpha=self.switch_alpha, z_weight=self.switch_z_weight)
        raise ValueError(f"unknown router {self.router!r}; expected one of {routers.ROUTERS}")

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool = True) -> tuple[jax.Array, dict]:
        E, F = self.num_experts, self.mlp_dim
        D = x.shape[-1]
        G, S = (x.shape[0], x.shape[1]) if self.grouped else (1, x.size // D)
        if self.grouped and x.ndim != 3:
            raise ValueError(f"grouped MoE expects x [groups, tokens, width], got shape {x.shape}")
        xg = x.reshape(G, S, D)
        logits, noise = Router(E, noisy=self.router == "shazeer", init_std=self.init_std,
                               param_dtype=self.param_dtype, name="router")(xg)        # [G, S, E]
        self.sow("intermediates", "router_logits", logits if self.grouped else logits[0])
        rng = self.make_rng("router") if (not deterministic and self.has_rng("router")) else None
        cap = routers.capacity(S, E, self.capacity_factor) if self.backend == "capacity" else None
        keys = jax.random.split(rng, G) if rng is not None else None
        route = lambda l, n, key: self._route(l, n, key, cap)._replace(capacity=None)
        with jax.named_scope(f"route_{self.router}"):
            r = jax.vmap(route, in_axes=(0, None if noise is None else 0, None if keys is None else 0))(logits, noise, keys)
        r = r._replace(capacity=cap if cap is not None else S * r.expert_index.shape[-1])

        init = nn.initializers.normal(self.init_std)
        w_in = param(self, "w_in", init, (E, D, F), self.param_dtype, ("expert", "embed", "mlp"))
        w_out = param(self, "w_out", init, (E, F, D), self.param_dtype, ("expert", "mlp", "embed"))
        w_in, w_out, xc = w_in.astype(self.dtype), w_out.astype(self.dtype), xg.astype(self.dtype)
        with jax.named_scope(f"experts_{self.backend}"):   # dispatch, the E FFNs, combine
            if self.backend == "capacity" and self.impl == "gather":
                h = hooks()   # expert parallel: all-to-all to the experts and back; tensor parallel: f and g
                y = grouped_capacity_ffn(
                    xc, r, w_in, w_out, self.activation,
                    to_experts=lambda b: h.dense_in(h.expert_in(b), ("embed", "mlp"), 1),
                    from_experts=lambda b: h.expert_out(h.dense_out(b, ("mlp", "embed"), 1)))
            else:
                flat = lambda a: a.reshape(G * S, *a.shape[2:])
                rf = r._replace(expert_index=flat(r.expert_index), combine_weight=flat(r.combine_weight),
                                position=flat(r.position), selected=flat(r.selected), keep=flat(r.keep))
                if G > 1 and self.backend == "capacity":   # the reference impls see one group: offset its positions
                    raise ValueError("grouped MoE with backend=capacity needs impl='gather'")
                y = moe_ffn(flat(xc), rf, w_in, w_out, self.activation, self.backend, self.impl)
        aux = {name: jnp.mean(v) for name, v in r.aux.items()}
        metrics = dict(aux)
        metrics["aux_loss"] = sum(aux.values())
        n_sel = jnp.sum(r.selected.astype(jnp.float32))
        metrics.update(load=jnp.sum(r.load, axis=0),
                       dropped_fraction=(n_sel - jnp.sum(r.keep.astype(jnp.float32))) / jnp.maximum(n_sel, 1.0),
                       capacity=r.capacity)
        return y.astype(self.dtype).reshape(x.shape), metrics
