"""Many prompts in, one result dict per prompt out: right-padded batches through the KV-cached loop,
beam search one by one, the paged continuous-batching engine, or speculative decoding.

Each result holds ``prompt``, ``text``, ``tokens`` and ``new_tokens`` (+ ``sample`` for several
samples per prompt, + the speculative counters). Prompts are cut to their last C - 1 tokens; an
empty prompt starts a document (the end-of-text token).
"""
from __future__ import annotations

from typing import Sequence

import jax
import numpy as np
from tqdm import tqdm

from lineage_jax.decode.args import check
from lineage_jax.decode.batching import ContinuousBatcher
from lineage_jax.decode.cached_lm import speculative_sample
from lineage_jax.decode.generation import generate_beam
from lineage_jax.decode.kv_cache import generate_cached

__all__ = ["sample_prompts", "serve_prompts", "speculative_prompts"]


def _encode(tokenizer, prompts: Sequence[str], keep: int) -> list[list[int]]:
    return [tokenizer.encode(p)[-keep:] or [tokenizer.eos_id] for p in prompts]


def _result(prompt: str, tokenizer, toks: list[int], n_prompt: int, **extra) -> dict:
    return {"prompt": prompt, "text": tokenizer.decode(toks), "tokens": toks, "new_tokens": len(toks) - n_prompt,
            **extra}


def sample_prompts(model, params, tokenizer, prompts: Sequence[str], max_new_tokens: int, *,
                   strategy: str = "sample", temperature: float = 0.8, top_k: int = 0, top_p: float = 1.0,
                   num_beams: int = 1, seed: int = 0, batch_size: int = 8, progress: bool = False) -> list[dict]:
    """greedy / sample: right-padded batches of ``batch_size`` through ``generate_cached`` (prompt i
    draws with ``fold_in(key(seed), i // batch_size)``); beam: one ``generate_beam`` per prompt."""
    kw = check(strategy=strategy, max_new_tokens=max_new_tokens, num_beams=num_beams, batch_size=batch_size,
               temperature=0.0 if strategy == "greedy" else temperature, top_k=top_k, top_p=top_p)
    ids = _encode(tokenizer, prompts, model.cfg.context - 1)
    results: list[dict] = []
    bar = tqdm(total=len(prompts), disable=not progress, unit="prompt")
    if strategy == "beam":
        for p, x in zip(prompts, ids):
            toks = generate_beam(model, params, x, max_new_tokens, num_beams=num_beams, eos_id=tokenizer.eos_id)
            results.append(_result(p, tokenizer, toks, len(x)))
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
            out, lens = generate_cached(model, params, window, lengths, max_new_tokens,
                                        key=jax.random.fold_in(key, j // batch_size), temperature=kw["temperature"],
                                        top_k=top_k, top_p=top_p, eos_id=tokenizer.eos_id)
            out, lens = np.asarray(out), np.asarray(lens)
            for r, x in enumerate(chunk):
                results.append(_result(prompts[j + r], tokenizer, [int(v) for v in out[r, :lens[r]]], len(x)))
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
    would for it alone.
    """
    if strategy not in ("greedy", "sample"):
        raise ValueError(f"strategy={strategy!r}: the paged engine serves greedy or sample")
    kw = check(temperature=0.0 if strategy == "greedy" else temperature, top_k=top_k, top_p=top_p)
    check(max_new_tokens=max_new_tokens, num_samples=num_samples, block_size=block_size)
    ids = _encode(tokenizer, prompts, model.cfg.context - 1)
    eng = ContinuousBatcher(model, params, slots=max(slots, num_samples), block_size=block_size,
                            key=jax.random.key(seed), eos_id=tokenizer.eos_id, **kw)
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
        results.append(_result(prompts[i], tokenizer, out[sid], len(ids[i]), **extra))
    return results


def speculative_prompts(target: tuple, draft: tuple, tokenizer, prompts: Sequence[str], max_new_tokens: int,
                        gamma: int, *, strategy: str = "sample", temperature: float = 0.8, top_k: int = 0,
                        top_p: float = 1.0, seed: int = 0, progress: bool = False) -> list[dict]:
    """One ``speculative_sample`` per prompt (prompt i with seed ``seed + i``), with its counters
    target_calls, draft_tokens_proposed / accepted."""
    t = 0.0 if strategy == "greedy" else temperature
    results = []
    for i, p in enumerate(tqdm(prompts, disable=not progress, unit="prompt")):
        ids = tokenizer.encode(p) or [tokenizer.eos_id]
        toks, c = speculative_sample(target, draft, ids, max_new_tokens, gamma, temperature=t, top_k=top_k,
                                     top_p=top_p, seed=seed + i, eos_id=tokenizer.eos_id)
        results.append({"prompt": p, "text": tokenizer.decode(toks), "tokens": toks, **c})
    return results
