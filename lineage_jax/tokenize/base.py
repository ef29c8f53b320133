"""The tokenizer interface every tokenizer in the project implements.

A tokenizer maps text to integer ids and back. Models only see ``vocab_size``; the data
pipeline uses ``encode`` and ``eos_id`` (the document separator); sampling uses ``decode``; a run records ``fingerprint`` to refuse resuming or
sampling with a different tokenizer.
"""
from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

from lineage_jax.config.errors import ConfigError

ENDOFTEXT = "<|endoftext|>"   # GPT-2's document separator; every tokenizer's default special token


class TokenizerError(ConfigError):
    """A tokenizer name or file that cannot be loaded (unknown name, no tokenizer file, not JSON, …)."""


@runtime_checkable
class Tokenizer(Protocol):
    name: str

    @property
    def vocab_size(self) -> int: ...

    @property
    def eos_id(self) -> int: ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def fingerprint(self) -> str:
        """SHA-256 (hex) of the tokenizer's defining content: equal exactly when the ids mean the same text."""
        ...


def check_text(text) -> str:
    """Tokenizer input must be ``str``; say so in one line otherwise."""
    if isinstance(text, str):
        return text
    raise TypeError(f"tokenizer input must be str, got {type(text).__name__}; decode bytes first (e.g. data.decode('utf-8'))")
