"""Tests run on 8 emulated CPU devices: set before JAX initialises."""
import os

os.environ["XLA_FLAGS"] = " ".join(
    [f for f in os.environ.get("XLA_FLAGS", "").split() if "device_count" not in f]
    + ["--xla_force_host_platform_device_count=8"])
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TFDS_DATA_DIR", os.path.join(os.path.dirname(__file__), "..", ".pytest_cache", "tfds"))

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)
