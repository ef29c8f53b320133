"""Training GPT-2's byte-level BPE (``bytelevel.py`` holds the tokenizer itself).

**Training** (``train_bpe``): the argmax-pair loop of Algorithm 1, but incremental. We keep
``count[pair]`` and ``where[pair]`` = the words that contain it; after merging (a, b) only
the words in ``where[(a, b)]`` are rewritten, subtracting their old pairs' counts and adding
their new ones, and a lazy max-heap keyed ``(count, pair)`` yields the next best pair (an
entry whose count has gone stale is re-pushed with its current count). Cost per merge is
proportional to the words touched, not the corpus. Ties (equal counts) go to the pair of
smaller token ids ``(id_a, id_b)``, with ids laid out as special tokens, then the 256 byte
characters in code-point order, then merged tokens in the order created: this is the
``tokenizers`` library's ``BpeTrainer`` layout and order, so the two learn identical merges.
A merge whose count is below ``min_frequency`` ends training. Unlike ``tokenizers``, special
tokens occurring in training text are cut out rather than learned from.
"""
from __future__ import annotations

import heapq
import json
from typing import Iterable, Mapping, Sequence

from lineage_jax.tokenize.base import ENDOFTEXT, check_text
from lineage_jax.tokenize.bytelevel import ALPHABET, GPT2_PATTERN, ByteLevelBPETokenizer

def count_words(texts: Iterable[str], special_tokens: Sequence[str] = (ENDOFTEXT,),
                pattern: str | None = GPT2_PATTERN) -> dict[str, int]:
    """Pre-tokenised word (byte-table string) → count, special tokens cut out."""
    splitter = ByteLevelBPETokenizer({}, [], {s: i for i, s in enumerate(special_tokens)}, pattern=pattern)
    counts: dict[str, int] = {}
    for text in texts:
        for segment, added in splitter._split_added(check_text(text)):
            if not added:
                for w in splitter.pre_tokenize(segment):
                    counts[w] = counts.get(w, 0) + 1
    return counts


def _merge_ids(word: list[int], a: int, b: int, new: int) -> list[int]:
    out, i, n = [], 0, len(word)
    while i < n:
        if i + 1 < n and word[i] == a and word[i + 1] == b:
            out.append(new)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return out


def learn_bytelevel_merges(word_counts: Mapping[str, int], vocab_size: int, special_tokens: Sequence[str] = (ENDOFTEXT,),
                           min_frequency: int = 2) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The incremental trainer: (vocab, merges) from word counts (see the module docstring)."""
    tokens: list[str] = [*special_tokens, *ALPHABET]
    ids = {t: i for i, t in enumerate(tokens)}
    words = [[ids[c] for c in w] for w in word_counts]
    freqs = list(word_counts.values())
    count: dict[tuple[int, int], int] = {}
    where: dict[tuple[int, int], set[int]] = {}
    for wi, w in enumerate(words):
        for p in zip(w, w[1:]):
            count[p] = count.get(p, 0) + freqs[wi]
            where.setdefault(p, set()).add(wi)
    heap = [(-c, p) for p, c in count.items()]
    heapq.heapify(heap)
    merges: list[tuple[str, str]] = []
    while len(ids) < vocab_size and heap:
        neg, pair = heapq.heappop(heap)
        current = count.get(pair, 0)
        if -neg != current:                                 # stale: re-push with its true count
            if current > 0:
                heapq.heappush(heap, (-current, pair))
            continue
        if current < 1 or current < min_frequency:
            break
        a, b = pair
        text = tokens[a] + tokens[b]
        new = ids.get(text)
        if new is None:
            new = ids[text] = len(tokens)
            tokens.append(text)
        merges.append((tokens[a], tokens[b]))
        touched: set[tuple[int, int]] = set()
        for wi in sorted(where.pop(pair, ())):
            old = words[wi]
            if len(old) < 2:
                continue
            merged = _merge_ids(old, a, b, new)
            if len(merged) == len(old):
                continue                                    # stale index entry: pair no longer here
            f = freqs[wi]
            for p in zip(old, old[1:]):
                count[p] -= f
            for p in zip(merged, merged[1:]):
                count[p] = count.get(p, 0) + f
                where.setdefault(p, set()).add(wi)
                touched.add(p)
            words[wi] = merged
        count.pop(pair, None)
        for p in touched:                                   # counts that may have grown
            if count.get(p, 0) > 0:
                heapq.heappush(heap, (-count[p], p))
    return ids, merges


def train_bpe(texts: Iterable[str], vocab_size: int, special_tokens: Sequence[str] = (ENDOFTEXT,),
              min_frequency: int = 2, fast: bool = False) -> ByteLevelBPETokenizer:
    """Train a GPT-2-style byte-level BPE. ``vocab_size`` counts specials + 256 bytes + merges.

    ``fast=True`` trains with the ``tokenizers`` library's ``BpeTrainer`` instead (same
    layout, same tie-breaking, so the same merges on a corpus free of special tokens)."""
    if not isinstance(vocab_size, int) or vocab_size < 1:
        raise ValueError(f"vocab_size must be a positive int, got {vocab_size!r}")
    special_tokens = list(special_tokens)
    if fast:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=special_tokens,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
        tok.train_from_iterator((check_text(t) for t in texts), trainer)
        doc = json.loads(tok.to_str())
        merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in doc["model"]["merges"]]
        vocab = {t: i for t, i in doc["model"]["vocab"].items() if t not in special_tokens}
    else:
        ids, merges = learn_bytelevel_merges(count_words(texts, special_tokens), vocab_size, special_tokens, min_frequency)
        vocab = {t: i for t, i in ids.items() if t not in special_tokens}
    added = {t: i for i, t in enumerate(special_tokens)}
    return ByteLevelBPETokenizer(vocab, merges, added)


__all__ = ["train_bpe", "learn_bytelevel_merges", "count_words"]
