"""The one error a config raises, and the helper its messages share."""
from __future__ import annotations


class ConfigError(ValueError):
    """A config problem, stated in one line: the key, the bad value, what is allowed."""


def divisors(n: int) -> str:
    """``1, 2, 4, 8`` for 8: what a message offers when a value must divide ``n``."""
    return ", ".join(str(d) for d in range(1, n + 1) if n % d == 0)


def positive(values: dict[str, int]) -> None:
    """ConfigError naming the first ``key=value`` that is not a positive integer."""
    for key, val in values.items():
        if val < 1:
            raise ConfigError(f"{key}={val}: must be a positive integer")


def one_of(key: str, value: str, allowed) -> None:
    """ConfigError unless ``value`` is one of ``allowed``."""
    if value not in allowed:
        raise ConfigError(f"{key}='{value}': allowed {', '.join(allowed)}")
