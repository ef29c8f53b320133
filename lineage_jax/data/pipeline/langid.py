"""Offline language identification: a multinomial naive Bayes over character 1–3-grams
(Cavnar & Trenkle 1994 for character n-gram profiles; Dunning 1994, "Statistical
Identification of Language", for the Bayesian classifier), trained by this project on
sentences written for it (``scripts/langid_text/``, ``scripts/train_langid.py``) and shipped
as ``langid_model.json`` (counts, no pickle).

Features: the text is casefolded, every non-letter becomes a word break, and each word
``w`` is padded to ``" w "``; its 1-, 2- and 3-grams are counted (word-boundary grams such
as ``" th"`` or ``"en "`` carry much of the signal). For a label ℓ with n-gram counts
c_ℓ(g), total N_ℓ and vocabulary size V (all grams seen in training),

    log P(g | ℓ) = log (c_ℓ(g) + α) − log (N_ℓ + α·V)          (Lidstone smoothing)
    score(ℓ | text) = Σ_g  n(g) · log P(g | ℓ)                  (uniform prior over labels)

and the prediction is the label of highest score. Labels: ``en de fr es it nl pt`` and
``other``, a class trained on sentences of other languages (Swedish, Polish, Finnish,
Turkish, Catalan, …). A text whose letters are mostly not Latin script, or that has no
letters at all, is ``other`` without scoring: every known label is written in Latin script.
"""
from __future__ import annotations

import functools
import json
import math
import unicodedata
from collections import Counter
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

LANGUAGES = ("en", "de", "fr", "es", "it", "nl", "pt")
OTHER = "other"
MODEL_PATH = Path(__file__).with_name("langid_model.json")
MODEL_FORMAT = 1
MAX_CHARS = 20_000          # a document is identified by its first MAX_CHARS characters

# Eight frequent function words per language: the Gopher stop-word rule (quality.py) is
# English-only; ``prepare`` applies it with the list of each document's identified language.
STOP_WORDS: dict[str, tuple[str, ...]] = {
    "en": ("the", "be", "to", "of", "and", "that", "have", "with"),
    "de": ("der", "die", "das", "und", "zu", "ist", "mit", "nicht"),
    "fr": ("le", "la", "les", "et", "de", "que", "est", "pour"),
    "es": ("el", "la", "los", "y", "de", "que", "en", "por"),
    "it": ("il", "la", "di", "e", "che", "per", "non", "con"),
    "nl": ("de", "het", "een", "en", "van", "dat", "is", "niet"),
    "pt": ("o", "a", "os", "de", "que", "e", "do", "em"),
}


def words(text: str) -> list[str]:
    """Casefolded runs of letters (every non-letter is a break)."""
    out, cur = [], []
    for ch in text.casefold():
        if ch.isalpha():
            cur.append(ch)
        elif cur:
            out.append("".join(cur))
            cur = []
    if cur:
        out.append("".join(cur))
    return out


def ngram_counts(text: str, max_n: int = 3, max_chars: int = MAX_CHARS) -> Counter:
    """Counts of the 1..max_n-grams of each word padded as ``" w "`` (the lone padding
    space is not a 1-gram)."""
    counts: Counter = Counter()
    for w in words(text[:max_chars]):
        s = f" {w} "
        for n in range(1, max_n + 1):
            for i in range(len(s) - n + 1):
                g = s[i:i + n]
                if g != " ":
                    counts[g] += 1
    return counts


def latin_fraction(text: str, max_chars: int = MAX_CHARS) -> float:
    """Share of the letters that are Latin script (0.0 when there are none)."""
    letters = [c for c in text[:max_chars] if c.isalpha()]
    if not letters:
        return 0.0
    return sum(unicodedata.name(c, "").startswith("LATIN") for c in letters) / len(letters)


def train(samples: Mapping[str, Sequence[str]], alpha: float = 0.5, max_n: int = 3) -> dict:
    """The model (a JSON-able dict of n-gram counts) from ``{label: [text, …]}``."""
    labels = sorted(samples)
    if not labels or alpha <= 0:
        raise ValueError(f"train: need at least one label and alpha > 0 (got {labels}, alpha={alpha})")
    per_label = {lab: Counter() for lab in labels}
    for lab in labels:
        for text in samples[lab]:
            per_label[lab].update(ngram_counts(text, max_n))
    grams = sorted(set().union(*per_label.values()))
    return {"format": MODEL_FORMAT, "max_n": max_n, "alpha": alpha, "labels": labels,
            "counts": {g: [per_label[lab][g] for lab in labels] for g in grams}}


class LanguageIdentifier:
    """Naive Bayes over the n-gram counts of a ``train`` model (see the module docstring)."""

    def __init__(self, model: Mapping):
        if model.get("format") != MODEL_FORMAT:
            raise ValueError(f"language-ID model format {model.get('format')!r}: expected {MODEL_FORMAT}")
        self.labels: list[str] = list(model["labels"])
        self.max_n, alpha = int(model["max_n"]), float(model["alpha"])
        grams = list(model["counts"])
        self.index = {g: i for i, g in enumerate(grams)}
        counts = np.asarray([model["counts"][g] for g in grams], np.float64).reshape(len(grams), len(self.labels))
        denom = counts.sum(axis=0) + alpha * len(grams)                       # N_ℓ + α·V
        self.log_p = np.log(counts + alpha) - np.log(denom)                   # [G, L]
        self.log_unseen = math.log(alpha) - np.log(denom)                     # [L]

    def scores(self, text: str) -> np.ndarray:
        """Σ_g n(g)·log P(g | ℓ) for each label: float64 [L]."""
        counts = ngram_counts(text, self.max_n)
        rows, seen_n, unseen_n = [], [], 0
        for g, n in counts.items():
            i = self.index.get(g)
            if i is None:
                unseen_n += n
            else:
                rows.append(i)
                seen_n.append(n)
        out = unseen_n * self.log_unseen
        if rows:
            out = out + np.asarray(seen_n, np.float64) @ self.log_p[np.asarray(rows)]
        return out

    def predict(self, text: str, min_latin: float = 0.5) -> str:
        """The label of highest score; ``other`` for text with no letters or mostly non-Latin letters."""
        if latin_fraction(text) < min_latin:
            return OTHER
        return self.labels[int(np.argmax(self.scores(text)))]

    def predict_many(self, texts: Sequence[str]) -> list[str]:
        return [self.predict(t) for t in texts]


@functools.lru_cache(maxsize=1)
def default_identifier() -> LanguageIdentifier:
    """The shipped model (``langid_model.json``, written by ``scripts/train_langid.py``)."""
    with open(MODEL_PATH, encoding="utf-8") as f:
        return LanguageIdentifier(json.load(f))


def parse_languages(spec: str | Sequence[str]) -> tuple[str, ...]:
    """``"en,de"`` (or a sequence) → ``("en", "de")``; ValueError naming an unknown code."""
    items = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    bad = [s for s in items if s not in LANGUAGES and s != OTHER]
    if bad or not items:
        raise ValueError(f"languages={','.join(items) or '(none)'}: allowed a comma-separated subset of "
                         f"{','.join(LANGUAGES)},{OTHER}")
    return tuple(dict.fromkeys(items))


def keep_languages(docs: Sequence[str], languages: Sequence[str], identifier: LanguageIdentifier | None = None,
                   labels: Sequence[str] | None = None) -> tuple[list[int], dict[int, str]]:
    """(indices of the documents whose identified language is in ``languages``, in order;
    {index: identified language} of those removed). ``labels`` reuses earlier predictions."""
    ident = identifier or default_identifier()
    labels = ident.predict_many(docs) if labels is None else labels
    keep = set(languages)
    kept = [i for i, lab in enumerate(labels) if lab in keep]
    return kept, {i: lab for i, lab in enumerate(labels) if lab not in keep}


__all__ = ["LANGUAGES", "OTHER", "STOP_WORDS", "LanguageIdentifier", "train", "ngram_counts", "latin_fraction",
           "default_identifier", "keep_languages", "parse_languages"]
