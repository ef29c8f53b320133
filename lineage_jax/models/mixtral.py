"""Mixtral's sparse mixture of SwiGLU experts (Jiang et al. 2024, "Mixtral of Experts", §2.1).

Each Llama block's SwiGLU is replaced by E SwiGLU experts and a linear router; a token's output
is the weighted sum of its top-k experts (k = 2 of 8 in Mixtral 8x7B):

    y = Σ_{i ∈ TopK(ℓ)} softmax_TopK(ℓ)_i · SwiGLU_i(x),   ℓ = x · W_g                 (§2.1, eq. 1–2)

Hugging Face computes the weights as a softmax over *all* E logits, keeps the top k and
renormalises them to sum to one; that equals the paper's softmax over the top-k logits alone
(softmax is shift- and scale-free within the kept set). ``mixtral_route`` does it the Hugging
Face way, so the chosen experts and weights match transformers bit for bit in float32.

Parameters (logical axes on every one):
    router/kernel   [D, E]     embed, expert    (float32 math, as ``lineage_jax.moe.layer.Router``)
    w_gate, w_up    [E, D, F]  expert, embed, mlp
    w_down          [E, F, D]  expert, mlp, embed

Dispatch goes through ``lineage_jax.moe.dispatch.moe_ffn`` with gate and up concatenated along F
(one grouped matmul in, one out). ``cfg.moe_backend``: ``dropless`` (Mixtral's own behaviour:
every token reaches its k experts) or ``capacity`` (C = ceil(capacity_factor · N / E) slots per
expert, the project's convention, so top-2 with balanced routing needs capacity_factor ≥ 2).
"""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from lineage_jax.config import ModelConfig, ffn_dim
from lineage_jax.nn import constrain, param
from lineage_jax.moe import routers
from lineage_jax.moe.dispatch import moe_ffn
from lineage_jax.moe.layer import Router

ROUTER_AUX_COEF = 0.001   # Hugging Face MixtralConfig.router_aux_loss_coef default


def load_balancing_loss(probs: jax.Array, expert_index: jax.Array) -> jax.Array:
    """E · Σ_e Σ_j f_{j,e} · P_e (the Switch balance loss, Fedus et al. 2022 eq. 4, over k choices).

    f_{j,e} = fraction of tokens whose j-th choice is e, P_e = mean router probability of e:
    Hugging Face's ``load_balancing_loss_func`` for one layer's router (no attention mask).
    """
    E = probs.shape[-1]
    f = jnp.mean(jax.nn.one_hot(expert_index, E, dtype=jnp.float32), axis=0)    # [k, E]
    return E * jnp.sum(f * jnp.mean(probs, axis=0)[None, :])


def mixtral_route(logits: jax.Array, k: int, *, capacity: int | None = None,
                  aux_weight: float = ROUTER_AUX_COEF) -> routers.Routing:
    """Top-k of softmax(logits), renormalised over the k kept (Mixtral §2.1; HF ``MixtralTopKRouter``).

    logits [N, E] -> ``Routing`` with expert_index [N, k] (best first), combine_weight [N, k]
    summing to 1 per token, and aux ``{"balance_loss": aux_weight · load_balancing_loss}``.
    """
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    top_v, top_i = jax.lax.top_k(probs, k)
    gate = top_v / jnp.sum(top_v, axis=-1, keepdims=True)
    aux = {"balance_loss": aux_weight * load_balancing_loss(probs, top_i)}
    return routers.finish(top_i, gate, jnp.ones(top_i.shape, bool), probs.shape[-1], capacity, aux)


class SparseMoE(nn.Module):
    """x [B, T, D] -> [B, T, D]: Mixtral's MoE of SwiGLU experts.

    Sows into the ``moe`` collection ``aux_loss`` (the balance loss, already scaled by
    ``cfg.moe_aux_weight`` where ModelConfig has it, else ``ROUTER_AUX_COEF``; to add to a training
    loss), ``load`` [E] and ``dropped_fraction``.
    """
    cfg: ModelConfig
    deterministic: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = self.cfg
        E, F, D = c.experts, ffn_dim(c), x.shape[-1]
        dtype, pdtype = jnp.dtype(c.dtype), jnp.dtype(c.param_dtype)
        xt = x.reshape(-1, D)                                                  # [N, D]
        logits, _ = Router(E, init_std=c.init_std, param_dtype=pdtype, name="router")(xt)
        cap = routers.capacity(xt.shape[0], E, c.capacity_factor) if c.moe_backend == "capacity" else None
        r = mixtral_route(logits, c.moe_k, capacity=cap, aux_weight=getattr(c, "moe_aux_weight", ROUTER_AUX_COEF))
        stats = {"aux_loss": sum(r.aux.values()), "load": r.load, "dropped_fraction": r.dropped_fraction}
        for name, value in stats.items():
            self.sow("moe", name, value)    # the ``moe`` collection, as the GPT's MoE blocks sow it
        init = nn.initializers.normal(c.init_std)
        w_gate = param(self, "w_gate", init, (E, D, F), pdtype, ("expert", "embed", "mlp"))
        w_up = param(self, "w_up", init, (E, D, F), pdtype, ("expert", "embed", "mlp"))
        w_down = param(self, "w_down", nn.initializers.normal(c.init_std / math.sqrt(2 * c.layers)), (E, F, D),
                       pdtype, ("expert", "mlp", "embed"))
        w_in = jnp.concatenate([w_gate, w_up], axis=-1).astype(dtype)           # [E, D, 2F]
        Fl = w_gate.shape[-1]
        swiglu = lambda h: jax.nn.silu(h[..., :Fl]) * h[..., Fl:]
        y = moe_ffn(xt.astype(dtype), r, w_in, w_down.astype(dtype), swiglu, c.moe_backend)
        y = nn.Dropout(c.dropout, deterministic=self.deterministic)(y.astype(dtype).reshape(x.shape))
        return constrain(y, ("batch", "seq", "embed"))
