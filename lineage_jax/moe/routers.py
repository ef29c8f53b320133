"""Routers of the mixture-of-experts lineage: which experts see a token, with what weight.

Dimension letters: N tokens (B·T flattened), D width, E experts, k experts per token,
C capacity (slots per expert).

Every router here is a pure function of the router logits (computed in float32, see
``router_logits``) returning a common ``Routing``. Each token n has k *slots* j; slot (n, j)
asks expert ``expert_index[n, j]`` with weight ``combine_weight[n, j]``.

Capacity and priority (shared by all routers, GShard Algorithm 1). Expert e has C slots.
Assignments are ranked slot-major: every token's first choice in token order, then every
token's second choice, and so on; the position of (n, j) inside its expert is the number of
earlier-ranked assignments to the same expert (an exclusive cumsum of the one-hot mask).
An assignment with position ≥ C is dropped: it contributes nothing, so a token whose every
assignment is dropped gets zero MoE output and passes through the residual unchanged.

    capacity(N, E, factor) = max(1, ceil(factor · N / E))

(rounded up so that factor = 1 with perfectly balanced routing drops nothing).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.special import ndtr


class Routing(NamedTuple):
    """The common result of every router (all float arrays float32).

    expert_index    [N, k] int32  expert asked by slot (n, j)
    combine_weight  [N, k]        gate weight of slot (n, j); 0 where not kept
    position        [N, k] int32  position of (n, j) inside its expert's buffer (slot-major priority)
    selected        [N, k] bool   slot chosen by the router (before capacity)
    keep            [N, k] bool   selected and position < capacity
    capacity        int           C, static (N·k when no capacity: nothing dropped)
    aux             dict          auxiliary losses (already scaled by their coefficients)
    load            [E]           number of selected assignments per expert (before capacity)
    dropped_fraction  []          dropped assignments / selected assignments
    """
    expert_index: jax.Array
    combine_weight: jax.Array
    position: jax.Array
    selected: jax.Array
    keep: jax.Array
    capacity: int
    aux: dict
    load: jax.Array
    dropped_fraction: jax.Array


def capacity(num_tokens: int, num_experts: int, capacity_factor: float) -> int:
    """C = max(1, ceil(capacity_factor · N / E)), a static Python int."""
    return max(1, math.ceil(capacity_factor * num_tokens / num_experts))


def positions_in_expert(expert_index: jax.Array, selected: jax.Array, num_experts: int) -> jax.Array:
    """Position of each selected slot inside its expert, slot-major priority (GShard Alg. 1).

    P[n, j] = #{(n', j') before (n, j) in slot-major order : e[n', j'] = e[n, j], selected}.
    Computed as an exclusive cumsum over the one-hot mask laid out [k, N, E].
    """
    N, k = expert_index.shape
    onehot = jax.nn.one_hot(expert_index.T, num_experts, dtype=jnp.int32) * selected.T[..., None]  # [k, N, E]
    flat = onehot.reshape(k * N, num_experts)
    pos = jnp.cumsum(flat, axis=0) - flat                                   # exclusive cumsum
    pos = jnp.sum(pos * flat, axis=-1).reshape(k, N).T                      # [N, k]
    return pos.astype(jnp.int32)


def finish(expert_index, gate, selected, num_experts: int, cap: int | None, aux: dict) -> Routing:
    """Apply capacity C (None: no capacity, nothing dropped) and collect load statistics."""
    N, k = expert_index.shape
    expert_index = expert_index.astype(jnp.int32)
    position = positions_in_expert(expert_index, selected, num_experts)
    C = N * k if cap is None else int(cap)
    keep = selected & (position < C)
    load = jnp.sum(jax.nn.one_hot(expert_index, num_experts, dtype=jnp.float32) * selected[..., None], axis=(0, 1))
    n_sel = jnp.sum(selected.astype(jnp.float32))
    dropped = (n_sel - jnp.sum(keep.astype(jnp.float32))) / jnp.maximum(n_sel, 1.0)
    weight = jnp.where(keep, gate, 0.0).astype(jnp.float32)
    return Routing(expert_index, weight, position, selected, keep, C, aux, load, dropped)


def cv_squared(v: jax.Array, eps: float = 1e-10) -> jax.Array:
    """Squared coefficient of variation, Var(v) / Mean(v)² (population variance)."""
    v = v.astype(jnp.float32)
    return jnp.var(v) / (jnp.mean(v) ** 2 + eps)


# --------------------------------------------------------------------------- Shazeer et al. 2017

def shazeer_route(clean_logits: jax.Array, noise_logits: jax.Array | None, k: int, *,
                  noise: jax.Array | None = None, capacity: int | None = None,
                  w_importance: float = 0.1, w_load: float = 0.1) -> Routing:
    """Noisy top-k gating (Shazeer et al. 2017, "Outrageously Large Neural Networks", §2.1, §4, App. A).

        H(x)_i = (x·W_g)_i + StandardNormal() · Softplus((x·W_noise)_i)          (eq. 4)
        G(x)   = Softmax(KeepTopK(H(x), k))     (others set to −∞ before softmax) (eq. 3, 5)

    Importance loss (§4):  Importance(X) = Σ_x G(x),   L_importance = w_importance · CV(Importance(X))².

    Load loss (App. A), a smooth estimator of the number of tokens per expert. With noise,
        P(x, i) = Φ( ((x·W_g)_i − kth_excluding(H(x), k, i)) / Softplus((x·W_noise)_i) ),
    where kth_excluding(v, k, i) is the k-th largest component of v excluding v_i and Φ the
    standard normal CDF; Load(X)_i = Σ_x P(x, i), L_load = w_load · CV(Load(X))².
    Without noise (``noise`` None or ``noise_logits`` None: evaluation) Load is the plain count
    of tokens with nonzero gate (not differentiable, reported only).

    clean_logits, noise_logits: [N, E] float32 (x·W_g, x·W_noise); ``noise`` [N, E]: the
    StandardNormal() sample (drawn by the caller, so the router stays a pure function).
    """
    clean = clean_logits.astype(jnp.float32)
    E = clean.shape[-1]
    noisy = noise is not None and noise_logits is not None
    if noisy:
        std = jax.nn.softplus(noise_logits.astype(jnp.float32))
        H = clean + noise.astype(jnp.float32) * std
    else:
        H = clean
    top_v, top_i = jax.lax.top_k(H, min(k + 1, E))                          # [N, k+1]
    kept_v, kept_i = top_v[:, :k], top_i[:, :k]
    gate = jax.nn.softmax(kept_v, axis=-1)                                  # softmax over the kept k
    G = jnp.sum(jax.nn.one_hot(kept_i, E, dtype=jnp.float32) * gate[..., None], axis=1)  # [N, E]
    importance = jnp.sum(G, axis=0)
    if noisy and k < E:
        kth = top_v[:, k - 1:k]                 # k-th largest of H: threshold for those outside the top k
        kp1 = top_v[:, k:k + 1]                 # (k+1)-th largest: threshold for those inside the top k
        thr = jnp.where(H >= kth, kp1, kth)     # kth_excluding(H, k, i)
        P = ndtr((clean - thr) / std)
        load_est = jnp.sum(P, axis=0)
    else:
        load_est = jnp.sum((G > 0).astype(jnp.float32), axis=0)
    aux = {"importance_loss": w_importance * cv_squared(importance),
           "load_loss": w_load * cv_squared(load_est)}
    selected = jnp.ones(kept_i.shape, bool)
    return finish(kept_i, gate, selected, E, capacity, aux)


# --------------------------------------------------------------------------- GShard (Lepikhin et al. 2021)

def gshard_route(logits: jax.Array, *, rng: jax.Array | None = None, capacity: int | None = None,
                 aux_weight: float = 1.0) -> Routing:
    """Top-2 gating of GShard (Lepikhin et al. 2021, §2.2 and Algorithm 1).

        g      = softmax(x·W_g)                                      [N, E]
        e1     = argmax g,  e2 = argmax g with e1 masked out
        g1, g2 = g[e1] / (g[e1] + g[e2]),  g[e2] / (g[e1] + g[e2])   (normalised pair)

    Random routing (Algorithm 1: "if 2·g2 < U(0, 1) the second expert is ignored"): the
    second expert is kept with probability min(1, 2·g2) with the *normalised* g2. Since the
    normalised g2 ≤ ½ this is the same as "proportional to its weight". Without ``rng``
    (evaluation) the second expert is always kept.

    Auxiliary loss (Algorithm 1): with f_e the fraction of tokens whose *first* choice is e
    and m_e = mean_n g[n, e],
        ℓ_aux = aux_weight · E² · mean_e(f_e · m_e)      (= aux_weight · E · Σ_e f_e m_e).
    Capacity: first choices are placed before any second choice (slot-major priority);
    GShard's expert capacity 2N/E is ``capacity_factor = 2``.
    """
    logits = logits.astype(jnp.float32)
    N, E = logits.shape
    g = jax.nn.softmax(logits, axis=-1)
    top_v, top_i = jax.lax.top_k(g, 2)
    denom = jnp.maximum(top_v[:, 0] + top_v[:, 1], 1e-9)
    gate = top_v / denom[:, None]                                           # [N, 2] normalised
    keep2 = jnp.ones((N,), bool)
    if rng is not None:
        keep2 = jax.random.uniform(rng, (N,)) < 2.0 * gate[:, 1]
    selected = jnp.stack([jnp.ones((N,), bool), keep2], axis=1)
    f = jnp.mean(jax.nn.one_hot(top_i[:, 0], E, dtype=jnp.float32), axis=0)
    m = jnp.mean(g, axis=0)
    aux = {"balance_loss": aux_weight * E * E * jnp.mean(f * m)}
    return finish(top_i, gate, selected, E, capacity, aux)


# --------------------------------------------------------------------------- Switch (Fedus et al. 2022)

def switch_route(logits: jax.Array, *, capacity: int | None = None, alpha: float = 1e-2,
                 z_weight: float = 1e-3) -> Routing:
    """Top-1 routing of the Switch Transformer (Fedus et al. 2022, §2.1–2.2) with the router
    z-loss of ST-MoE (Zoph et al. 2022, §3).

        p   = softmax(x·W_r)  (float32, "selective precision"),   e = argmax p,   gate = p[e]
        ℓ_balance = α · E · Σ_e f_e · P_e,   f_e = (1/N) Σ_n 1{argmax p_n = e},  P_e = (1/N) Σ_n p_n[e]
        ℓ_z       = z_weight · (1/N) Σ_n (log Σ_e exp(logits_n[e]))²

    α = 1e-2 and z_weight = 1e-3 as in the papers. The gate is the unnormalised p[e] (top-1).
    """
    logits = logits.astype(jnp.float32)
    N, E = logits.shape
    p = jax.nn.softmax(logits, axis=-1)
    idx = jnp.argmax(p, axis=-1)
    gate = jnp.take_along_axis(p, idx[:, None], axis=-1)                   # [N, 1]
    f = jnp.mean(jax.nn.one_hot(idx, E, dtype=jnp.float32), axis=0)
    P = jnp.mean(p, axis=0)
    z = jax.nn.logsumexp(logits, axis=-1)
    aux = {"balance_loss": alpha * E * jnp.sum(f * P), "z_loss": z_weight * jnp.mean(z ** 2)}
    return finish(idx[:, None], gate, jnp.ones((N, 1), bool), E, capacity, aux)


ROUTERS = ("shazeer", "gshard", "switch")
