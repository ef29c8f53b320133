"""A word-level vocabulary for CLIP's text tower, built from the captions (and prompt templates).

Why words and not the project's byte tokenizer: the captions here are a ten-word language ("a
{size} {colour} {shape}"), and composition happens over words. A word per token keeps a caption at
5 tokens (a byte tokenizer needs ~20), so a two-layer text Transformer learns in seconds on two CPU
cores and ``--quick`` stays under its budget. Any text can still be scored: a word outside the
vocabulary becomes ``<unk>`` (``unknown_words`` names them so a command can say so).

It follows the project's ``Tokenizer`` interface (``name``, ``vocab_size``, ``eos_id``, ``encode``,
``decode``, ``fingerprint``), so a run directory records it as it records any tokenizer. ``encode``
appends ``<eos>``; the text tower reads the feature at the first ``<eos>`` (CLIP's EOT pooling),
and under a causal mask the ``<pad>`` after it cannot change that feature.
"""
from __future__ import annotations

import hashlib
import json
import re
from typing import Iterable, Sequence

import numpy as np

from lineage_jax.tokenize.base import check_text

PAD, EOS, UNK = "<pad>", "<eos>", "<unk>"
SPECIALS = (PAD, EOS, UNK)
_WORD = re.compile(r"[a-z0-9]+")


def words(text: str) -> list[str]:
    """Lower-cased runs of letters and digits: "A Red-Circle." -> ["a", "red", "circle"]."""
    return _WORD.findall(check_text(text).lower())


class WordVocab:
    """ids 0, 1, 2 are <pad>, <eos>, <unk>; then the words in sorted order."""
    name = "words"

    def __init__(self, vocab: Sequence[str]):
        vocab = list(vocab)
        if tuple(vocab[:3]) != SPECIALS or len(set(vocab)) != len(vocab):
            raise ValueError(f"a word vocabulary starts with {SPECIALS} and has no duplicates")
        self.vocab = vocab
        self.ids = {w: i for i, w in enumerate(vocab)}

    @classmethod
    def build(cls, texts: Iterable[str]) -> "WordVocab":
        return cls(list(SPECIALS) + sorted({w for t in texts for w in words(t)} - set(SPECIALS)))

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    @property
    def pad_id(self) -> int:
        return 0

    @property
    def eos_id(self) -> int:
        return 1

    @property
    def unk_id(self) -> int:
        return 2

    def encode(self, text: str) -> list[int]:
        """Word ids followed by <eos>."""
        return [self.ids.get(w, self.unk_id) for w in words(text)] + [self.eos_id]

    def decode(self, ids: Sequence[int]) -> str:
        out = []
        for i in ids:
            if int(i) == self.eos_id:
                break
            if int(i) != self.pad_id:
                out.append(self.vocab[int(i)])
        return " ".join(out)

    def unknown_words(self, text: str) -> list[str]:
        return [w for w in words(text) if w not in self.ids]

    def to_json(self) -> str:
        return json.dumps({"type": self.name, "vocab": self.vocab})

    @classmethod
    def from_json(cls, data: str) -> "WordVocab":
        return cls(json.loads(data)["vocab"])

    def fingerprint(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()

    def batch(self, texts: Sequence[str], context: int) -> np.ndarray:
        """[N, context] int32: each text's ids and <eos>, padded with <pad>; a text whose words and <eos>
        do not fit in ``context`` is a ValueError naming it (truncating would drop the <eos> it is pooled at)."""
        out = np.full((len(texts), context), self.pad_id, np.int32)
        for n, t in enumerate(texts):
            ids = self.encode(t)
            if len(ids) > context:
                raise ValueError(f"text {t!r} has {len(ids) - 1} words; the text tower reads at most {context - 1}")
            out[n, :len(ids)] = ids
        return out
