"""The sampler bench returns its ratio with the two samplers' outputs compared (timings are read, never
asserted)."""
import pytest

from lineage_jax.bench import sampler


@pytest.mark.slow    # compiles both samplers: ~10 s; the equality proof is tests/reasoning/test_cached.py
def test_bench_compares_the_same_draws():
    r = sampler.run(batch=4, window=24, max_new=8, d=16, repeats=1)
    assert r["same_tokens"] and r["max_logprob_diff"] < 1e-5
    assert r["recompute_s"] > 0 and r["cached_s"] > 0 and r["speedup"] == r["recompute_s"] / r["cached_s"]
