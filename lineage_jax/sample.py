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
           "sample_run", "sample_prompts", "serve_prompts", "CachedLM", "speculative_sample", "speculative_prompts"]

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


# --------------------------------------------------------------------------- many prompts: paged continuous batching

def serve_prompts(model: GPT, params, tokenizer: Tokenizer, prompts: Sequence[str], max_new_tokens: int, *,
                  strategy: str = "sample", temperature: float = 0.8, top_k: int = 0, top_p: float = 1.0,
                  seed: int = 0, slots: int = 8, block_size: int = 16, num_samples: int = 1,
                  progress: bool = False) -> list[dict]:
    """Many prompts through the continuous-batching paged engine (``decode/batching.py``).

    One ``{"prompt", "text", "tokens", "new_tokens"}`` per prompt (and ``"sample"`` per sample when
    ``num_samples`` > 1, the samples sharing their prompt's KV blocks), in prompt order. Sequence
    ``sid`` (prompt i, sample j -> sid = i * num_samples + j) draws as ``generate_cached`` with
    ``key=fold_in(key(seed), sid)`` would for it alone. Prompts are cut to their last C - 1 tokens.
    """
    from tqdm import tqdm

    from lineage_jax.decode.batching import ContinuousBatcher
    if strategy not in ("greedy", "sample"):
        raise ValueError(f"strategy={strategy!r}: the paged engine serves greedy or sample")
    kw = _check(0.0 if strategy == "greedy" else temperature, top_k, top_p)
    C = model.cfg.context
    ids = [tokenizer.encode(p)[-(C - 1):] or [tokenizer.eos_id] for p in prompts]
    slots = max(slots, num_samples)
    eng = ContinuousBatcher(model, params, slots=slots, block_size=block_size, key=jax.random.key(seed),
                            eos_id=tokenizer.eos_id, **kw)
    owner = {}
    for i, x in enumerate(ids):
        for j, sid in enumerate(eng.add(x, max_new_tokens, n=num_samples)):
            owner[sid] = (i, j)
    bar = tqdm(total=len(owner), disable=not progress, unit="seq")
    out = eng.run(on_finish=lambda sid, toks: bar.update(1))
    bar.close()
    results = []
    for sid in sorted(out):
        i, j = owner[sid]
        toks = out[sid]
        r = {"prompt": prompts[i], "text": tokenizer.decode(toks), "tokens": toks,
             "new_tokens": len(toks) - len(ids[i])}
        if num_samples > 1:
            r["sample"] = j
        results.append(r)
    return results


# --------------------------------------------------------------------------- speculative decoding with KV caches

@functools.partial(jax.jit, static_argnames=_STATIC)
def _chunk_probs(model, params, cache, chunk, start, *, temperature, top_k, top_p):
    """Feed chunk [1, W] at positions start.. -> (next-token probabilities [W, V] after each, cache)."""
    from lineage_jax.decode.filters import top_k_filter, top_p_filter
    pos = start + jnp.arange(chunk.shape[1], dtype=jnp.int32)[None]
    logits, cache = model.apply({"params": params}, chunk, cache=cache, positions=pos)
    logits = logits[0].astype(jnp.float32)
    if temperature > 0:
        logits = logits / temperature
        if top_k > 0:
            logits = top_k_filter(logits, top_k)
        if top_p < 1.0:
            logits = top_p_filter(logits, top_p)
    return jax.nn.softmax(logits, axis=-1), cache


class CachedLM:
    """A model as a ``tokens -> next-token probabilities`` function for ``speculative_generate``, with a KV cache.

    Keys and values of the longest prefix shared with the previous call stay in the cache; only
    the rest is fed (padded to a power of two, so a handful of compiles serve any length). Slots
    past the valid prefix may hold stale keys from rejected drafts: a query never sees a slot
    beyond its own position, and every slot at or below it is rewritten first.
    Probabilities are after temperature / top-k / top-p (temperature 0: the plain softmax, whose
    argmax is the greedy token).
    """

    def __init__(self, model: GPT, params, *, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0):
        self.model, self.params, self.kw = model, params, _check(temperature, top_k, top_p)
        self.cache, self.seen = init_cache(model.cfg, 1), []
        self.calls = 0

    def probs(self, tokens, rows: int) -> np.ndarray:
        """Distributions [rows, V] of the token after each of the last ``rows`` prefixes of ``tokens``."""
        tokens = [int(t) for t in tokens]
        t, C = len(tokens), self.model.cfg.context
        if not rows <= t <= C:
            raise ValueError(f"{t} tokens: need {rows}..{C} (the model's context)")
        m = 0
        while m < min(len(self.seen), t) and self.seen[m] == tokens[m]:
            m += 1
        s = min(m, t - rows)
        feed = tokens[s:]
        W = 1 << (len(feed) - 1).bit_length()
        chunk = np.zeros((1, W), np.int32)
        chunk[0, :len(feed)] = feed
        p, self.cache = _chunk_probs(self.model, self.params, self.cache, jnp.asarray(chunk), jnp.int32(s), **self.kw)
        self.seen, self.calls = tokens, self.calls + 1
        return np.asarray(p)[t - rows - s:t - s]


def speculative_sample(target: tuple[GPT, object], draft: tuple[GPT, object], prompt: Sequence[int],
                       max_new_tokens: int, gamma: int, *, temperature: float = 0.0, top_k: int = 0,
                       top_p: float = 1.0, seed: int = 0, eos_id: int | None = None):
    """Speculative decoding (``decode.speculative.speculative_generate``) with two KV-cached models.

    ``target`` and ``draft`` are (model, params) sharing a vocabulary. Both distributions are
    post-filter (temperature, top-k, top-p), so the output follows the target's filtered
    sampling distribution exactly; temperature 0 is greedy (output = the target's greedy output).
    New tokens are limited so prompt + proposals fit both contexts (the prompt is cut to its last
    C - gamma - 1 tokens). Returns (tokens, counters): target_calls, draft_tokens_proposed,
    draft_tokens_accepted and new_tokens.
    """
    from lineage_jax.decode.speculative import speculative_generate
    C = min(target[0].cfg.context, draft[0].cfg.context)
    if C < gamma + 2:
        raise ValueError(f"gamma={gamma}: the context {C} must hold at least gamma + 2 tokens")
    prompt = list(prompt)[-(C - gamma - 1):]
    max_new = min(max_new_tokens, C - gamma - len(prompt) + 1)
    t_lm, d_lm = (CachedLM(m, p, temperature=temperature, top_k=top_k, top_p=top_p) for m, p in (target, draft))
    toks, counters = speculative_generate(jax.random.key(seed), lambda x: d_lm.probs(x, 1)[0],
                                          lambda x: t_lm.probs(x, gamma + 1), prompt, max_new, gamma,
                                          temperature=0.0 if temperature == 0 else 1.0, eos_id=eos_id)
    return [int(t) for t in toks], {**counters, "new_tokens": len(toks) - len(prompt)}


def speculative_prompts(target: tuple[GPT, object], draft: tuple[GPT, object], tokenizer: Tokenizer,
                        prompts: Sequence[str], max_new_tokens: int, gamma: int, *, strategy: str = "sample",
                        temperature: float = 0.8, top_k: int = 0, top_p: float = 1.0, seed: int = 0,
                        progress: bool = False) -> list[dict]:
    """One speculative generation per prompt (prompt i with seed fold ``seed + i``) -> one dict per prompt
    with text, tokens, new_tokens and the counters target_calls, draft_tokens_proposed/accepted."""
    from tqdm import tqdm
    t = 0.0 if strategy == "greedy" else temperature
    results = []
    for i, p in enumerate(tqdm(prompts, disable=not progress, unit="prompt")):
        ids = tokenizer.encode(p) or [tokenizer.eos_id]
        toks, c = speculative_sample(target, draft, ids, max_new_tokens, gamma, temperature=t, top_k=top_k,
                                     top_p=top_p, seed=seed + i, eos_id=tokenizer.eos_id)
        results.append({"prompt": p, "text": tokenizer.decode(toks), "tokens": toks, **c})
    return results
