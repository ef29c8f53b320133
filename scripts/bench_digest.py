"""Checkpoint digest time, old vs new, for a ~100 MB state sharded over 8 CPU devices (issue 16).

old: ``checkpoint.sha256_digest`` (the whole state copied to the host, SHA-256 of its bytes);
new: ``runs.digest.digest`` with ``on="host"`` (numpy per shard, what CPU devices use) and
``on="device"`` (jit on the devices, what accelerators use; its first call compiles, reported apart).

    PYTHONPATH=. python scripts/bench_digest.py [--mb 100] [--repeats 3]
"""
import argparse
import os
import statistics
import time

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P  # noqa: E402

from lineage_jax.runs import checkpoint as ckpt, digest as D  # noqa: E402


def state(mb: int):
    """A transformer-like state: params and two Adam moments (each a third), FSDP over 8 devices."""
    mesh = Mesh(np.array(jax.devices()), ("fsdp",))
    rng = np.random.default_rng(0)
    rows = mb * 2**20 // 4 // 3 // 1024 // 8 * 8             # 1024-wide float32 matrices, a third each
    def put(shape):
        return jax.device_put(rng.normal(size=shape).astype(np.float32), NamedSharding(mesh, P("fsdp")))
    params = {"emb": put((rows // 2, 1024)), "mlp": put((rows - rows // 2, 1024))}
    return {"params": params, "opt_state": ({"mu": jax.tree.map(put, {k: v.shape for k, v in params.items()},
                                                                  is_leaf=lambda x: isinstance(x, tuple)),
                                             "nu": jax.tree.map(put, {k: v.shape for k, v in params.items()},
                                                                  is_leaf=lambda x: isinstance(x, tuple))},)}


def timed(fn, repeats):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    s = state(args.mb)
    size = sum(x.nbytes for x in jax.tree.leaves(s)) / 2**20
    print(f"state: {size:.0f} MiB in {len(jax.tree.leaves(s))} leaves over {len(jax.devices())} CPU devices, "
          f"{jax.devices()[0].device_kind}; median of {args.repeats}")
    t = time.perf_counter()
    D.digest(s, on="device")
    print(f"new, on=device, first call (compiles): {time.perf_counter() - t:.2f} s")
    for name, fn in (("old sha256 of the host copy", lambda: ckpt.sha256_digest(s)),
                     ("new, on=host (numpy per shard)", lambda: D.digest(s, on="host")),
                     ("new, on=device (jit, compiled)", lambda: D.digest(s, on="device"))):
        print(f"{name}: {timed(fn, args.repeats):.2f} s")
    assert D.digest(s, on="host") == D.digest(s, on="device")


if __name__ == "__main__":
    main()
