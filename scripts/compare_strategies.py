"""Every named strategy (parallel/strategies.py) side by side on 8 emulated CPU devices, in both
forms: per-device memory next to the ZeRO formula, collective bytes next to the ring formula,
and the median step time.

    python scripts/compare_strategies.py [--steps 5] [section.key=value ...]

Step times on emulated devices share this machine's cores: compare them with each other, not
with real accelerators.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"

import jax  # noqa: E402
import numpy as np  # noqa: E402

from lineage_jax.commands.shard_report import configure, shard_report  # noqa: E402
from lineage_jax.config import load_config  # noqa: E402
from lineage_jax.train.setup import build  # noqa: E402
from parallel.report.build import comparison_row  # noqa: E402
from parallel.report.format import fmt_bytes  # noqa: E402
from parallel.strategies import NAMED  # noqa: E402

MODEL = ["model.layers=4", "model.width=256", "model.heads=8", "model.context=64", "model.attn_chunks=1",
         "model.scan_layers=true", "model.vocab_multiple=8", "train.batch_size=8"]


def step_time(cfg, steps: int) -> float:
    setup = build(cfg)
    state = setup.init_state(jax.random.key(0))
    batch = setup.put_batch(np.random.default_rng(0).integers(0, 257, (cfg.train.batch_size, cfg.model.context + 1)))
    times = []
    for i in range(steps + 2):
        t0 = time.perf_counter()
        state, m = setup.train_step(state, batch)
        jax.block_until_ready(m["loss"])
        times.append(time.perf_counter() - t0)
    return statistics.median(times[2:])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    print(f"{'strategy':<13} {'form':<9} {'params+opt/dev':>14} {'ZeRO formula':>12} {'sent/dev':>9} "
          f"{'ring theory':>11} {'temp/dev':>9} {'step ms':>8}")
    for name in NAMED:
        for form in ("gspmd", "shard_map"):
            cfg = configure(load_config("tiny", MODEL + [f"parallel.form={form}"] + args.overrides), name)
            r = comparison_row(name, shard_report(cfg))
            print(f"{name:<13} {form:<9} {fmt_bytes(r['params'] + r['opt_state']):>14} "
                  f"{fmt_bytes(r['state_theory']):>12} {fmt_bytes(r['comm']):>9} {fmt_bytes(r['comm_theory']):>11} "
                  f"{fmt_bytes(r['temp']):>9} {1e3 * step_time(cfg, args.steps):>8.1f}", flush=True)


if __name__ == "__main__":
    main()
