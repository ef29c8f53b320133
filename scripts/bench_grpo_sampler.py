"""Print the GRPO sampler's KV-cache speed-up (``lineage_jax.bench.sampler``): python scripts/bench_grpo_sampler.py
[--batch 64] [--window 96] [--max-new 64]."""
import argparse
import json

from lineage_jax.bench import sampler

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--window", type=int, default=96)
    ap.add_argument("--max-new", type=int, default=64)
    a = ap.parse_args()
    print(json.dumps(sampler.run(batch=a.batch, window=a.window, max_new=a.max_new), indent=1))
