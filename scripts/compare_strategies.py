"""Every strategy side by side on 8 emulated CPU devices: per-device memory next to the ZeRO
formula, collective bytes next to the ring formula, and the median step time.

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

from lineage_jax.config import load_config  # noqa: E402
from lineage_jax.shard_report import shard_report  # noqa: E402
from lineage_jax.train.setup import build  # noqa: E402
from parallel.introspect import fmt_bytes  # noqa: E402

MODEL = ["model.layers=4", "model.width=256", "model.heads=8", "model.context=64", "model.attn_chunks=1",
         "model.scan_layers=true", "model.vocab_multiple=8", "train.batch_size=8"]
STRATEGIES = {
    "DP": ["mesh.data=8"],
    "ZeRO-1": ["mesh.data=1", "mesh.fsdp=8", "parallel.zero_stage=1"],
    "ZeRO-2": ["mesh.data=1", "mesh.fsdp=8", "parallel.zero_stage=2"],
    "ZeRO-3": ["mesh.data=1", "mesh.fsdp=8", "parallel.zero_stage=3"],
    "TP": ["mesh.data=1", "mesh.tensor=8"],
    "TP+SP": ["mesh.data=1", "mesh.tensor=8", "parallel.sequence_parallel=true"],
    "FSDPxTP": ["mesh.data=1", "mesh.fsdp=2", "mesh.tensor=4", "parallel.zero_stage=3"],
    "DPxFSDPxTP": ["mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2", "parallel.zero_stage=3"],
}


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
    print(f"{'strategy':<11} {'form':<9} {'params+opt/dev':>14} {'ZeRO formula':>12} {'sent/dev':>9} "
          f"{'ring theory':>11} {'temp/dev':>9} {'step ms':>8}")
    for name, over in STRATEGIES.items():
        for form in ("gspmd", "shard_map"):
            cfg = load_config("tiny", MODEL + over + [f"parallel.form={form}"] + args.overrides)
            rep = shard_report(cfg)
            po = rep["per_device_bytes"]["params"] + rep["per_device_bytes"]["opt_state"]
            th = rep["theory_bytes"].get("params", 0) + rep["theory_bytes"].get("opt_state", 0)
            sent = sum(c.get("sent_bytes", 0) for c in rep["collectives_executed"])
            theory = rep.get("comm_theory", {}).get("total")
            print(f"{name:<11} {form:<9} {fmt_bytes(po):>14} {fmt_bytes(th):>12} {fmt_bytes(sent):>9} "
                  f"{fmt_bytes(theory):>11} {fmt_bytes(rep['memory']['temp']):>9} "
                  f"{1e3 * step_time(cfg, args.steps):>8.1f}", flush=True)


if __name__ == "__main__":
    main()
