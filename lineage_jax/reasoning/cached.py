"""KV-cached sampling for the chapter's decoder (``tiny.TinyLM``): the prefix is read once, then one position
per token, instead of ``sample.sample``'s recomputation of the whole window at every step.

``forward`` is TinyLM's forward written over its parameter tree (the same names, the same operations, in the
same dtype) that also hands back every layer's keys and values [B, H, W, K]; ``step`` runs one new token per row
at that row's own position, attending to the cached positions ≤ it, and writes its key and value into the cache.
``sample`` is ``sample.sample`` on that cache: the same loop, the same key splits and the same outputs (tokens,
mask, log-probs, lengths), so GRPO can swap one for the other (``tests/reasoning/test_cached.py``).
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from lineage_jax.reasoning.tiny import TinyConfig


def _norm(x, scale, cfg: TinyConfig):
    if not cfg.norm:
        return x
    x32 = x.astype(jnp.float32)
    y = (x32 - x32.mean(-1, keepdims=True)) * jax.lax.rsqrt(x32.var(-1, keepdims=True) + 1e-5)
    return (y * scale).astype(x.dtype)


def _mlp(p, x, cfg: TinyConfig):
    if not cfg.mlp:
        return x
    dt = jnp.dtype(cfg.dtype)
    h = jax.nn.gelu(_norm(x, p.get("ln2_scale"), cfg) @ p["w1"].astype(dt))
    return x + h @ p["w2"].astype(dt)


def _qkv(p, x, cfg: TinyConfig):
    dt = jnp.dtype(cfg.dtype)
    a = _norm(x, p.get("ln1_scale"), cfg)
    return [jnp.einsum("btd,dhk->bhtk", a, p[n].astype(dt)) for n in ("wq", "wk", "wv")]


def _attend(p, x, q, k, v, allowed, cfg: TinyConfig):
    """x + the heads' output; q [B, H, t, K] over cached k, v [B, H, W, K]; allowed [B or 1, t, W] bool."""
    dt = jnp.dtype(cfg.dtype)
    scores = jnp.einsum("bhtk,bhsk->bhts", q, k) / math.sqrt(cfg.d // cfg.heads)
    pattern = jax.nn.softmax(jnp.where(allowed[:, None], scores.astype(jnp.float32), -1e30), axis=-1)
    return x + jnp.einsum("bhts,bhsk,hkd->btd", pattern.astype(dt), v, p["wo"].astype(dt))


def _logits(params, x, cfg: TinyConfig):
    return (_norm(x, params.get("ln_f_scale"), cfg) @ params["unembed"].astype(jnp.dtype(cfg.dtype))).astype(jnp.float32)


def forward(cfg: TinyConfig, params, tokens: jax.Array):
    """(logits [B, W, V], cache {"k", "v"}: [L, B, H, W, K]) of the whole window: TinyLM.apply plus its keys and
    values."""
    W = tokens.shape[1]
    x = (params["wte"][tokens] + params["wpe"][:W]).astype(jnp.dtype(cfg.dtype))
    causal = jnp.tril(jnp.ones((W, W), bool))[None]
    ks, vs = [], []
    for i in range(cfg.layers):
        p = params[f"layer_{i}"]
        q, k, v = _qkv(p, x, cfg)
        x = _mlp(p, _attend(p, x, q, k, v, causal, cfg), cfg)
        ks.append(k)
        vs.append(v)
    return _logits(params, x, cfg), {"k": jnp.stack(ks), "v": jnp.stack(vs)}


def step(cfg: TinyConfig, params, cache: dict, token: jax.Array, pos: jax.Array):
    """One new token per row at its own position: token [B], pos [B] -> (logits [B, V] of the next token,
    the cache with this position's keys and values written)."""
    B, W = token.shape[0], cache["k"].shape[3]
    rows = jnp.arange(B)
    pos = jnp.clip(pos, 0, W - 1)
    x = (params["wte"][token] + params["wpe"][pos]).astype(jnp.dtype(cfg.dtype))[:, None]   # [B, 1, D]
    allowed = (jnp.arange(W)[None] <= pos[:, None])[:, None]                                 # [B, 1, W]
    ks, vs = [], []
    for i in range(cfg.layers):
        p = params[f"layer_{i}"]
        q, k, v = _qkv(p, x, cfg)
        k_all = cache["k"][i].at[rows, :, pos].set(k[:, :, 0])
        v_all = cache["v"][i].at[rows, :, pos].set(v[:, :, 0])
        x = _mlp(p, _attend(p, x, q, k_all, v_all, allowed, cfg), cfg)
        ks.append(k_all)
        vs.append(v_all)
    return _logits(params, x, cfg)[:, 0], {"k": jnp.stack(ks), "v": jnp.stack(vs)}


@functools.partial(jax.jit, static_argnames=("cfg", "max_new", "end_id", "greedy"))
def sample(cfg: TinyConfig, params, tokens: jax.Array, lengths: jax.Array, key: jax.Array, *, max_new: int,
           end_id: int, temperature: float = 1.0, greedy: bool = False) -> dict[str, jax.Array]:
    """``sample.sample`` with a KV cache: the same arguments (the model given by ``cfg``), the same outputs."""
    B, W = tokens.shape
    rows = jnp.arange(B)
    logits_all, cache = forward(cfg, params, tokens)
    last = logits_all[rows, jnp.clip(lengths - 1, 0, W - 1)]

    def body(carry):
        t, toks, mask, logps, done, key, last, cache = carry
        key, sub = jax.random.split(key)
        pos = lengths + t
        logp = jax.nn.log_softmax(last if greedy else last / temperature, axis=-1)
        nxt = jnp.argmax(last, -1) if greedy else jax.random.categorical(sub, logp)
        live = ~done & (pos < W)
        toks = toks.at[rows, pos].set(jnp.where(live, nxt, toks[rows, jnp.clip(pos, 0, W - 1)]), mode="drop")
        mask = mask.at[rows, pos - 1].set(jnp.where(live, 1.0, mask[rows, pos - 1]), mode="drop")
        logps = logps.at[rows, pos - 1].set(jnp.where(live, logp[rows, nxt], logps[rows, pos - 1]), mode="drop")
        done = done | (live & (nxt == end_id)) | (pos >= W - 1)
        last, cache = step(cfg, params, cache, jnp.where(live, nxt, 0), pos)
        return t + 1, toks, mask, logps, done, key, last, cache

    init = (0, tokens, jnp.zeros((B, W), jnp.float32), jnp.zeros((B, W), jnp.float32), jnp.zeros(B, bool), key,
            last, cache)
    running = lambda c: (c[0] < max_new) & ~jnp.all(c[4])
    _, toks, mask, logps, *_ = jax.lax.while_loop(running, body, init)
    return {"tokens": toks, "mask": mask, "logprobs": logps, "lengths": mask.sum(-1).astype(jnp.int32)}
