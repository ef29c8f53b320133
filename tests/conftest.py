"""Tests run on 8 emulated CPU devices: set before JAX initialises."""
import os

os.environ["XLA_FLAGS"] = " ".join(
    [f for f in os.environ.get("XLA_FLAGS", "").split() if "device_count" not in f]
    + ["--xla_force_host_platform_device_count=8"])
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TFDS_DATA_DIR", os.path.join(os.path.dirname(__file__), "..", ".pytest_cache", "tfds"))

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)

# Many tests compile the same program through different closures (a fresh train step per
# strategy, the one-device reference each sharded case compares against). XLA's persistent
# compilation cache keys on the program itself, so those repeats load instead of compiling:
# it cut the CPU time of tests/parallel by a quarter (6.0 vs 8.0 CPU-minutes). The cache
# lives beside the TFDS test data; LINEAGE_TEST_JAX_CACHE=off turns it off, or names another
# directory. Two pytest workers may write one entry at once: a reader that meets a half-written
# entry gets a warning from JAX and compiles instead, so a race costs time, never a wrong program.
_cache = os.environ.get("LINEAGE_TEST_JAX_CACHE",
                        os.path.join(os.path.dirname(__file__), "..", ".pytest_cache", "jax"))
if _cache != "off":
    jax.config.update("jax_compilation_cache_dir", os.path.abspath(_cache))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
