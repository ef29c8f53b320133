"""Byte-level tokenizer: the 256 UTF-8 byte values plus special tokens after them.

The simplest open-vocabulary tokenizer (as in ByT5, Xue et al. 2022): no out-of-vocabulary
text, no training. ``decode(encode(s)) == s`` for every Python string, lone surrogates included.
"""
from __future__ import annotations

import hashlib
import json
from typing import Sequence

from lineage_jax.tokenize.base import ENDOFTEXT, check_text


class ByteTokenizer:
    name = "byte"

    def __init__(self, specials: Sequence[str] = (ENDOFTEXT,)):
        self.specials = tuple(specials)
        self.special_ids = {tok: 256 + i for i, tok in enumerate(self.specials)}

    @property
    def vocab_size(self) -> int:
        return 256 + len(self.specials)

    def fingerprint(self) -> str:
        """SHA-256 of what decides the ids: the byte table is fixed, so only the special tokens (a
        constant for the default ``byte``)."""
        return hashlib.sha256(json.dumps(["byte", list(self.specials)]).encode("utf-8")).hexdigest()

    @property
    def eos_id(self) -> int:
        return self.special_ids[ENDOFTEXT]

    def encode(self, text: str) -> list[int]:
        """Special-token strings in ``text`` are encoded as their bytes, never as specials."""
        return list(check_text(text).encode("utf-8", errors="surrogatepass"))

    def decode(self, ids: Sequence[int]) -> str:
        """Bytes -> text; special ids are rendered by name; invalid UTF-8 becomes U+FFFD."""
        out, run = [], bytearray()
        for i in ids:
            i = int(i)
            if 0 <= i < 256:
                run.append(i)
                continue
            out.append(_decode_bytes(run))
            run = bytearray()
            if i - 256 < len(self.specials) and i >= 256:
                out.append(self.specials[i - 256])
            else:
                raise ValueError(f"token id {i} is outside the byte tokenizer's vocabulary [0, {self.vocab_size})")
        out.append(_decode_bytes(run))
        return "".join(out)


def _decode_bytes(b: bytes) -> str:
    try:
        return bytes(b).decode("utf-8", errors="surrogatepass")
    except UnicodeDecodeError:
        return bytes(b).decode("utf-8", errors="replace")
