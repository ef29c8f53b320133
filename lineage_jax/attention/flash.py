"""Blockwise attention: FlashAttention's algorithm (Dao et al. 2022; Dao 2023) written in JAX.

softmax(q kᵀ·scale + bias, masked) v is computed one [block_q × block_k] tile of scores at a time,
so the T × S matrix never exists and memory grows linearly with length:

forward (Dao et al. 2022, Alg. 1, the "online softmax" of Milakov & Gimelshein 2018): for each
query block, run over the key blocks keeping a running row max m, row sum ℓ and unnormalised
output a:

    m' = max(m, rowmax(S_ij))      P = exp(S_ij − m')      ℓ' = e^(m−m')·ℓ + rowsum(P)
    a' = e^(m−m')·a + P·V_j        at the end  O = a / ℓ,  L = m + log ℓ  (the logsumexp)

backward (Dao 2023, Alg. 2): only O and L are saved. For each key block, run over the query
blocks recomputing P = exp(S_ij − L) and, with D = rowsum(dO ∘ O),

    dV_j += Pᵀ dO_i     dP = dO_i V_jᵀ     dS = P ∘ (dP − D_i)     dQ_i += dS K_j     dK_j += dSᵀ Q_i

(dQ lives in one [T, …] float32 buffer updated in place, where FlashAttention-2 uses atomic adds.)

Causal attention skips the key blocks above the diagonal (forward) and the query blocks
before it (backward): loops with trip counts that depend on the block index.

Shapes follow ``lineage_jax.nn.attention.causal_attention``: q [B, T, H, K]; k, v [B, S, Hkv, K]
with H % Hkv == 0 (grouped-query attention: query head h reads key/value head h // (H/Hkv), as
``lineage_jax.attention.mha.attention``). Causal is aligned bottom-right (query i sits at
position S − T + i, as ``mha.causal_mask``). Lengths that blocks do not divide are padded.
Scores and the softmax statistics are float32.
"""
from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

_MASKED = float(jnp.finfo(jnp.float32).min)   # a finite "−∞": a row with no visible key stays finite


class _Static(NamedTuple):
    causal: bool
    scale: float
    block_q: int
    block_k: int
    T: int          # unpadded lengths
    S: int


def flash_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, causal: bool = False,
                    segment_ids: jax.Array | None = None, kv_segment_ids: jax.Array | None = None,
                    bias: jax.Array | None = None, scale: float | None = None,
                    block_q: int = 128, block_k: int = 128) -> jax.Array:
    """Blockwise softmax(q kᵀ·scale + bias, masked) v with a recomputing backward pass.

    q: [B, T, H, K]; k, v: [B, S, Hkv, K] (H % Hkv == 0) -> [B, T, H, K] in q's dtype.
    causal: key j visible to query i iff j ≤ S − T + i.
    segment_ids [B, T] (and kv_segment_ids [B, S], default segment_ids): packed documents; a
    query sees only keys with its id. bias: added to the scores, broadcastable to [B, H, T, S]
    (ALiBi's / T5's [H, T, S]); it is differentiable, and read block by block (its size-1 axes
    stay size 1, so a [B, 1, 1, S] padding bias costs no T × S memory). scale: default 1/√K.
    A query with no visible key gets a finite, meaningless row: mask it downstream.
    """
    B, T, H, K = q.shape
    S, Hkv = k.shape[1], k.shape[2]
    if k.ndim != 4 or v.shape[:3] != k.shape[:3] or k.shape[0] != B or k.shape[3] != K:
        raise ValueError(f"flash_attention: q {q.shape}, k {k.shape}, v {v.shape} do not fit "
                         "q [B, T, H, K], k/v [B, S, Hkv, K]")
    if H % Hkv:
        raise ValueError(f"flash_attention: {H} query heads do not divide into {Hkv} key/value heads")
    if block_q < 1 or block_k < 1:
        raise ValueError(f"flash_attention: block sizes must be positive, got {block_q}, {block_k}")
    if kv_segment_ids is not None and segment_ids is None:
        raise ValueError("flash_attention: kv_segment_ids given without segment_ids")
    if segment_ids is not None:
        kv_segment_ids = segment_ids if kv_segment_ids is None else kv_segment_ids
        if segment_ids.shape != (B, T) or kv_segment_ids.shape != (B, S):
            raise ValueError(f"flash_attention: segment ids {segment_ids.shape}, {kv_segment_ids.shape}; "
                             f"expected ({B}, {T}) and ({B}, {S})")
        segment_ids, kv_segment_ids = jnp.asarray(segment_ids, jnp.int32), jnp.asarray(kv_segment_ids, jnp.int32)
    if bias is not None:
        bias = jnp.asarray(bias)
        try:
            if bias.ndim > 4 or jnp.broadcast_shapes(bias.shape, (B, H, T, S)) != (B, H, T, S):
                raise ValueError
        except ValueError:
            raise ValueError(f"flash_attention: bias {bias.shape} does not broadcast to [B, H, T, S] = "
                             f"{(B, H, T, S)}") from None
    st = _Static(bool(causal), 1.0 / math.sqrt(K) if scale is None else float(scale),
                 min(block_q, T), min(block_k, S), T, S)
    return _flash(st, q, k, v, segment_ids, kv_segment_ids, bias)


# --------------------------------------------------------------------------- blocks

def _pad(x, axis, size):
    if x.shape[axis] in (1, size):
        return x
    pad = [(0, 0)] * x.ndim
    pad[axis] = (0, size - x.shape[axis])
    return jnp.pad(x, pad)


def _blocks(x, axis, n):
    """Split ``axis`` into n blocks and move the block index to the front: [n, …, size/n, …]."""
    shape = x.shape[:axis] + (n, x.shape[axis] // n) + x.shape[axis + 1:]
    return jnp.moveaxis(x.reshape(shape), axis, 0)


def _bias4(bias):
    """bias as float32 [Bb, Hb, Tb, Sb], each axis either 1 or full (B, H, T, S)."""
    return jnp.asarray(bias, jnp.float32).reshape((1,) * (4 - bias.ndim) + bias.shape)


class _Ctx(NamedTuple):
    """Everything a tile needs, padded and split into blocks."""
    q: jax.Array        # [nq, B, bq, Hkv, G, K], pre-scaled
    k: jax.Array        # [nk, B, bk, Hkv, K]
    v: jax.Array        # [nk, B, bk, Hkv, K]
    seg_q: jax.Array | None   # [nq, B, bq]
    seg_k: jax.Array | None   # [nk, B, bk]
    bias: jax.Array | None    # [Bb, Hb, Tb, Sb] padded (size-1 axes kept)


def _prepare(st: _Static, q, k, v, seg_q, seg_k, bias) -> tuple[_Ctx, int, int]:
    B, T, H, K = q.shape
    Hkv = k.shape[2]
    bq, bk = st.block_q, st.block_k
    nq, nk = -(-T // bq), -(-st.S // bk)
    Tp, Sp = nq * bq, nk * bk
    qs = (q * jnp.asarray(st.scale, q.dtype)).reshape(B, T, Hkv, H // Hkv, K)
    ctx = _Ctx(_blocks(_pad(qs, 1, Tp), 1, nq), _blocks(_pad(k, 1, Sp), 1, nk), _blocks(_pad(v, 1, Sp), 1, nk),
               None if seg_q is None else _blocks(_pad(seg_q, 1, Tp), 1, nq),
               None if seg_k is None else _blocks(_pad(seg_k, 1, Sp), 1, nk),
               None if bias is None else _pad(_pad(_bias4(bias), 2, Tp), 3, Sp))
    return ctx, nq, nk


def _bias_block(bias, i, j, bq, bk, Hkv):
    """The [Bb, Hkv', G', bq', bk'] tile of bias for query block i, key block j (size-1 axes kept)."""
    Bb, Hb, Tb, Sb = bias.shape
    tq, tk = (bq if Tb > 1 else 1), (bk if Sb > 1 else 1)
    tile = lax.dynamic_slice(bias, (0, 0, i * bq if Tb > 1 else 0, j * bk if Sb > 1 else 0), (Bb, Hb, tq, tk))
    return tile.reshape(Bb, Hkv, Hb // Hkv, tq, tk) if Hb > 1 else tile[:, :, None]


def _scores(st: _Static, ctx: _Ctx, qi, kj, i, j):
    """Masked float32 scores of query block i against key block j: [B, Hkv, G, bq, bk]."""
    bq, bk, Hkv = st.block_q, st.block_k, kj.shape[2]
    s = jnp.einsum("bqngk,bsnk->bngqs", qi, kj, preferred_element_type=jnp.float32)
    if ctx.bias is not None:
        s = s + _bias_block(ctx.bias, i, j, bq, bk, Hkv)
    kpos = j * bk + jnp.arange(bk)
    visible = (kpos < st.S)[None, :]                                       # padded keys
    if st.causal:
        qpos = st.S - st.T + i * bq + jnp.arange(bq)
        visible = visible & (kpos[None, :] <= qpos[:, None])
    visible = visible[None, None, None]
    if ctx.seg_q is not None:
        same = ctx.seg_q[i][:, :, None] == ctx.seg_k[j][:, None, :]        # [B, bq, bk]
        visible = visible & same[:, None, None]
    return jnp.where(visible, s, _MASKED)


def _key_blocks_needed(st: _Static, i, nk):
    """Causal: key blocks 0 … n−1 hold every key visible to query block i."""
    if not st.causal:
        return nk
    last_q = st.S - st.T + (i + 1) * st.block_q - 1
    return jnp.clip(last_q // st.block_k + 1, 0, nk)


def _first_query_block(st: _Static, j):
    """Causal: query blocks before this one see nothing of key block j."""
    if not st.causal:
        return 0
    return jnp.maximum(0, (j * st.block_k - (st.S - st.T)) // st.block_q)


# --------------------------------------------------------------------------- forward

def _forward(st: _Static, q, k, v, seg_q, seg_k, bias):
    """(O [B, T, H, K], L [nq, B, Hkv, G, bq] logsumexp) by the online softmax."""
    B, T, H, K = q.shape
    ctx, nq, nk = _prepare(st, q, k, v, seg_q, seg_k, bias)
    Hkv, G, bq = k.shape[2], H // k.shape[2], st.block_q

    def query_block(i):
        qi = ctx.q[i]

        def key_block(j, carry):
            m, l, acc = carry
            s = _scores(st, ctx, qi, ctx.k[j], i, j)
            m_new = jnp.maximum(m, s.max(-1))
            corr, p = jnp.exp(m - m_new), jnp.exp(s - m_new[..., None])
            pv = jnp.einsum("bngqs,bsnk->bngqk", p.astype(v.dtype), ctx.v[j], preferred_element_type=jnp.float32)
            return m_new, l * corr + p.sum(-1), acc * corr[..., None] + pv

        init = (jnp.full((B, Hkv, G, bq), -jnp.inf, jnp.float32), jnp.zeros((B, Hkv, G, bq), jnp.float32),
                jnp.zeros((B, Hkv, G, bq, K), jnp.float32))
        m, l, acc = lax.fori_loop(0, _key_blocks_needed(st, i, nk), key_block, init)
        l = jnp.where(l == 0, 1.0, l)           # only when no key block was visited at all
        o = acc / l[..., None]
        return jnp.einsum("bngqk->bqngk", o).astype(q.dtype), m + jnp.log(l)

    o, lse = lax.map(query_block, jnp.arange(nq))                        # [nq, B, bq, Hkv, G, K]
    o = jnp.moveaxis(o, 0, 1).reshape(B, nq * bq, H, K)[:, :T]
    return o, lse


# --------------------------------------------------------------------------- backward

def _backward(st: _Static, res, do):
    q, k, v, seg_q, seg_k, bias, o, lse = res
    B, T, H, K = q.shape
    Hkv, G = k.shape[2], H // k.shape[2]
    ctx, nq, nk = _prepare(st, q, k, v, seg_q, seg_k, bias)
    bq, bk = st.block_q, st.block_k
    dD = (do.astype(jnp.float32) * o.astype(jnp.float32)).sum(-1)          # D = rowsum(dO ∘ O) [B, T, H]
    dD = _blocks(_pad(dD.reshape(B, T, Hkv, G), 1, nq * bq), 1, nq)         # [nq, B, bq, Hkv, G]
    dD = jnp.einsum("ibqng->ibngq", dD)
    do_b = _blocks(_pad(do.reshape(B, T, Hkv, G, K), 1, nq * bq), 1, nq)    # [nq, B, bq, Hkv, G, K]
    dbias0 = None if ctx.bias is None else jnp.zeros(ctx.bias.shape, jnp.float32)

    def key_block(carry, j):
        dq, dbias = carry
        kj, vj = ctx.k[j], ctx.v[j]

        def query_block(i, inner):
            dk, dv, dq, dbias = inner
            qi, doi = ctx.q[i], do_b[i]
            s = _scores(st, ctx, qi, kj, i, j)
            p = jnp.exp(s - lse[i][..., None])                                    # [B, Hkv, G, bq, bk]
            dv = dv + jnp.einsum("bngqs,bqngk->bsnk", p.astype(do.dtype), doi, preferred_element_type=jnp.float32)
            dp = jnp.einsum("bqngk,bsnk->bngqs", doi, vj, preferred_element_type=jnp.float32)
            ds = p * (dp - dD[i][..., None])
            dq = dq.at[i].add(jnp.einsum("bngqs,bsnk->bqngk", ds.astype(kj.dtype), kj,
                                         preferred_element_type=jnp.float32))
            dk = dk + jnp.einsum("bngqs,bqngk->bsnk", ds.astype(qi.dtype), qi, preferred_element_type=jnp.float32)
            if dbias is not None:
                dbias = _add_bias_grad(dbias, ds, i, j, bq, bk)
            return dk, dv, dq, dbias

        zeros = jnp.zeros((B, bk, Hkv, K), jnp.float32)
        dk, dv, dq, dbias = lax.fori_loop(_first_query_block(st, j), nq, query_block, (zeros, zeros, dq, dbias))
        return (dq, dbias), (dk, dv)

    dq0 = jnp.zeros((nq, B, bq, Hkv, G, K), jnp.float32)
    (dq, dbias), (dk, dv) = lax.scan(key_block, (dq0, dbias0), jnp.arange(nk))
    dq = jnp.moveaxis(dq, 0, 1).reshape(B, nq * bq, H, K)[:, :T] * st.scale
    dk = jnp.moveaxis(dk, 0, 1).reshape(B, nk * bk, Hkv, K)[:, :st.S]
    dv = jnp.moveaxis(dv, 0, 1).reshape(B, nk * bk, Hkv, K)[:, :st.S]
    if dbias is not None:
        dbias = dbias[:, :, :T if dbias.shape[2] > 1 else 1, :st.S if dbias.shape[3] > 1 else 1]
        dbias = dbias.reshape(bias.shape).astype(bias.dtype)
    return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), dbias


def _add_bias_grad(dbias, ds, i, j, bq, bk):
    """Add dS (summed over the axes the bias broadcasts along) into dbias's tile (i, j)."""
    Bb, Hb, Tb, Sb = dbias.shape
    B, Hkv, G = ds.shape[:3]
    t = ds.reshape(B, Hkv * G, bq, bk)
    t = t.sum(axis=tuple(a for a, n in enumerate((Bb, Hb, Tb, Sb)) if n == 1), keepdims=True)
    start = (0, 0, i * bq if Tb > 1 else 0, j * bk if Sb > 1 else 0)
    return lax.dynamic_update_slice(dbias, lax.dynamic_slice(dbias, start, t.shape) + t, start)


# --------------------------------------------------------------------------- custom VJP

@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _flash(st, q, k, v, seg_q, seg_k, bias):
    return _forward(st, q, k, v, seg_q, seg_k, bias)[0]


def _flash_fwd(st, q, k, v, seg_q, seg_k, bias):
    o, lse = _forward(st, q, k, v, seg_q, seg_k, bias)
    return o, (q, k, v, seg_q, seg_k, bias, o, lse)      # only O and L beyond the inputs


def _flash_bwd(st, res, do):
    dq, dk, dv, dbias = _backward(st, res, do)
    return dq, dk, dv, None, None, dbias


_flash.defvjp(_flash_fwd, _flash_bwd)


def logsumexp_rows(q, k, v, *, causal: bool = False, segment_ids=None, kv_segment_ids=None, bias=None,
                   scale: float | None = None, block_q: int = 128, block_k: int = 128) -> jax.Array:
    """The statistic the forward pass saves, L_i = log Σ_j exp(s_ij), as [B, H, T] (for tests and inspection)."""
    B, T, H, K = q.shape
    S = k.shape[1]
    st = _Static(bool(causal), 1.0 / math.sqrt(K) if scale is None else float(scale),
                 min(block_q, T), min(block_k, S), T, S)
    seg_k = segment_ids if kv_segment_ids is None else kv_segment_ids
    _, lse = _forward(st, q, k, v, segment_ids, seg_k, bias)                 # [nq, B, Hkv, G, bq]
    return jnp.einsum("ibngq->bngiq", lse).reshape(B, H, -1)[:, :, :T]
