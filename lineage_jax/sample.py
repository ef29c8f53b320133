"""Sampling from a trained run: greedy, temperature / top-k / top-p, or beam search.

The default path decodes with the KV cache (``lineage_jax/decode/kv_cache.py``): prefill the
prompt once, then one position per new token, at static shapes so one compile serves the whole
generation. ``generate_recompute`` keeps the earlier method (rerun the model over a fixed
``context``-long window each token) as the reference the cache is tested against. Past the
context, streaming ``generate`` falls back to that sliding window (learned absolute positions:
a shifted window changes every position, so a cache cannot be reused).
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lineage_jax.config import Config, load_config
from lineage_jax.decode.filters import sample as sample_logits
from lineage_jax.decode.kv_cache import generate_cached, init_cache, prefill, decode_step
from lineage_jax.models import GPT
from lineage_jax.tokenize import Tokenizer, get_tokenizer
from lineage_jax.train import checkpoint as ckpt

__all__ = ["generate", "generate_cached", "generate_recompute", "generate_text", "generate_beam", "load_run",
           "sample_run", "sample_prompts"]

_STATIC = ("model", "temperature", "top_k", "top_p")


@functools.partial(jax.jit, static_argnames=_STATIC)
def _recompute_next(model, params, window, lengths, key, *, temperature, top_k, top_p):
    """window [B, C] right-padded with ``lengths`` real tokens -> the next token per row [B]."""
    logits = model.apply({"params": params}, window)
    last = jnp.take_along_axis(logits, (lengths - 1)[:, None, None], axis=1)[:, 0].astype(jnp.float32)
    return sample_logits(key, last, temperature=temperature, top_k=top_k, top_p=top_p)


@functools.partial(jax.jit, static_argnames=_STATIC)
def _prefill_next(model, params, window, lengths, key, *, temperature, top_k, top_p):
    logits, cache = prefill(model, params, init_cache(model.cfg, window.shape[0]), window, lengths)
    last = jnp.take_along_axis(logits, (lengths - 1)[:, None, None], axis=1)[:, 0].astype(jnp.float32)
    return sample_logits(key, last, temperature=temperature, top_k=top_k, top_p=top_p), cache


@functools.partial(jax.jit, static_argnames=_STATIC)
def _cached_next(model, params, cache, token, key, *, temperature, top_k, top_p):
    logits, cache = decode_step(model, params, cache, token)
    return sample_logits(key, logits.astype(jnp.float32), temperature=temperature, top_k=top_k, top_p=top_p), cache


def _check(temperature, top_k, top_p):
    if temperature < 0:
        raise ValueError(f"temperature={temperature}: must be >= 0 (0 = greedy)")
    if top_k < 0:
        raise ValueError(f"top_k={top_k}: must be >= 0 (0 = off)")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p={top_p}: must be in (0, 1]")
    return dict(temperature=float(temperature), top_k=int(top_k), top_p=float(top_p))


def generate_recompute(model: GPT, params, prompts, lengths, max_new_tokens: int, *, key, temperature: float = 0.0,
                       top_k: int = 0, top_p: float = 1.0, eos_id: int | None = None):
    """The reference for ``generate_cached`` (same arguments, same result, same keys per step):
    each new token reruns the model over the whole right-padded [B, C] window."""
    kw = _check(temperature, top_k, top_p)
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


def generate(model: GPT, params, prompt: Sequence[int], max_new_tokens: int, *, temperature: float = 1.0,
             seed: int = 0, eos_id: int | None = None, on_token: Callable[[list[int]], None] | None = None,
             top_k: int = 0, top_p: float = 1.0) -> list[int]:
    """Prompt ids -> prompt + up to ``max_new_tokens`` ids; stops early at ``eos_id``.

    KV-cached, one jitted step per token (so ``on_token`` streams); once the sequence fills the
    context it continues with the sliding-window recompute.
    """
    if not prompt:
        raise ValueError("prompt must contain at least one token")
    kw = _check(temperature, top_k, top_p)
    C = model.cfg.context
    tokens, key, cache = list(prompt), jax.random.key(seed), None
    for i in range(max_new_tokens):
        k = jax.random.fold_in(key, i)
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
            break
    return tokens


def generate_text(model: GPT, params, tokenizer: Tokenizer, prompt: str, max_new_tokens: int, *,
                  temperature: float = 1.0, seed: int = 0, stream: Callable[[str], None] | None = None,
                  top_k: int = 0, top_p: float = 1.0) -> str:
    """Text in, text out; ``stream`` receives each newly completed piece of text as it is made."""
    ids = tokenizer.encode(prompt)
    shown = len(tokenizer.decode(ids))

    def emit(text: str) -> None:
        nonlocal shown
        if stream is not None and len(text) > shown:
            stream(text[shown:])
            shown = len(text)

    # A trailing U+FFFD may be a multi-byte character not yet complete: hold it back until the end.
    out = generate(model, params, ids, max_new_tokens, temperature=temperature, seed=seed, top_k=top_k, top_p=top_p,
                   eos_id=tokenizer.eos_id, on_token=lambda toks: emit(tokenizer.decode(toks).rstrip("\ufffd")))
    text = tokenizer.decode(out)
    emit(text)
    return text


def load_run(run_dir: str | Path) -> tuple[Config, GPT, object]:
    """(config, model, params) of the latest checkpoint in ``run_dir``, on one device."""
    run_dir = Path(run_dir)
    step = ckpt.latest_step(run_dir)
    if step is None or not (run_dir / "config.yaml").is_file():
        raise ckpt.CheckpointError(f"no checkpoint in {run_dir}/checkpoints; train first "
                                   f"(lineage train run_dir={run_dir}) or pass the run_dir of a trained run")
    cfg = load_config(str(run_dir / "config.yaml"), ["mesh.data=1", "mesh.fsdp=1", "mesh.tensor=1"])
    from lineage_jax.train.setup import build
    setup = build(cfg, compile_steps=False, devices=jax.devices()[:1])
    with ckpt.manager(run_dir, create=False, async_save=False) as mngr:
        state, _ = ckpt.restore(mngr, step, setup.abstract_state())
    return cfg, setup.model, state.params


def generate_beam(model: GPT, params, prompt: Sequence[int], max_new_tokens: int, *, num_beams: int,
                  eos_id: int | None = None, length_penalty: float = 1.0) -> list[int]:
    """The best beam (``decode.beam_search``) for one prompt; the step function reruns the model over a
    fixed [N, C] window (one compile). New tokens are limited to what fits in the context."""
    from lineage_jax.decode.beam import beam_search
    C = model.cfg.context
    prompt = list(prompt)[-(C - 1):]
    max_new = min(max_new_tokens, C - len(prompt))

    @jax.jit
    def last_logits(params, window, t):
        return jax.lax.dynamic_index_in_dim(model.apply({"params": params}, window), t - 1, 1, False).astype(jnp.float32)

    def step_fn(prefix):
        N, t = prefix.shape
        window = np.zeros((N, C), np.int32)
        window[:, :t] = prefix
        return last_logits(params, jnp.asarray(window), jnp.int32(t))

    seqs, _, lens = beam_search(step_fn, np.asarray([prompt], np.int32), num_beams=num_beams, max_new_tokens=max_new,
                                eos_id=eos_id, length_penalty=length_penalty)
    return [int(t) for t in np.asarray(seqs[0, 0, :int(lens[0, 0])])]


def sample_prompts(model: GPT, params, tokenizer: Tokenizer, prompts: Sequence[str], max_new_tokens: int, *,
                   strategy: str = "sample", temperature: float = 0.8, top_k: int = 0, top_p: float = 1.0,
                   num_beams: int = 1, seed: int = 0, batch_size: int = 8, progress: bool = False) -> list[dict]:
    """Many prompts -> one ``{"prompt", "text", "tokens", "new_tokens"}`` per prompt.

    greedy / sample: right-padded batches of ``batch_size`` through ``generate_cached`` (prompt i
    draws with ``fold_in(key(seed), i // batch_size)``; prompts are cut to their last C - 1 tokens);
    beam: one ``generate_beam`` per prompt.
    """
    from tqdm import tqdm
    C = model.cfg.context
    ids = [tokenizer.encode(p)[-(C - 1):] or [tokenizer.eos_id] for p in prompts]   # "" starts a document
    results: list[dict] = []
    bar = tqdm(total=len(prompts), disable=not progress, unit="prompt")
    if strategy == "beam":
        for p, x in zip(prompts, ids):
            toks = generate_beam(model, params, x, max_new_tokens, num_beams=num_beams, eos_id=tokenizer.eos_id)
            results.append({"prompt": p, "text": tokenizer.decode(toks), "tokens": toks, "new_tokens": len(toks) - len(x)})
            bar.update(1)
    else:
        t = 0.0 if strategy == "greedy" else temperature
        key = jax.random.key(seed)
        for j in range(0, len(ids), batch_size):
            chunk = ids[j:j + batch_size]
            B = batch_size if len(ids) > batch_size else len(chunk)     # one shape for every batch
            P = max(len(x) for x in ids)
            window = np.zeros((B, P), np.int32)
            lengths = np.ones((B,), np.int32)
            for r, x in enumerate(chunk):
                window[r, :len(x)], lengths[r] = x, len(x)
            out, lens = generate_cached(model, params, window, lengths, max_new_tokens,
                                        key=jax.random.fold_in(key, j // batch_size), temperature=t, top_k=top_k,
                                        top_p=top_p, eos_id=tokenizer.eos_id)
            out, lens = np.asarray(out), np.asarray(lens)
            for r, x in enumerate(chunk):
                toks = [int(v) for v in out[r, :lens[r]]]
                results.append({"prompt": prompts[j + r], "text": tokenizer.decode(toks), "tokens": toks,
                                "new_tokens": len(toks) - len(x)})
            bar.update(len(chunk))
    bar.close()
    return results


def sample_run(run_dir: str | Path, prompt: str, max_new_tokens: int, *, temperature: float = 1.0, seed: int = 0,
               stream: Callable[[str], None] | None = None, top_k: int = 0, top_p: float = 1.0) -> str:
    cfg, model, params = load_run(run_dir)
    return generate_text(model, params, get_tokenizer(cfg.data.tokenizer), prompt, max_new_tokens,
                         temperature=temperature, seed=seed, stream=stream, top_k=top_k, top_p=top_p)
