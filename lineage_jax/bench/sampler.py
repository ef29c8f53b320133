"""The GRPO sampler with and without a KV cache: wall-clock time of one batch of completions on the chapter's
decoder (``reasoning.sample.sample`` recomputes the window per token; ``reasoning.cached.sample`` reads the
prefix once, then one position per token), after both are compiled, and whether they drew the same tokens.

A ratio to read, not a test: ``scripts/bench_grpo_sampler.py`` prints it; the tests check equality only.
"""
from __future__ import annotations

import time

__all__ = ["run"]


def run(*, batch: int = 64, window: int = 96, max_new: int = 64, d: int = 64, layers: int = 2, repeats: int = 3,
        seed: int = 0) -> dict:
    """{"recompute_s", "cached_s", "speedup", "same_tokens", ...}: the best of ``repeats`` timed calls each."""
    import jax
    import numpy as np

    from lineage_jax.reasoning import arith, cached, sample, tiny

    cfg = tiny.TinyConfig(vocab=arith.VOCAB.size, context=window, d=d, heads=4, layers=layers)
    model, params = tiny.init(cfg, jax.random.key(seed))
    apply = lambda p, t: model.apply({"params": p}, t)
    rng = np.random.default_rng(seed)
    prompts = [arith.addition(rng, int(rng.integers(1, 4))).prompt for _ in range(batch)]
    tokens, lengths = arith.encode_prompts(prompts, window)
    # end_id = -1: no row stops early, so both run exactly max_new steps
    kw = dict(max_new=max_new, end_id=-1, temperature=1.0)
    calls = {"recompute": lambda: sample.sample(apply, params, tokens, lengths, jax.random.key(1), **kw),
             "cached": lambda: cached.sample(cfg, params, tokens, lengths, jax.random.key(1), **kw)}
    outs, times = {}, {}
    for name, call in calls.items():
        outs[name] = jax.block_until_ready(call())             # compile
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            jax.block_until_ready(call())
            best = min(best, time.perf_counter() - t0)
        times[name] = best
    return {"batch": batch, "window": window, "max_new": max_new, "params": tiny.count_params(params),
            "recompute_s": times["recompute"], "cached_s": times["cached"],
            "speedup": times["recompute"] / times["cached"],
            "same_tokens": bool(np.array_equal(outs["recompute"]["tokens"], outs["cached"]["tokens"])),
            "max_logprob_diff": float(np.abs(np.asarray(outs["recompute"]["logprobs"])
                                             - np.asarray(outs["cached"]["logprobs"])).max())}
