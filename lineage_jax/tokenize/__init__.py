"""Tokenizers behind one interface (``Tokenizer``); ``get_tokenizer`` picks one by config name."""
from lineage_jax.tokenize.base import Tokenizer, check_text
from lineage_jax.tokenize.byte import ByteTokenizer


def get_tokenizer(spec: str) -> Tokenizer:
    """``byte`` is the default. Trained tokenizers (a directory) plug in here."""
    if spec == "byte":
        return ByteTokenizer()
    raise ValueError(f"data.tokenizer='{spec}': allowed 'byte' (trained BPE tokenizer directories come with the tokenization lineage)")


__all__ = ["Tokenizer", "ByteTokenizer", "get_tokenizer", "check_text"]
