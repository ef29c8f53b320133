"""Generating from a model: the KV-cached stream, its recompute reference, text in / text out, beam search.

The default path decodes with the KV cache (``decode/kv_cache.py``): prefill the prompt once,
then one position per new token, at static shapes so one compile serves the whole generation.
``generate_recompute`` keeps the earlier method (rerun the model over a fixed ``context``-long
window each token) as the reference the cache is tested against. Past the context, streaming
``generate`` falls back to that sliding window (learned absolute positions: a shifted window
changes every position, so a cache cannot be reused). Every draw goes through
``decode.filters.sample``, with ``vocab_limit`` (the tokenizer's vocabulary size) so an id the
tokenizer cannot decode is never drawn.

Why a generation stopped is one of ``STOP_REASONS`` (``stop_reason``): ``"eos"`` (the end-of-text
token was drawn), ``"max_new_tokens"`` (the budget was spent) or ``"context"`` (a fixed-size KV
cache was full: the paged engine and speculative decoding; the paths here slide the window instead).
"""
from __future__ import annotations

import functools
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lineage_jax.decode.args import check
from lineage_jax.decode.beam import beam_search
from lineage_jax.decode.filters import sample as sample_logits
from lineage_jax.decode.filters import vocab_mask
from lineage_jax.decode.kv_cache import decode_step, init_cache, prefill

__all__ = ["generate", "generate_recompute", "generate_text", "generate_beam", "extend_sliding", "stop_reason",
           "STOP_REASONS"]

_STATIC = ("model", "temperature", "top_k", "top_p", "vocab_limit")
STOP_REASONS = ("eos", "max_new_tokens", "context")


def stop_reason(new_tokens: int, last: int, max_new_tokens: int, eos_id: int | None) -> str:
    """Why a generation of ``new_tokens`` (ending with token ``last``) stopped, given its budget:
    ``"eos"`` if it drew the end-of-text token, ``"max_new_tokens"`` if the budget is spent, else
    ``"context"`` (it ran out of room in a fixed-size cache)."""
    if new_tokens > 0 and eos_id is not None and last == eos_id:
        return "eos"
    return "max_new_tokens" if new_tokens >= max_new_tokens else "context"


def _last(logits, lengths):
    """Logits [B, T, V] -> the row at each sequence's last real token [B, V]."""
    return jnp.take_along_axis(logits, (lengths - 1)[:, None, None], axis=1)[:, 0]


@functools.partial(jax.jit, static_argnames=_STATIC)
def _recompute_next(model, params, window, lengths, key, *, temperature, top_k, top_p, vocab_limit):
    """window [B, C] right-padded with ``lengths`` real tokens -> the next token per row [B]."""
    return sample_logits(key, _last(model.apply({"params": params}, window), lengths), temperature=temperature,
                         top_k=top_k, top_p=top_p, vocab_limit=vocab_limit)


@functools.partial(jax.jit, static_argnames=_STATIC)
def _prefill_next(model, params, window, lengths, key, *, temperature, top_k, top_p, vocab_limit):
    logits, cache = prefill(model, params, init_cache(model.cfg, window.shape[0]), window, lengths)
    return sample_logits(key, _last(logits, lengths), temperature=temperature, top_k=top_k, top_p=top_p,
                         vocab_limit=vocab_limit), cache


@functools.partial(jax.jit, static_argnames=_STATIC)
def _cached_next(model, params, cache, token, key, *, temperature, top_k, top_p, vocab_limit):
    logits, cache = decode_step(model, params, cache, token)
    return sample_logits(key, logits, temperature=temperature, top_k=top_k, top_p=top_p, vocab_limit=vocab_limit), cache


def generate_recompute(model, params, prompts, lengths, max_new_tokens: int, *, key, temperature: float = 0.0,
                       top_k: int = 0, top_p: float = 1.0, eos_id: int | None = None, vocab_limit: int | None = None):
    """The reference for ``generate_cached`` (same arguments, same result, same keys per step):
    each new token reruns the model over the whole right-padded [B, C] window."""
    kw = check(temperature=temperature, top_k=top_k, top_p=top_p, vocab_limit=vocab_limit)
    C = model.cfg.context
    prompts, lengths = np.asarray(prompts, np.int32), np.asarray(lengths, np.int32).copy()
    B, P = prompts.shape
    out = np.zeros((B, C), np.int32)
    out[:, :P] = prompts
    out[np.arange(C)[None] >= lengths[:, None]] = 0
    done = lengths >= C
    for i in range(max_new_tokens):
        if done.all():
            break
        tok = np.asarray(_recompute_next(model, params, jnp.asarray(out), jnp.asarray(lengths),
                                         jax.random.fold_in(key, i), **kw))
        live = ~done
        out[np.arange(B)[live], lengths[live]] = tok[live]
        lengths = lengths + live
        if eos_id is not None:
            done |= live & (tok == eos_id)
        done |= lengths >= C
    return out, lengths


def _stream(model, params, tokens: list[int], max_new_tokens: int, key, kw: dict, eos_id, on_token,
            step0: int = 0) -> tuple[list[int], str]:
    """Append up to ``max_new_tokens`` to ``tokens`` (step i draws with ``fold_in(key, step0 + i)``):
    KV-cached while the sequence fits the context, then the sliding-window recompute (the last C
    tokens as the model's input). -> (tokens, "eos" | "max_new_tokens")."""
    C = model.cfg.context
    cache = None
    for i in range(max_new_tokens):
        k = jax.random.fold_in(key, step0 + i)
        if cache is None and len(tokens) < C:          # prefill at the fixed shape [1, C]
            window = np.zeros((1, C), np.int32)
            window[0, :len(tokens)] = tokens
            tok, cache = _prefill_next(model, params, jnp.asarray(window), jnp.asarray([len(tokens)], jnp.int32), k, **kw)
        elif cache is not None and len(tokens) <= C:   # feed the last token at position len - 1
            tok, cache = _cached_next(model, params, cache, jnp.asarray([tokens[-1]], jnp.int32), k, **kw)
        else:                                          # past the context: slide the window
            window = np.asarray([tokens[-C:]], np.int32)
            tok = _recompute_next(model, params, jnp.asarray(window), jnp.asarray([C], jnp.int32), k, **kw)
        tokens.append(int(tok[0]))
        if on_token is not None:
            on_token(tokens)
        if eos_id is not None and tokens[-1] == eos_id:
            return tokens, "eos"
    return tokens, "max_new_tokens"


def generate(model, params, prompt: Sequence[int], max_new_tokens: int, *, temperature: float = 1.0,
             seed: int = 0, eos_id: int | None = None, on_token: Callable[[list[int]], None] | None = None,
             top_k: int = 0, top_p: float = 1.0, vocab_limit: int | None = None) -> list[int]:
    """Prompt ids -> prompt + up to ``max_new_tokens`` ids (each < ``vocab_limit``); stops early at ``eos_id``.

    KV-cached, one jitted step per token (so ``on_token`` streams); once the sequence fills the
    context it continues with the sliding-window recompute, so it always gives what was asked.
    """
    if not prompt:
        raise ValueError("prompt must contain at least one token")
    kw = check(temperature=temperature, top_k=top_k, top_p=top_p, vocab_limit=vocab_limit)
    max_new_tokens = check(max_new_tokens=max_new_tokens)["max_new_tokens"]
    return _stream(model, params, list(prompt), max_new_tokens, jax.random.key(seed), kw, eos_id, on_token)[0]


def extend_sliding(model, params, tokens: Sequence[int], max_new_tokens: int, *, key, eos_id: int | None = None,
                   step0: int = 0, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
                   vocab_limit: int | None = None) -> tuple[list[int], str]:
    """Continue ``tokens`` (typically a row that filled a fixed-size cache) by up to ``max_new_tokens``
    with the sliding window; step i draws with ``fold_in(key, step0 + i)``. -> (tokens, stop reason)."""
    kw = check(temperature=temperature, top_k=top_k, top_p=top_p, vocab_limit=vocab_limit)
    if max_new_tokens <= 0:
        return list(tokens), "max_new_tokens"
    return _stream(model, params, list(tokens), int(max_new_tokens), key, kw, eos_id, None, step0)


def generate_text(model, params, tokenizer, prompt: str, max_new_tokens: int, *, temperature: float = 1.0,
                  seed: int = 0, stream: Callable[[str], None] | None = None, top_k: int = 0,
                  top_p: float = 1.0) -> str:
    """Text in, text out; ``stream`` receives each newly completed piece of text as it is made.

    Only ids the tokenizer knows are drawn (``vocab_limit=tokenizer.vocab_size``), so a model whose
    vocabulary is padded past the tokenizer's decodes without error.
    """
    ids = tokenizer.encode(prompt)
    shown = len(tokenizer.decode(ids))

    def emit(text: str) -> None:
        nonlocal shown
        if stream is not None and len(text) > shown:
            stream(text[shown:])
            shown = len(text)

    # A trailing U+FFFD may be a multi-byte character not yet complete: hold it back until the end.
    out = generate(model, params, ids, max_new_tokens, temperature=temperature, seed=seed, top_k=top_k, top_p=top_p,
                   eos_id=tokenizer.eos_id, vocab_limit=tokenizer.vocab_size,
                   on_token=lambda toks: emit(tokenizer.decode(toks).rstrip("\ufffd")))
    text = tokenizer.decode(out)
    emit(text)
    return text


@functools.partial(jax.jit, static_argnames=("model", "vocab_limit"))
def _beam_logits(model, params, window, t, *, vocab_limit):
    """window [N, C] holding t real tokens -> the masked float32 logits of the token after them [N, V]."""
    logits = jax.lax.dynamic_index_in_dim(model.apply({"params": params}, window), t - 1, 1, False)
    return vocab_mask(logits.astype(jnp.float32), vocab_limit)


def generate_beam(model, params, prompt: Sequence[int], max_new_tokens: int, *, num_beams: int,
                  eos_id: int | None = None, length_penalty: float = 1.0, vocab_limit: int | None = None) -> list[int]:
    """The best beam (``decode.beam_search``) for one prompt: prompt + up to ``max_new_tokens`` ids, each
    < ``vocab_limit``. The step function reruns the model over a fixed [N, C] window (one compile);
    past the context the window slides (the last C tokens), so the budget is never cut."""
    kw = check(max_new_tokens=max_new_tokens, num_beams=num_beams, vocab_limit=vocab_limit)
    C = model.cfg.context
    prompt = list(prompt)
    if not prompt:
        raise ValueError("prompt must contain at least one token")

    def step_fn(prefix):
        N, t = prefix.shape
        window = np.zeros((N, C), np.int32)
        window[:, :min(t, C)] = prefix[:, -C:]
        return _beam_logits(model, params, jnp.asarray(window), jnp.int32(min(t, C)), vocab_limit=kw["vocab_limit"])

    seqs, _, lens = beam_search(step_fn, np.asarray([prompt], np.int32), num_beams=kw["num_beams"],
                                max_new_tokens=kw["max_new_tokens"], eos_id=eos_id, length_penalty=length_penalty)
    return [int(t) for t in np.asarray(seqs[0, 0, :int(lens[0, 0])])]
