"""Many prompts in, one result dict per prompt out: right-padded batches through the KV-cached loop,
beam search one by one, the paged continuous-batching engine, or speculative decoding.

Each result (one JSON object per prompt in ``lineage sample --json``) holds:

* ``prompt``, ``text`` (the decoded ``tokens``), ``tokens`` (the kept prompt ids, then the new ids)
  and ``new_tokens`` (how many were generated);
* ``prompt_tokens``: the ids the prompt encodes to; ``prompt_tokens_kept``: how many of them (the
  last ones) the model was given. A prompt longer than the context is cut to its last C - 1 tokens
  (C - gamma - 1 for speculative decoding), so the two differ exactly when it was cut;
* ``stop_reason``: ``"eos"`` (the end-of-text token was drawn), ``"max_new_tokens"`` (all that was
  asked was generated) or ``"context"`` (the fixed-size KV cache was full first).

Per path: ``sample_prompts`` (greedy, sample, beam) always gives what was asked: a row that fills
the context continues with a sliding window (the last C tokens as the model's input, as streaming
does), so it never stops with ``"context"``. The paged engine (``serve_prompts``) and speculative
decoding keep fixed-size caches: they stop at the context and say so with ``"context"``. An empty
prompt starts a document (the end-of-text token). No path draws an id >= the tokenizer's
vocabulary size (``vocab_limit``), whatever ``model.vocab_size`` is.
"""
from __future__ import annotations

from typing import Sequence

import jax
import numpy as np
from tqdm import tqdm

from lineage_jax.decode.args import check
from lineage_jax.decode.batching import ContinuousBatcher
from lineage_jax.decode.cached_lm import speculative_sample
from lineage_jax.decode.generation import extend_sliding, generate_beam, stop_reason
from lineage_jax.decode.kv_cache import generate_cached

__all__ = ["sample_prompts", "serve_prompts", "speculative_prompts"]


def _encode(tokenizer, prompts: Sequence[str], keep: int) -> tuple[list[int], list[list[int]]]:
    """-> (ids per prompt, each prompt's last ``keep`` ids); an empty prompt is the end-of-text token."""
    full = [tokenizer.encode(p) or [tokenizer.eos_id] for p in prompts]
    return [len(x) for x in full], [x[-keep:] for x in full]


def _result(prompt: str, tokenizer, toks: list[int], n_prompt: int, n_kept: int, reason: str, **extra) -> dict:
    """One prompt's result: ``toks`` = the ``n_kept`` prompt ids the model was given + the new ids."""
    return {"prompt": prompt, "text": tokenizer.decode(toks), "tokens": toks, "new_tokens": len(toks) - n_kept,
            "prompt_tokens": n_prompt, "prompt_tokens_kept": n_kept, "stop_reason": reason, **extra}


def sample_prompts(model, params, tokenizer, prompts: Sequence[str], max_new_tokens: int, *,
                   strategy: str = "sample", temperature: float = 0.8, top_k: int = 0, top_p: float = 1.0,
                   num_beams: int = 1, seed: int = 0, batch_size: int = 8, progress: bool = False) -> list[dict]:
    """greedy / sample: right-padded batches of ``batch_size`` through ``generate_cached`` (prompt i
    draws with ``fold_in(key(seed), i // batch_size)``), and a row that fills the context goes on
    with ``extend_sliding``; beam: one ``generate_beam`` per prompt (its window slides). Every
    result gets all ``max_new_tokens`` unless it drew the end-of-text token."""
    kw = check(strategy=strategy, max_new_tokens=max_new_tokens, num_beams=num_beams, batch_size=batch_size,
               temperature=0.0 if strategy == "greedy" else temperature, top_k=top_k, top_p=top_p)
    draw = dict(temperature=kw["temperature"], top_k=kw["top_k"], top_p=kw["top_p"], vocab_limit=tokenizer.vocab_size)
    eos, C = tokenizer.eos_id, model.cfg.context
    n_prompt, ids = _encode(tokenizer, prompts, C - 1)
    results: list[dict] = []
    bar = tqdm(total=len(prompts), disable=not progress, unit="prompt")
    if strategy == "beam":
        for p, n, x in zip(prompts, n_prompt, ids):
            toks = generate_beam(model, params, x, max_new_tokens, num_beams=num_beams, eos_id=eos,
                                 vocab_limit=tokenizer.vocab_size)
            results.append(_result(p, tokenizer, toks, n, len(x),
                                   stop_reason(len(toks) - len(x), toks[-1], max_new_tokens, eos)))
            bar.update(1)
    else:
        key = jax.random.key(seed)
        for j in range(0, len(ids), batch_size):
            chunk = ids[j:j + batch_size]
            B = batch_size if len(ids) > batch_size else len(chunk)     # one shape for every batch
            window = np.zeros((B, max(len(x) for x in ids)), np.int32)
            lengths = np.ones((B,), np.int32)
            for r, x in enumerate(chunk):
                window[r, :len(x)], lengths[r] = x, len(x)
            bkey = jax.random.fold_in(key, j // batch_size)
            out, lens = generate_cached(model, params, window, lengths, max_new_tokens, key=bkey, eos_id=eos, **draw)
            out, lens = np.asarray(out), np.asarray(lens)
            for r, x in enumerate(chunk):
                toks = [int(v) for v in out[r, :lens[r]]]
                new = len(toks) - len(x)
                reason = stop_reason(new, toks[-1], max_new_tokens, eos)
                if reason == "context":         # the cache is full: go on with the sliding window
                    toks, reason = extend_sliding(model, params, toks, max_new_tokens - new, eos_id=eos,
                                                  key=jax.random.fold_in(bkey, r), step0=new, **draw)
                results.append(_result(prompts[j + r], tokenizer, toks, n_prompt[j + r], len(x), reason))
            bar.update(len(chunk))
    bar.close()
    return results


def serve_prompts(model, params, tokenizer, prompts: Sequence[str], max_new_tokens: int, *,
                  strategy: str = "sample", temperature: float = 0.8, top_k: int = 0, top_p: float = 1.0,
                  seed: int = 0, slots: int = 8, block_size: int = 16, num_samples: int = 1,
                  progress: bool = False) -> list[dict]:
    """Many prompts through the continuous-batching paged engine (``decode/batching.py``), in prompt order.

    ``num_samples`` > 1 samples share their prompt's KV blocks. Sequence ``sid`` (prompt i, sample
    j -> sid = i * num_samples + j) draws as ``generate_cached`` with ``key=fold_in(key(seed), sid)``
    would for it alone. The cache holds C tokens per sequence: one that fills it stops there
    (``stop_reason`` ``"context"``).
    """
    if strategy not in ("greedy", "sample"):
        raise ValueError(f"strategy={strategy!r}: the paged engine serves greedy or sample")
    kw = check(temperature=0.0 if strategy == "greedy" else temperature, top_k=top_k, top_p=top_p)
    check(max_new_tokens=max_new_tokens, num_samples=num_samples, block_size=block_size)
    n_prompt, ids = _encode(tokenizer, prompts, model.cfg.context - 1)
    eng = ContinuousBatcher(model, params, slots=max(slots, num_samples), block_size=block_size,
                            key=jax.random.key(seed), eos_id=tokenizer.eos_id, vocab_limit=tokenizer.vocab_size, **kw)
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
        extra = {"sample": j} if num_samples > 1 else {}
        toks, kept = out[sid], len(ids[i])
        reason = stop_reason(len(toks) - kept, toks[-1], max_new_tokens, tokenizer.eos_id)
        results.append(_result(prompts[i], tokenizer, toks, n_prompt[i], kept, reason, **extra))
    return results


def speculative_prompts(target: tuple, draft: tuple, tokenizer, prompts: Sequence[str], max_new_tokens: int,
                        gamma: int, *, strategy: str = "sample", temperature: float = 0.8, top_k: int = 0,
                        top_p: float = 1.0, seed: int = 0, progress: bool = False) -> list[dict]:
    """One ``speculative_sample`` per prompt (prompt i with seed ``seed + i``), with its counters
    target_calls, draft_tokens_proposed / accepted. Both KV caches are fixed at the context: a
    sequence that fills it stops there (``stop_reason`` ``"context"``)."""
    t = 0.0 if strategy == "greedy" else temperature
    results = []
    for i, p in enumerate(tqdm(prompts, disable=not progress, unit="prompt")):
        ids = tokenizer.encode(p) or [tokenizer.eos_id]
        toks, c = speculative_sample(target, draft, ids, max_new_tokens, gamma, temperature=t, top_k=top_k,
                                     top_p=top_p, seed=seed + i, eos_id=tokenizer.eos_id,
                                     vocab_limit=tokenizer.vocab_size)
        kept = c.pop("prompt_tokens_kept")
        reason = stop_reason(len(toks) - kept, toks[-1], max_new_tokens, tokenizer.eos_id)
        results.append({**_result(p, tokenizer, toks, len(ids), kept, reason), **c})
    return results
