"""Document quality heuristics of MassiveText (Gopher; Rae et al. 2021, App. A.1.1–A.1.2) and
C4 (Raffel et al. 2020, §2.2), each threshold a field of ``QualityConfig``.

``c4_lines(doc)`` applies C4's one line-level rule (drop the lines that do not end in terminal
punctuation); ``clean_document(doc, cfg)`` is the text the pipeline keeps; ``quality_reasons(doc,
cfg)`` names every document rule the cleaned text breaks (empty: keep it);
``quality_filter(docs, cfg)`` keeps the clean ones. Words are whitespace-separated tokens;
lines are non-empty lines; paragraphs are blocks separated by blank lines.

    rule (reason string)          paper                 remove when
    words_too_few / _too_many     Gopher                word count ∉ [50, 100 000]
    mean_word_length              Gopher                mean word length ∉ [3, 10]
    symbol_to_word_ratio          Gopher                (# + … count) / words > 0.1
    bullet_lines                  Gopher                > 90 % of lines start with a bullet point
                                                        (•, or - * – — followed by a space: not **bold**)
    ellipsis_lines                Gopher                > 30 % of lines end with an ellipsis
    alphabetic_words              Gopher                < 80 % of words contain a letter
    stop_words                    Gopher                < 2 of the, be, to, of, and, that, have, with
    punctuation_lines             C4                    no line ends in . ! ? or a closing quote (C4
                                                        drops each such line; a document left empty goes)
    lorem_ipsum                   C4                    "lorem ipsum" occurs
    duplicate_lines / _chars      Gopher Table A1       duplicate lines > 30 % (by count) / > 20 % (chars)
    duplicate_paragraphs / _chars Gopher Table A1       the same for paragraphs
    top_{2,3,4}gram               Gopher Table A1       the most frequent n-gram's occurrences cover
                                                        > 20 / 18 / 16 % of the word characters
    dup_{5..10}gram               Gopher Table A1       characters of words inside duplicated n-grams
                                                        > 15 / 14 / 13 / 12 / 11 / 10 %

C4's punctuation rule is about lines, as the paper states it: a heading or a caption line is
removed and the rest of the document stays (``c4_line_filter=False`` keeps every line); the
document is removed only when no line would stay. Gopher's document rules judge the document as
read, as in the paper, where they run on whole pages. Character fractions count the characters of words (no spaces), as in
Gopher: for the top n-gram, ``count · len(ngram chars) / total word chars``; for duplicated
n-grams, each word covered by some n-gram that occurs more than once counts once.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Sequence

_BULLET = re.compile(r"[•●▪‣◦]|[-*–—+](?=\s)")   # a bullet point, not Markdown **bold** or a -flag
_ELLIPSES = ("...", "…")
_END_PUNCT = (".", "!", "?", '"', "'", "”", "’")


@dataclass(frozen=True)
class QualityConfig:
    min_words: int = 50
    max_words: int = 100_000
    min_mean_word_length: float = 3.0
    max_mean_word_length: float = 10.0
    max_symbol_to_word_ratio: float = 0.1
    max_bullet_line_frac: float = 0.9
    max_ellipsis_line_frac: float = 0.3
    min_alpha_word_frac: float = 0.8
    stop_words: tuple[str, ...] = ("the", "be", "to", "of", "and", "that", "have", "with")
    min_stop_words: int = 2
    c4_line_filter: bool = True
    reject_lorem_ipsum: bool = True
    max_dup_line_frac: float = 0.3
    max_dup_line_char_frac: float = 0.2
    max_dup_para_frac: float = 0.3
    max_dup_para_char_frac: float = 0.2
    max_top_ngram_char_frac: dict[int, float] = field(default_factory=lambda: {2: 0.20, 3: 0.18, 4: 0.16})
    max_dup_ngram_char_frac: dict[int, float] = field(
        default_factory=lambda: {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10})

    def __hash__(self):  # the dict fields are configuration, not state: hash by value
        return hash(tuple((k, tuple(sorted(v.items())) if isinstance(v, dict) else v)
                          for k, v in self.__dict__.items()))


def _dup_fracs(items: list[str]) -> tuple[float, float]:
    """(fraction of items that repeat an earlier one, fraction of their characters)."""
    if not items:
        return 0.0, 0.0
    seen: set[str] = set()
    dup_n = dup_chars = 0
    for it in items:
        if it in seen:
            dup_n += 1
            dup_chars += len(it)
        seen.add(it)
    return dup_n / len(items), dup_chars / max(1, sum(map(len, items)))


def top_ngram_char_frac(words: list[str], n: int) -> float:
    """Characters covered by the most frequent word n-gram's occurrences / all word characters."""
    total = sum(map(len, words))
    if len(words) < n or total == 0:
        return 0.0
    counts = Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))
    gram, count = counts.most_common(1)[0]
    return 0.0 if count < 2 else count * sum(map(len, gram)) / total


def dup_ngram_char_frac(words: list[str], n: int) -> float:
    """Characters of words inside some n-gram that occurs more than once / all word characters."""
    total = sum(map(len, words))
    if len(words) < n or total == 0:
        return 0.0
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    counts = Counter(grams)
    covered = [False] * len(words)
    for i, g in enumerate(grams):
        if counts[g] > 1:
            covered[i:i + n] = [True] * n
    return sum(len(w) for w, c in zip(words, covered) if c) / total


def c4_lines(doc: str) -> str:
    """``doc`` without the lines that do not end in terminal punctuation (Raffel et al. 2020, §2.2:
    "we only retained lines that ended in a terminal punctuation mark"); blank lines stay, so
    paragraphs stay apart."""
    return "\n".join(ln for ln in doc.splitlines() if not ln.strip() or ln.rstrip().endswith(_END_PUNCT)).strip("\n")


def clean_document(doc: str, cfg: QualityConfig = QualityConfig()) -> str:
    """The text the pipeline keeps of ``doc``: C4's line filter when ``cfg.c4_line_filter``."""
    return c4_lines(doc) if cfg.c4_line_filter else doc


def quality_reasons(doc: str, cfg: QualityConfig = QualityConfig()) -> list[str]:
    """The names of the document rules ``doc`` breaks (see the module table); empty means keep."""
    reasons = []
    if cfg.c4_line_filter and doc.strip() and not c4_lines(doc).strip():
        reasons.append("punctuation_lines")
    words = doc.split()
    lines = [ln.strip() for ln in doc.splitlines() if ln.strip()]
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", doc) if p.strip()]
    n = len(words)
    if n < cfg.min_words:
        reasons.append("words_too_few")
    if n > cfg.max_words:
        reasons.append("words_too_many")
    if n:
        mean_len = sum(map(len, words)) / n
        if not cfg.min_mean_word_length <= mean_len <= cfg.max_mean_word_length:
            reasons.append("mean_word_length")
        symbols = doc.count("#") + doc.count("...") + doc.count("…")
        if symbols / n > cfg.max_symbol_to_word_ratio:
            reasons.append("symbol_to_word_ratio")
        if sum(any(c.isalpha() for c in w) for w in words) / n < cfg.min_alpha_word_frac:
            reasons.append("alphabetic_words")
        lowered = {w.strip(".,;:!?\"'()").lower() for w in words}
        if sum(s in lowered for s in cfg.stop_words) < cfg.min_stop_words:
            reasons.append("stop_words")
    if lines:
        if sum(bool(_BULLET.match(ln)) for ln in lines) / len(lines) > cfg.max_bullet_line_frac:
            reasons.append("bullet_lines")
        if sum(ln.endswith(_ELLIPSES) for ln in lines) / len(lines) > cfg.max_ellipsis_line_frac:
            reasons.append("ellipsis_lines")
    if cfg.reject_lorem_ipsum and "lorem ipsum" in doc.lower():
        reasons.append("lorem_ipsum")
    line_frac, line_chars = _dup_fracs(lines)
    if line_frac > cfg.max_dup_line_frac:
        reasons.append("duplicate_lines")
    if line_chars > cfg.max_dup_line_char_frac:
        reasons.append("duplicate_line_chars")
    para_frac, para_chars = _dup_fracs(paragraphs)
    if para_frac > cfg.max_dup_para_frac:
        reasons.append("duplicate_paragraphs")
    if para_chars > cfg.max_dup_para_char_frac:
        reasons.append("duplicate_paragraph_chars")
    for k, limit in sorted(cfg.max_top_ngram_char_frac.items()):
        if top_ngram_char_frac(words, k) > limit:
            reasons.append(f"top_{k}gram")
    for k, limit in sorted(cfg.max_dup_ngram_char_frac.items()):
        if dup_ngram_char_frac(words, k) > limit:
            reasons.append(f"dup_{k}gram")
    return reasons


def quality_filter(docs: Sequence[str], cfg: QualityConfig = QualityConfig()) -> tuple[list[int], dict[int, list[str]]]:
    """(indices of the documents kept, in order; {index: reasons} of those removed)."""
    kept, removed = [], {}
    for i, doc in enumerate(docs):
        reasons = quality_reasons(doc, cfg)
        if reasons:
            removed[i] = reasons
        else:
            kept.append(i)
    return kept, removed
