"""The KV cache: keys and values of past tokens kept, so each new token costs one position.

Autoregressive decoding recomputes nothing it has seen: every layer's keys and values are stored
at static shape ``[L, B, C, H, K]`` (layers, batch, context, heads, head dim), written at each
token's position, and a new query attends to the slots at or before its own position (Pope et
al. 2022, "Efficiently Scaling Transformer Inference", §2, for the memory/latency trade-off; the
cache itself is as old as incremental decoding in the Transformer, Vaswani et al. 2017's tensor2tensor).

Layout: **right-padded**. Prompts ``[B, P]`` hold their ``lengths[b]`` real tokens first; the
padding after them is prefilled too but never seen, because slot s is visible to the query at
position p only when s <= p, and every slot below a row's length holds a real token (the slots at
and past it are overwritten as the row grows). Position = index in its own sequence, so rows of
different lengths decode in one batch with no shifting.

``generate_cached`` is one jitted function: prefill, then a ``lax.while_loop`` over new tokens
whose bound is a traced value, so every ``max_new_tokens`` (and every step) reuses one compile.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from lineage_jax.decode.args import check
from lineage_jax.decode.filters import sample as sample_logits

__all__ = ["KVCache", "init_cache", "prefill", "decode_step", "generate_cached", "compile_count"]


class KVCache(NamedTuple):
    k: jax.Array        # [L, B, C, H, K]
    v: jax.Array        # [L, B, C, H, K]
    lengths: jax.Array  # [B] int32: tokens held per row (the next token's position)


def init_cache(cfg, batch: int, dtype=None) -> KVCache:
    """An empty cache for ``batch`` rows of a model config (``dtype``: the compute dtype by default)."""
    dtype = jnp.dtype(dtype or cfg.dtype)
    shape = (cfg.layers, batch, cfg.context, cfg.kv_heads or cfg.heads, cfg.width // cfg.heads)
    return KVCache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype), jnp.zeros((batch,), jnp.int32))


def prefill(model, params, cache: KVCache, tokens: jax.Array, lengths: jax.Array):
    """Right-padded prompts [B, P] with ``lengths`` -> (logits [B, P, V], cache holding them)."""
    B, P = tokens.shape
    pos = jnp.broadcast_to(jnp.arange(P, dtype=jnp.int32), (B, P))
    logits, cache = model.apply({"params": params}, tokens, cache=cache, positions=pos)
    return logits, cache._replace(lengths=jnp.asarray(lengths, jnp.int32))


def decode_step(model, params, cache: KVCache, token: jax.Array, advance=None):
    """One new token per row [B] at position ``cache.lengths`` -> (logits [B, V], cache).

    ``advance`` [B] bool: rows whose length grows (default all); a row at the context limit
    writes nowhere (the scatter drops out-of-range slots).
    """
    pos = cache.lengths[:, None]
    logits, cache = model.apply({"params": params}, token[:, None].astype(jnp.int32), cache=cache, positions=pos)
    grow = jnp.ones_like(cache.lengths) if advance is None else advance.astype(jnp.int32)
    return logits[:, 0], cache._replace(lengths=cache.lengths + grow)


_TRACES = {"generate_cached": 0}


def compile_count() -> int:
    """How many times the cached decode loop has been traced (each trace is one compile)."""
    return _TRACES["generate_cached"]


@functools.partial(jax.jit, static_argnames=("model", "temperature", "top_k", "top_p", "vocab_limit", "eos_id"))
def _generate(model, params, prompts, lengths, max_new_tokens, key, *, temperature, top_k, top_p, vocab_limit,
              eos_id):
    _TRACES["generate_cached"] += 1
    c = model.cfg
    B, P = prompts.shape
    C = c.context
    out = jnp.zeros((B, C), jnp.int32).at[:, :P].set(prompts[:, :C])
    out = jnp.where(jnp.arange(C)[None] < lengths[:, None], out, 0)
    logits, cache = prefill(model, params, init_cache(c, B), prompts, lengths)
    last = jnp.take_along_axis(logits, (lengths - 1)[:, None, None], axis=1)[:, 0]   # [B, V]
    done = lengths >= C
    rows = jnp.arange(B)

    def cond(s):
        i, _, _, _, done = s
        return (i < max_new_tokens) & ~done.all()

    def body(s):
        i, cache, last, out, done = s
        tok = sample_logits(jax.random.fold_in(key, i), last.astype(jnp.float32), temperature=temperature,
                            top_k=top_k, top_p=top_p, vocab_limit=vocab_limit)
        live = ~done
        out = out.at[rows, cache.lengths].set(jnp.where(live, tok, out[rows, jnp.minimum(cache.lengths, C - 1)]),
                                              mode="drop")
        new_len = cache.lengths + live
        if eos_id is not None:
            done = done | (live & (tok == eos_id))
        done = done | (new_len >= C)
        last, cache = decode_step(model, params, cache, tok, advance=live)
        return i + 1, cache, last, out, done

    _, cache, _, out, _ = jax.lax.while_loop(cond, body, (jnp.int32(0), cache, last, out, done))
    return out, cache.lengths


def generate_cached(model, params, prompts, lengths, max_new_tokens, *, key, temperature: float = 0.0,
                    top_k: int = 0, top_p: float = 1.0, eos_id: int | None = None, vocab_limit: int | None = None):
    """Right-padded prompts [B, P] + ``lengths`` [B] -> (tokens [B, C], lengths [B]).

    Row b of the result holds its prompt and then up to ``max_new_tokens`` new tokens, stopping
    after ``eos_id`` (kept) or at the context C; positions from ``lengths[b]`` on are 0. Step i
    draws with ``fold_in(key, i)`` through ``decode.filters.sample`` (temperature 0 = greedy; no id
    >= ``vocab_limit``, the tokenizer's vocabulary size). The cache is fixed at C: a row that fills it
    stops there (``decode.prompts.sample_prompts`` continues such rows with a sliding window).
    ``max_new_tokens`` is traced: any value reuses the same compiled loop.
    """
    prompts = jnp.asarray(prompts, jnp.int32)
    lengths = jnp.asarray(lengths, jnp.int32)
    if prompts.ndim != 2 or lengths.shape != prompts.shape[:1]:
        raise ValueError(f"prompts [B, P] and lengths [B]; got {prompts.shape} and {lengths.shape}")
    if prompts.shape[1] > model.cfg.context:
        raise ValueError(f"prompt length {prompts.shape[1]} exceeds model.context={model.cfg.context}")
    kw = check(temperature=temperature, top_k=top_k, top_p=top_p, vocab_limit=vocab_limit)
    return _generate(model, params, prompts, lengths, jnp.int32(max_new_tokens), key, **kw,
                     eos_id=None if eos_id is None else int(eos_id))
