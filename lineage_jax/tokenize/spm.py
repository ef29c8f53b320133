"""SentencePiece (Kudo & Richardson 2018) behind the ``Tokenizer`` protocol: the unigram
language model (Kudo 2018, "Subword Regularization") and BPE, trained on raw text.

SentencePiece treats the input as a raw character stream: whitespace is an ordinary symbol
(``▁``, U+2581) so no language-specific pre-tokeniser is needed and decoding is lossless.
Unigram picks the segmentation x* = argmax_x Σ_i log p(x_i) (Viterbi) under piece
probabilities p learned by EM, pruning the pieces whose removal costs the likelihood least
until ``vocab_size`` remain; BPE merges the most frequent pair as in Sennrich et al. 2016.

This module is a thin, tested wrapper over the ``sentencepiece`` library (no teaching
implementation here). Defaults chosen so that ``decode(encode(s)) == s``: no normalisation
(``identity`` instead of NFKC), whitespace kept as is, and ``byte_fallback`` so a character
unseen in training becomes its UTF-8 bytes instead of ``<unk>``. Lone surrogates cannot be
UTF-8 and are refused with a ``ValueError``. ``eos_id`` is the model's ``</s>``.
"""
from __future__ import annotations

import hashlib
import io
import os
from typing import Iterable, Sequence

from lineage_jax.config.errors import MissingPackageError
from lineage_jax.runs import atomic
from lineage_jax.tokenize.base import ENDOFTEXT, TokenizerError, check_text


def _spm():
    try:
        import sentencepiece
    except ImportError:
        raise MissingPackageError("SentencePiece tokenizers need the 'sentencepiece' package, which is not "
                                  "installed: pip install sentencepiece (or pip install -e '.[ref]')") from None
    return sentencepiece


class SentencePieceTokenizer:
    def __init__(self, model_proto: bytes, where: str = "SentencePiece model"):
        self.model_proto = bytes(model_proto)
        try:
            self.sp = _spm().SentencePieceProcessor(model_proto=self.model_proto)
        except RuntimeError as e:     # the library's parse error: a damaged or foreign .model file
            raise TokenizerError(f"{where}: not a SentencePiece model ({str(e).splitlines()[0][:120]})") from None
        self.name = "spm-" + hashlib.sha256(self.model_proto).hexdigest()[:12]     # data caches key on it

    @classmethod
    def from_file(cls, path: str) -> "SentencePieceTokenizer":
        """A ``.model`` file, or a directory holding exactly one."""
        if os.path.isdir(path):
            found = sorted(f for f in os.listdir(path) if f.endswith(".model"))
            if len(found) != 1:
                raise TokenizerError(f"{path}: expected one SentencePiece .model file, found {found or 'none'}")
            path = os.path.join(path, found[0])
        with open(path, "rb") as f:
            return cls(f.read(), where=path)

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    def fingerprint(self) -> str:
        """SHA-256 of the model file's bytes (everything that decides the ids)."""
        return hashlib.sha256(self.model_proto).hexdigest()

    @property
    def eos_id(self) -> int:
        i = self.sp.eos_id()
        if i < 0:
            raise ValueError("this SentencePiece model has no eos piece (it was trained with eos_id=-1)")
        return i

    def encode(self, text: str) -> list[int]:
        text = check_text(text)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ValueError(f"SentencePiece input must be valid Unicode: {e.reason} at index {e.start}") from None
        return list(self.sp.encode(text))

    def decode(self, ids: Sequence[int]) -> str:
        ids = [int(i) for i in ids]
        n = self.vocab_size
        for i in ids:
            if not 0 <= i < n:
                raise ValueError(f"token id {i} is outside the SentencePiece vocabulary [0, {n})")
        return self.sp.decode(ids)

    def save(self, path: str) -> str:
        """Write ``path/spm.model`` (or ``path`` itself when it ends in ``.model``)."""
        if not path.endswith(".model"):
            os.makedirs(path, exist_ok=True)
            path = os.path.join(path, "spm.model")
        atomic.write_bytes(path, self.model_proto)
        return path


def train_sentencepiece(texts: Iterable[str], vocab_size: int, model_type: str = "unigram",
                        special_tokens: Sequence[str] = (ENDOFTEXT,), byte_fallback: bool = True,
                        **options) -> SentencePieceTokenizer:
    """Train in memory (``model_writer``); ``special_tokens`` become user-defined pieces that
    are never split. ``options`` go to ``SentencePieceTrainer.train`` as they are."""
    if model_type not in ("unigram", "bpe"):
        raise ValueError(f"model_type={model_type!r}: allowed 'unigram', 'bpe'")
    spm = _spm()
    texts = [check_text(t) for t in texts]
    lines = [line for t in texts for line in t.split("\n") if line]      # SentencePiece reads sentences
    settings = dict(vocab_size=vocab_size, model_type=model_type, normalization_rule_name="identity",
                    remove_extra_whitespaces=False, byte_fallback=byte_fallback, hard_vocab_limit=False,
                    user_defined_symbols=list(special_tokens), minloglevel=2, num_threads=1)
    settings.update(options)
    out = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=out, **settings)
    return SentencePieceTokenizer(out.getvalue())


__all__ = ["SentencePieceTokenizer", "train_sentencepiece"]
