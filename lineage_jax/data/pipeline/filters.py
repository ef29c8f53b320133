"""Content filters: a C4-style blocklist and a pluggable scorer interface, both as ``ScoreFilter``.

C4 (Raffel et al. 2020, §2.2) removes "any page that contained any word on the List of Dirty,
Naughty, Obscene or Otherwise Bad Words". ``Blocklist`` reads such a list from a data file (one
word or phrase a line, case-insensitive, ``#`` comments); the project ships only a short
placeholder (``blocklist.txt``, written here), to be replaced by the user's own list. Matching is
on whole words of the normalised text (``dedup.normalize``; words are runs of letters, digits and
apostrophes), so ``scunthorpe`` does not match ``thorpe`` and a phrase matches its words in order.

A ``ScoreFilter`` is the one interface every content filter has: a pure function
document → float, a threshold, and which side keeps (``keep='at_least'``: keep when
score ≥ threshold, e.g. a CLIP score or a classifier's probability of good text;
``keep='below'``: keep when score < threshold, e.g. the blocklist's count of listed words with
threshold 1). ``verdict`` gives (kept, score); a dropped document is reported under the filter's
``name``. ``load_scorer('pkg.module:function>=0.5')`` plugs in any importable function.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib
import re
from pathlib import Path
from typing import Any, Callable, Sequence

from lineage_jax.config import ConfigError
from lineage_jax.data.pipeline.dedup import normalize

DEFAULT_BLOCKLIST = Path(__file__).with_name("blocklist.txt")
_WORD = re.compile(r"[\w']+")
KEEPS = ("at_least", "below")


@dataclasses.dataclass(frozen=True)
class ScoreFilter:
    """Keep a document when ``score(doc) >= threshold`` (``keep='at_least'``) or ``< threshold``
    (``keep='below'``); ``name`` is the reason a dropped document is counted under."""
    name: str
    score: Callable[[Any], float]
    threshold: float
    keep: str = "at_least"

    def __post_init__(self):
        if self.keep not in KEEPS:
            raise ValueError(f"keep={self.keep!r}: allowed {', '.join(KEEPS)}")

    def verdict(self, doc) -> tuple[bool, float]:
        s = float(self.score(doc))
        return (s >= self.threshold if self.keep == "at_least" else s < self.threshold), s


def apply_filters(doc, filters: Sequence[ScoreFilter]) -> dict | None:
    """None when every filter keeps ``doc``; else the first refusal: {reason, score, threshold}."""
    for f in filters:
        kept, s = f.verdict(doc)
        if not kept:
            return {"reason": f.name, "score": s, "threshold": f.threshold}
    return None


def filter_documents(docs: Sequence, filters: Sequence[ScoreFilter]) -> tuple[list[int], dict[int, dict]]:
    """(indices kept, in order; {index: refusal} of those dropped): ``apply_filters`` per document."""
    kept, dropped = [], {}
    for i, d in enumerate(docs):
        r = apply_filters(d, filters)
        if r is None:
            kept.append(i)
        else:
            dropped[i] = r
    return kept, dropped


# ----------------------------------------------------------------------------- blocklist

def words(text: str) -> list[str]:
    """The words of ``normalize(text)``: runs of letters, digits and apostrophes."""
    return _WORD.findall(normalize(text))


@dataclasses.dataclass(frozen=True)
class Blocklist:
    """Listed entries as word tuples; ``count(doc)`` = occurrences of any entry in ``doc``'s words."""
    entries: tuple[tuple[str, ...], ...]

    @classmethod
    def read(cls, path: str | Path = DEFAULT_BLOCKLIST) -> "Blocklist":
        p = Path(path).expanduser()
        try:
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"--blocklist {path}: cannot read it ({getattr(e, 'strerror', None) or e}); "
                              "give a UTF-8 text file, one word or phrase a line") from None
        entries = tuple(sorted({tuple(words(ln)) for ln in (raw.split("#", 1)[0] for raw in text.splitlines())
                                if words(ln)}))
        if not entries:
            raise ConfigError(f"--blocklist {path}: lists no word (one word or phrase a line, '#' comments)")
        return cls(entries)

    @functools.cached_property
    def _by_first(self) -> dict[str, list[tuple[str, ...]]]:
        out: dict[str, list[tuple[str, ...]]] = {}
        for e in self.entries:
            out.setdefault(e[0], []).append(e)
        return out

    def count(self, doc: str) -> int:
        ws, by_first = words(doc), self._by_first
        return sum(1 for k, w in enumerate(ws) for e in by_first.get(w, ()) if tuple(ws[k:k + len(e)]) == e)

    def as_filter(self) -> ScoreFilter:
        """C4's rule as a ``ScoreFilter``: keep a document with fewer than 1 listed word."""
        return ScoreFilter("blocklist", self.count, 1.0, keep="below")


# ----------------------------------------------------------------------------- plugging in a scorer

_SPEC = re.compile(r"^\s*([\w.]+):([\w.]+)\s*(>=|<)\s*([-+0-9.eE]+)\s*$")


def load_scorer(spec: str) -> ScoreFilter:
    """``'pkg.module:function>=0.5'`` (keep score ≥ 0.5) or ``'pkg.module:function<3'`` (keep
    score < 3): the function, imported, takes a document and returns a number. One-line
    ConfigError for a malformed spec, a module or function that does not exist."""
    m = _SPEC.match(spec)
    if not m:
        raise ConfigError(f"--scorer {spec}: expected MODULE:FUNCTION>=THRESHOLD or MODULE:FUNCTION<THRESHOLD, "
                          "e.g. mypkg.scores:quality>=0.5")
    module, attr, op, raw = m.groups()
    try:
        threshold = float(raw)
    except ValueError:
        raise ConfigError(f"--scorer {spec}: threshold {raw!r} is not a number") from None
    try:
        fn = importlib.import_module(module)
        for part in attr.split("."):
            fn = getattr(fn, part)
    except ImportError as e:
        raise ConfigError(f"--scorer {spec}: cannot import {module} ({e})") from None
    except AttributeError:
        raise ConfigError(f"--scorer {spec}: {module} has no {attr}") from None
    if not callable(fn):
        raise ConfigError(f"--scorer {spec}: {module}:{attr} is not a function")
    return ScoreFilter(f"{module}:{attr}", fn, threshold, keep="at_least" if op == ">=" else "below")


def content_filters(blocklist: str | None, scorers: Sequence[str]) -> list[ScoreFilter]:
    """The filters ``prepare`` runs: the blocklist (``'default'``: the shipped placeholder; a path;
    None: none), then each scorer spec."""
    out = []
    if blocklist is not None:
        out.append(Blocklist.read(DEFAULT_BLOCKLIST if blocklist == "default" else blocklist).as_filter())
    return out + [load_scorer(s) for s in scorers]


__all__ = ["ScoreFilter", "apply_filters", "filter_documents", "Blocklist", "load_scorer", "content_filters",
           "DEFAULT_BLOCKLIST", "words"]
