"""Tests run on 8 emulated CPU devices: set before JAX initialises.

Everything here is set through the environment, so the subprocesses some tests start (the CLI, the
multi-process launcher, kill-and-resume loops) inherit the same devices, cache and compiler settings.
"""
import os

# Tests compile hundreds of tiny programs and run each for milliseconds, so compile time is most of
# the suite. LLVM's backend optimisation level 0 cut the suite's CPU time by about a third
# (compile-bound test_strategy_equals_one_device[DP]: 31.7 -> 20.4 CPU-s; two lesson test files:
# 38.0 -> 26.0 CPU-s) and does not change what a program computes: XLA's HLO passes, buffer
# assignment (what memory_analysis reports) and collectives are untouched, and LLVM may not
# reassociate floating point at any level without fast-math, which XLA keeps off. Users' runs keep
# XLA's default level. LINEAGE_TEST_XLA_OPT=default keeps the default here too.
_flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "device_count" not in f]
if os.environ.get("LINEAGE_TEST_XLA_OPT", "0") != "default" and not any(
        f.startswith("--xla_backend_optimization_level") for f in _flags):
    _flags.append("--xla_backend_optimization_level=0")
os.environ["XLA_FLAGS"] = " ".join(_flags + ["--xla_force_host_platform_device_count=8"])
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TFDS_DATA_DIR", os.path.join(os.path.dirname(__file__), "..", ".pytest_cache", "tfds"))

# Many tests compile the same program through different closures (a fresh train step per
# strategy, the one-device reference each sharded case compares against, a CLI run and its
# resumed rerun). XLA's persistent compilation cache keys on the program itself (and the flags
# above), so those repeats load instead of compiling: it cut the CPU time of tests/parallel by a
# quarter (6.0 vs 8.0 CPU-minutes). The cache lives beside the TFDS test data;
# LINEAGE_TEST_JAX_CACHE=off turns it off, or names another directory. Two pytest workers may write
# one entry at once: a reader that meets a half-written entry gets a warning from JAX and compiles
# instead, so a race costs time, never a wrong program.
_cache = os.environ.get("LINEAGE_TEST_JAX_CACHE",
                        os.path.join(os.path.dirname(__file__), "..", ".pytest_cache", "jax"))
if _cache != "off":
    os.environ["JAX_COMPILATION_CACHE_DIR"] = os.path.abspath(_cache)
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)
