"""Getting tokens to their experts and back: two backends behind one interface.

    moe_ffn(x, routing, w_in, w_out, activation, backend=...) -> y
    x [N, D], w_in [E, D, F], w_out [E, F, D]  ->  y[n] = Σ_j w[n, j] · FFN_{e[n, j]}(x[n])

where FFN_e(x) = act(x · w_in[e]) · w_out[e] and w, e come from a ``Routing`` (routers.py);
slots that were not kept (capacity, random routing) contribute nothing.

(a) ``capacity`` (GShard, Lepikhin et al. 2021). Every expert gets a fixed buffer of C slots;
    slot (n, j) goes to row e·C + position. The teaching form is the dense dispatch tensor

        dispatch[n, e, c] = 1{e[n, j] = e, pos[n, j] = c, kept}   [N, E, C]
        combine[n, e, c]  = w[n, j] · dispatch[n, e, c]
        buf = einsum("nec,nd->ecd", dispatch, x),   y = einsum("nec,ecd->nd", combine, FFN(buf))

    (``impl="einsum"``). Its one-hot contractions cost O(N·E·C·D); ``impl="gather"`` (default)
    computes the same thing with index arithmetic: the inverse map row -> token fills the
    buffer by a gather, and the combine is a gather of each slot's row (PERF_NOTES: one-hot
    einsum 6.1× a dense FFN, gather/scatter 1.25×). Shapes are static, so it jits and shards.

(b) ``dropless`` (MegaBlocks-style, Gale et al. 2023): no capacity. The N·k assignments are
    sorted by expert, each expert's contiguous group is multiplied by its own weights with a
    grouped matmul ``jax.lax.ragged_dot(xs, w, group_sizes)`` and the results are scattered
    back, weighted. Unselected slots are sorted past the last group and never computed.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from lineage_jax.moe.routers import Routing

BACKENDS = ("capacity", "dropless")


def _slot_rows(r: Routing, E: int) -> jax.Array:
    """Row of each slot in the flattened [E·C] buffer; dropped slots point at the spare row E·C."""
    return jnp.where(r.keep, r.expert_index * r.capacity + r.position, E * r.capacity)


def dispatch_tensors(r: Routing, E: int) -> tuple[jax.Array, jax.Array]:
    """The dense GShard dispatch [N, E, C] (0/1) and combine [N, E, C] (weights) tensors."""
    C = r.capacity
    oh_e = jax.nn.one_hot(r.expert_index, E, dtype=jnp.float32)            # [N, k, E]
    oh_c = jax.nn.one_hot(jnp.where(r.keep, r.position, C), C, dtype=jnp.float32)  # [N, k, C]; dropped -> 0
    dispatch = jnp.einsum("nke,nkc->nec", oh_e, oh_c)
    combine = jnp.einsum("nke,nkc,nk->nec", oh_e, oh_c, r.combine_weight)
    return dispatch, combine


def _ffn(buf, w_in, w_out, act):
    h = act(jnp.einsum("ecd,edf->ecf", buf, w_in))
    return jnp.einsum("ecf,efd->ecd", h, w_out)


def capacity_ffn(x, r: Routing, w_in, w_out, act: Callable, impl: str = "gather") -> jax.Array:
    """Backend (a): fixed per-expert buffers [E, C, D]; tokens beyond capacity get zero output."""
    N, D = x.shape
    E, C = w_in.shape[0], r.capacity
    w = r.combine_weight.astype(x.dtype)
    if impl == "einsum":
        dispatch, combine = dispatch_tensors(r, E)
        buf = jnp.einsum("nec,nd->ecd", dispatch.astype(x.dtype), x)
        return jnp.einsum("nec,ecd->nd", combine.astype(x.dtype), _ffn(buf, w_in, w_out, act))
    rows = _slot_rows(r, E)                                                # [N, k]
    k = rows.shape[1]
    token_of_row = jnp.full((E * C + 1,), N, jnp.int32).at[rows.reshape(-1)].set(
        jnp.repeat(jnp.arange(N, dtype=jnp.int32), k))[:E * C]             # empty rows -> zero row N
    x_pad = jnp.concatenate([x, jnp.zeros((1, D), x.dtype)])
    buf = x_pad[token_of_row].reshape(E, C, D)
    y = _ffn(buf, w_in, w_out, act).reshape(E * C, D)
    y_pad = jnp.concatenate([y, jnp.zeros((1, D), y.dtype)])
    return jnp.einsum("nk,nkd->nd", w, y_pad[rows])


def grouped_capacity_ffn(x, r: Routing, w_in, w_out, act: Callable, *, to_experts=lambda b: b,
                         from_experts=lambda b: b) -> jax.Array:
    """Backend (a) for G independently routed groups: x [G, S, D], ``r`` with a leading G axis.

    Each group fills its own buffers (gather, as ``capacity_ffn``), giving [G, E, C, D];
    ``to_experts`` / ``from_experts`` wrap the expert FFN: identities on one device, the two
    all-to-alls of expert parallelism in the explicit form (GSPMD reshards at the same points).
    """
    G, S, D = x.shape
    E, C = r.load.shape[-1], r.capacity      # all experts (w_in may hold only this device's E/n)
    rows = jnp.where(r.keep, r.expert_index * C + r.position, E * C)       # [G, S, k]; dropped -> spare row
    k = rows.shape[-1]
    tokens = jnp.repeat(jnp.arange(S, dtype=jnp.int32), k)

    def fill(xg, rows_g):
        token_of_row = jnp.full((E * C + 1,), S, jnp.int32).at[rows_g.reshape(-1)].set(tokens)[:E * C]
        return jnp.concatenate([xg, jnp.zeros((1, D), xg.dtype)])[token_of_row].reshape(E, C, D)

    buf = to_experts(jax.vmap(fill)(x, rows))                              # [G', E', C, D]
    h = act(jnp.einsum("gecd,edf->gecf", buf, w_in))
    y = from_experts(jnp.einsum("gecf,efd->gecd", h, w_out)).reshape(G, E * C, D)
    y_pad = jnp.concatenate([y, jnp.zeros((G, 1, D), y.dtype)], axis=1)
    picked = jax.vmap(lambda yg, rg: yg[rg])(y_pad, rows)                  # [G, S, k, D]
    return jnp.einsum("gsk,gskd->gsd", r.combine_weight.astype(x.dtype), picked)


def dropless_ffn(x, r: Routing, w_in, w_out, act: Callable) -> jax.Array:
    """Backend (b): sort assignments by expert, grouped matmul with ``jax.lax.ragged_dot``."""
    N, D = x.shape
    E = w_in.shape[0]
    k = r.expert_index.shape[1]
    e = r.expert_index.reshape(-1)
    live = r.keep.reshape(-1)
    order = jnp.argsort(jnp.where(live, e, E), stable=True)                # live slots grouped by expert
    token = (jnp.arange(N * k, dtype=jnp.int32) // k)[order]
    group_sizes = jnp.zeros((E,), jnp.int32).at[e].add(live.astype(jnp.int32))
    xs = x[token]                                                          # [N·k, D]
    h = act(jax.lax.ragged_dot(xs, w_in, group_sizes))
    ys = jax.lax.ragged_dot(h, w_out, group_sizes)                         # rows past Σ sizes: 0
    w = r.combine_weight.reshape(-1)[order].astype(ys.dtype)
    ys = jnp.where(live[order][:, None], ys, 0) * w[:, None]
    return jnp.zeros((N, D), ys.dtype).at[token].add(ys)


def moe_ffn(x, r: Routing, w_in, w_out, act: Callable = jax.nn.gelu, backend: str = "capacity",
            impl: str = "gather") -> jax.Array:
    """y[n] = Σ_j w[n, j] · act(x[n] · w_in[e]) · w_out[e], e = e[n, j], over kept slots."""
    if backend == "capacity":
        return capacity_ffn(x, r, w_in, w_out, act, impl)
    if backend == "dropless":
        return dropless_ffn(x, r, w_in, w_out, act)
    raise ValueError(f"unknown MoE backend {backend!r}; expected one of {BACKENDS}")
