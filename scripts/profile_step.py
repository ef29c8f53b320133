"""Where the train step's time goes on this machine: XLA thunk times grouped by model part.

    python scripts/profile_step.py [--config bench] [--steps 5] [overrides ...]

Traces forward+backward of the configured model with ``jax.profiler`` (a Perfetto trace),
maps every executed thunk (fusion) to the ``op_name`` metadata of the compiled HLO, and
prints the time per (forward | backward, layer part), summed over layers. Thunks may run
concurrently, so the sum exceeds the wall time: compare parts, and confirm a change by
``lineage bench``. This is how the issue-2 profile in the closing notes was taken.
"""
from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import re
import tempfile
import time

import jax
import numpy as np

from lineage_jax.config import load_config
from lineage_jax.train.setup import build
from lineage_jax.train.step import make_loss_fn


def part_of(op_name: str) -> tuple[str, str]:
    """'jit(f)/transpose(jvp(GPT))/blocks_2/mlp/fc/dot_general' -> ('bwd', 'mlp/fc')."""
    direction = "bwd" if "transpose(" in op_name else "fwd"
    path = [p for p in op_name.split("/") if not p.startswith(("jit(", "jvp(", "transpose("))]
    path = [p for p in path if not re.fullmatch(r"blocks_\d+", p)]
    head = path[:2] if path and path[0] in ("attn", "mlp") else path[:1]
    return direction, "/".join(head) or "?"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="bench")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    cfg = load_config(args.config, args.overrides)
    setup = build(cfg, devices=jax.devices()[:1], compile_steps=False)
    params = setup.init_state(jax.random.key(0)).params
    tokens = np.random.default_rng(0).integers(0, cfg.model.vocab_size, (cfg.train.batch_size, cfg.model.context + 1))
    batch = setup.put_batch(tokens)
    loss_fn = make_loss_fn(setup.model, dropout=False)
    with setup.context():
        grad = jax.jit(jax.grad(lambda p, b: loss_fn(p, b, None)[0])).lower(params, batch).compile()
    op_names = dict(re.findall(r'^\s*(?:ROOT )?%([\w.\-]+) = .*?op_name="([^"]*)"', grad.as_text(), re.M))
    jax.block_until_ready(grad(params, batch))

    t0 = time.perf_counter()
    for _ in range(args.steps):
        jax.block_until_ready(grad(params, batch))
    wall = (time.perf_counter() - t0) / args.steps
    with tempfile.TemporaryDirectory() as tmp:
        jax.profiler.start_trace(tmp, create_perfetto_trace=True)
        for _ in range(args.steps):
            jax.block_until_ready(grad(params, batch))
        jax.profiler.stop_trace()
        trace = sorted(glob.glob(f"{tmp}/**/*.trace.json.gz", recursive=True))[-1]
        events = json.load(gzip.open(trace))["traceEvents"]

    per_part: collections.Counter = collections.Counter()
    for e in events:
        if e.get("ph") == "X" and e.get("name") in op_names:
            per_part[part_of(op_names[e["name"]])] += e["dur"] / 1e3 / args.steps   # µs -> ms per step
    print(f"forward+backward: {wall * 1e3:.1f} ms wall per step; thunk time {sum(per_part.values()):.1f} ms "
          f"(thunks overlap)")
    for (direction, part), ms in per_part.most_common(args.top):
        print(f"{ms:8.2f} ms  {direction}  {part}")


if __name__ == "__main__":
    main()
