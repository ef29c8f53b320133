"""The errors a user can fix, and the helpers their messages share.

``UserError`` is the one base: raised at the source with a one-line message (what is wrong,
what is allowed), printed by the CLI as ``error: …`` with exit code 2. Anything else is a bug
and stays a traceback. Each package's own kind (``CheckpointError``, ``SamplingError``, …)
subclasses it, and also the builtin it always was (``ValueError``, ``FileNotFoundError``,
``ImportError`` for ``MissingPackageError``).
"""
from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix, stated in one line."""


class ConfigError(UserError, ValueError):
    """A config problem, stated in one line: the key, the bad value, what is allowed."""


class MissingFileError(UserError, FileNotFoundError):
    """A path the user named (a text file, a dataset, a run directory) that is not there."""


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


class MissingPackageError(UserError, ImportError):
    """An optional package a feature needs is not installed; the message says what to install."""
