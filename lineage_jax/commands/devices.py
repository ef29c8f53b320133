"""``--devices N``: emulate N CPU devices, the one way every command does it (before JAX starts)."""
from __future__ import annotations

import os

from lineage_jax.config import ConfigError


def init_devices(n: int | None) -> None:
    """Emulate ``n`` CPU devices; must run before JAX initialises its backends."""
    if n is None:
        return
    if n < 1:
        raise ConfigError(f"--devices={n}: must be a positive integer")
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "xla_force_host_platform_device_count" not in f]
    os.environ["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={n}"])
    import jax
    jax.config.update("jax_num_cpu_devices", n)
    if jax.default_backend() == "cpu" and jax.device_count() != n:
        raise ConfigError(f"--devices={n}: JAX already initialised with {jax.device_count()} devices")
