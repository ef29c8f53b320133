"""Byte-pair encoding for words: Sennrich, Haddow & Birch 2016, "Neural Machine Translation of
Rare Words with Subword Units" (ACL), Section 3.2 and Algorithm 1.

Each word is a sequence of characters followed by the end-of-word symbol ``</w>`` (so a
merge can learn that a suffix ends a word: ``est</w>`` differs from ``est`` inside a word).
Learning repeats, ``num_merges`` times (Algorithm 1):

    count(a, b) = Σ_w  freq(w) · #{i : w_i = a, w_{i+1} = b}      (pairs weighted by word frequency)
    (a*, b*)    = argmax_{(a, b)} count(a, b)                       (the most frequent pair)
    every occurrence of ``a* b*`` in every word becomes the new symbol ``a*b*``

The vocabulary grows by one symbol per merge (the paper's one hyperparameter). Applying the
merges to a word (the paper: "apply the merge operations in the order they were learned")
replays the same rewrites, so a training word is segmented exactly as learning left it.

Deterministic tie-breaking (the paper's Python takes ``max`` over a dict, i.e. the *first*
pair counted among equals): pairs are counted by scanning the words in the order given and
each word left to right, and among pairs with the maximal count the one first seen in that
scan wins. With the paper's toy vocabulary this reproduces what its Algorithm 1 prints.
Occurrences of a pair are merged left to right without overlap (``a a a`` → ``aa a``), as the
paper's regular-expression substitution does.

This module recounts all pairs after every merge (as the paper does); the incremental
trainer is in ``bytelevel.py``.
"""
from __future__ import annotations

from typing import Mapping, Sequence

EOW = "</w>"


def word_symbols(word: str) -> tuple[str, ...]:
    """``'low'`` → ``('l', 'o', 'w', '</w>')``; a pre-split ``'l o w </w>'`` is kept as given."""
    if not isinstance(word, str):
        raise TypeError(f"word must be str, got {type(word).__name__}")
    if " " in word:
        return tuple(word.split())
    return tuple(word) + (EOW,)


def pair_counts(vocab: Mapping[tuple[str, ...], int]) -> dict[tuple[str, str], int]:
    """count(a, b) weighted by word frequency; the dict's order is first-seen order."""
    counts: dict[tuple[str, str], int] = {}
    for symbols, freq in vocab.items():
        for pair in zip(symbols, symbols[1:]):
            counts[pair] = counts.get(pair, 0) + freq
    return counts


def merge_word(symbols: Sequence[str], pair: tuple[str, str]) -> tuple[str, ...]:
    """Replace each occurrence of ``pair`` (left to right, non-overlapping) by one symbol."""
    a, b = pair
    out, i, n = [], 0, len(symbols)
    while i < n:
        if i + 1 < n and symbols[i] == a and symbols[i + 1] == b:
            out.append(a + b)
            i += 2
        else:
            out.append(symbols[i])
            i += 1
    return tuple(out)


def learn_merges(word_freqs: Mapping[str, int], num_merges: int) -> list[tuple[str, str]]:
    """Algorithm 1. ``word_freqs`` maps a word (``'low'``, or pre-split ``'l o w </w>'``) to its
    count. Stops early when no pair is left (every word is one symbol)."""
    if not isinstance(num_merges, int) or num_merges < 0:
        raise ValueError(f"num_merges must be a non-negative int, got {num_merges!r}")
    vocab: dict[tuple[str, ...], int] = {}
    for word, freq in word_freqs.items():
        symbols = word_symbols(word)
        vocab[symbols] = vocab.get(symbols, 0) + int(freq)
    merges: list[tuple[str, str]] = []
    for _ in range(num_merges):
        counts = pair_counts(vocab)
        if not counts:
            break
        best = max(counts, key=counts.__getitem__)          # first-seen among ties
        merges.append(best)
        vocab = {merge_word(s, best): f for s, f in vocab.items()}
    return merges


def apply_merges(word: str, merges: Sequence[tuple[str, str]]) -> list[str]:
    """Segment one word: characters + ``</w>``, then every merge in the order learned."""
    symbols = word_symbols(word)
    for pair in merges:
        if len(symbols) < 2:
            break
        symbols = merge_word(symbols, pair)
    return list(symbols)


__all__ = ["EOW", "learn_merges", "apply_merges", "pair_counts", "merge_word", "word_symbols"]
