"""Tokenizers behind one interface (``Tokenizer``); ``get_tokenizer`` picks one by config name.

``byte`` (the default) needs no training. A trained tokenizer is a path: a directory (or
file) holding a byte-level BPE ``tokenizer.json`` (``bytelevel.py``; written by ``save``
or by the ``tokenizers`` library) or a SentencePiece ``.model`` (``spm.py``).
"""
import os

from lineage_jax.tokenize.base import ENDOFTEXT, Tokenizer, TokenizerError, check_text
from lineage_jax.tokenize.byte import ByteTokenizer
from lineage_jax.tokenize.bpe_train import train_bpe
from lineage_jax.tokenize.bytelevel import load_tokenizer_json
from lineage_jax.tokenize.spm import SentencePieceTokenizer


def load(path: str) -> Tokenizer:
    """A trained tokenizer from ``path``: ``tokenizer.json`` (or a directory with one) → byte-level
    BPE; a ``.model`` file (or a directory with one) → SentencePiece."""
    if os.path.isdir(path):
        if os.path.exists(os.path.join(path, "tokenizer.json")):
            path = os.path.join(path, "tokenizer.json")
        elif any(f.endswith(".model") for f in os.listdir(path)):
            return SentencePieceTokenizer.from_file(path)
        else:
            raise TokenizerError(f"{path}: no tokenizer.json or SentencePiece .model file in this directory")
    if not os.path.isfile(path):
        raise TokenizerError(f"{path}: no such tokenizer file or directory")
    if path.endswith(".model"):
        return SentencePieceTokenizer.from_file(path)
    return load_tokenizer_json(path)


def get_tokenizer(spec: str) -> Tokenizer:
    """``byte`` is the default; a path to a trained tokenizer (see ``load``) loads it. A name or file that
    cannot be loaded is a one-line ``TokenizerError`` naming ``data.tokenizer``."""
    if spec == "byte":
        return ByteTokenizer()
    if isinstance(spec, str) and os.path.exists(spec):
        try:
            return load(spec)
        except TokenizerError as e:
            raise TokenizerError(f"data.tokenizer: {e}") from None
    raise TokenizerError(f"data.tokenizer='{spec}': allowed 'byte' or a path to a trained tokenizer "
                         f"(a directory with tokenizer.json or a SentencePiece .model)")


__all__ = ["ENDOFTEXT", "Tokenizer", "TokenizerError", "ByteTokenizer", "get_tokenizer", "load", "check_text", "train_bpe"]
