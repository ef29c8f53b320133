"""Quality heuristics of Gopher (Rae et al. 2021, App. A) and C4 (Raffel et al. 2020, §2.2):
each rule fires on a document built to break it, and none fires on ordinary prose."""
import ast
import collections
import dataclasses
import re
from pathlib import Path

import numpy as np
import pytest

from lineage_jax.data.pipeline.quality import (QualityConfig, c4_lines, clean_document, quality_filter,
                                               quality_reasons)

CFG = QualityConfig()
STOP = ["the", "of", "and", "to", "with", "that"]


def unwrap(doc):
    """A hard-wrapped docstring as one line per paragraph (C4's lines are web paragraphs)."""
    return "\n\n".join(" ".join(p.split()) for p in re.split(r"\n\s*\n", doc) if p.strip())


def prose(n_words, seed=0, words_per_line=12):
    """Sentences of distinct random words and stop words, one sentence per line."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    words = [STOP[i % len(STOP)] if i % 4 == 0 else "".join(rng.choice(letters, rng.integers(3, 9)))
             for i in range(n_words)]
    lines = [" ".join(words[i:i + words_per_line]).capitalize() + "." for i in range(0, n_words, words_per_line)]
    return "\n".join(lines)


GOOD = [prose(120), unwrap(collections.__doc__), unwrap(ast.__doc__),
        ("Python is a programming language that lets you work quickly and integrate systems more effectively. "
         "It is used for web development, data analysis, artificial intelligence and scientific computing, and "
         "its design philosophy emphasises code readability with the use of significant indentation. Its language "
         "constructs and object-oriented approach aim to help programmers write clear, logical code for small and "
         "large-scale projects alike, and a large standard library comes with every installation.")]


@pytest.mark.parametrize("doc", GOOD, ids=["prose", "collections_doc", "ast_doc", "paragraph"])
def test_ordinary_prose_passes(doc):
    assert quality_reasons(doc, CFG) == []


def _bad_docs():
    rng = np.random.default_rng(1)
    base = prose(100, 2)
    lines = base.splitlines()
    return {
        "words_too_few": "The cat sat on the mat with a hat.",
        "words_too_many": (base, dataclasses.replace(CFG, max_words=50)),
        "mean_word_length": " ".join(["to", "of", "be"] + ["".join(rng.choice(list("abcdefgh"), rng.integers(1, 3)))
                                                            for _ in range(80)]) + ".",
        "symbol_to_word_ratio": base + "\n" + " ".join(f"#tag{i}" for i in range(20)) + ".",
        "bullet_lines": "\n".join("• " + ln for ln in lines),
        "ellipsis_lines": "\n".join(ln[:-1] + "..." if i % 2 else ln for i, ln in enumerate(lines)),
        "alphabetic_words": base + "\n" + " ".join(str(x) for x in rng.integers(0, 10**6, 40)) + ".",
        "stop_words": " ".join(w for w in base.split() if w.lower().strip(".") not in CFG.stop_words),
        "punctuation_lines": "\n".join(ln.rstrip(".") for ln in lines),
        "lorem_ipsum": base + "\nLorem ipsum dolor sit amet.",
        "duplicate_lines": "\n".join(lines[:3] + [lines[3]] * 6),
        "duplicate_line_chars": "\n".join(lines + lines[:3]),
        "duplicate_paragraphs": "\n\n".join([base[:200]] + [base[200:]] * 2),
        "duplicate_paragraph_chars": "\n\n".join([base[:400], base[400:450], base[450:500], base[:400]]),
        "top_2gram": base + "\n" + " ".join(["click here"] * 40) + ".",
        "dup_5gram": "\n".join(lines + lines[:2]),
        "dup_10gram": "\n".join(lines + lines[:2]),
    }


@pytest.mark.parametrize("reason", sorted(_bad_docs()))
def test_each_rule_fires_on_a_document_built_to_break_it(reason):
    doc = _bad_docs()[reason]
    doc, cfg = doc if isinstance(doc, tuple) else (doc, CFG)
    assert reason in quality_reasons(doc, cfg)


def test_mean_word_length_too_long_and_lines_ending_in_punctuation():
    long_words = " ".join(["the", "of"] + ["supercalifragilistic"] * 3 + [f"antidisestablishment{i}" for i in range(60)])
    assert "mean_word_length" in quality_reasons(long_words + ".")


def test_quality_filter_keeps_good_in_order():
    docs = [GOOD[0], "too short.", GOOD[3], "Lorem ipsum " + GOOD[0]]
    kept, removed = quality_filter(docs)
    assert kept == [0, 2]
    assert removed[1] == quality_reasons(docs[1]) and "lorem_ipsum" in removed[3]


def test_config_is_frozen_and_hashable():
    with pytest.raises(dataclasses.FrozenInstanceError):
        CFG.min_words = 3
    assert hash(QualityConfig()) == hash(QualityConfig())


CLEAN_DOCS = (Path(__file__).parent / "files" / "clean_docs.md").read_text().split("\n===\n")


def test_clean_documentation_prose_loses_at_most_one_in_thirty():
    """30 documentation pages with headings, **bold** notes and paragraphs: the rules as the papers
    state them (C4 drops unpunctuated *lines*; Gopher's bullets are bullet points) keep them."""
    assert len(CLEAN_DOCS) == 30
    kept, removed = quality_filter(CLEAN_DOCS)
    assert len(removed) <= 1, removed


def test_c4_drops_lines_without_terminal_punctuation_not_the_document():
    doc = "A heading\n\n" + GOOD[3] + "\nA caption without a full stop"
    assert c4_lines(doc) == GOOD[3] and clean_document(doc) == GOOD[3]
    assert quality_reasons(doc) == []
    assert clean_document(doc, dataclasses.replace(CFG, c4_line_filter=False)) == doc
    unpunctuated = "\n".join(ln.rstrip(".") for ln in prose(100, 4).splitlines())
    assert quality_reasons(unpunctuated) == ["punctuation_lines"]


def test_markdown_bold_is_not_a_bullet_point():
    lines = prose(100, 3).splitlines()
    assert "bullet_lines" not in quality_reasons("\n".join(f"**Step {i}:** {ln}" for i, ln in enumerate(lines)))
    for mark in ("- ", "* ", "• ", "•"):
        assert "bullet_lines" in quality_reasons("\n".join(mark + ln for ln in lines)), mark
