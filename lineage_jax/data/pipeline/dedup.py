"""Deduplication of a list of documents (``str``): exact, by a normalised hash, and near,
by MinHash (Broder 1997) with locality-sensitive banding (Indyk & Motwani 1998; the banding
of Leskovec, Rajaraman & Ullman, *Mining of Massive Datasets*, §3.4).

Exact: two documents are the same if their normal forms are — Unicode NFKC, casefold,
runs of whitespace collapsed to one space, stripped — compared by a BLAKE2b digest. The
first occurrence is kept.

Near: a document is its set of shingles (word or character n-grams of the normal form).
The Jaccard similarity J(A, B) = |A ∩ B| / |A ∪ B| is estimated by MinHash: for a random
hash h, P[min h(A) = min h(B)] = J(A, B), so the fraction of agreeing coordinates of two
``num_perm``-long signatures is an unbiased estimate with standard deviation
sqrt(J(1 − J) / num_perm). The hashes are the universal family h(x) = (a·x + b) mod p,
p = 2⁶¹ − 1 (a Mersenne prime), over 64-bit BLAKE2b hashes x of the shingles, computed
exactly in uint64 numpy (``mulmod_mersenne61``).

LSH banding: the signature is cut into ``bands`` bands of ``rows`` rows; two documents are
candidates if they agree on every row of at least one band. For a pair of similarity s

    P[candidate] = 1 − (1 − s^r)^b          (the S-curve; steepest near (1/b)^(1/r))

``choose_bands_rows`` takes b = num_perm // r with the largest r (the steepest curve, so the
fewest false candidates) that still finds a pair exactly at the threshold t with probability
≥ 0.9: candidates are verified afterwards, so a false candidate costs one comparison but a
missed one is a duplicate kept. For t = 0.8 and 128 permutations that is b = 16, r = 8
(P = 0.95 at s = 0.8, 0.9999 at s = 0.9, 0.06 at s = 0.5). Candidates are then verified by the exact Jaccard of
the shingle sets (default) or by the MinHash estimate.

Which document of a near-duplicate group stays: ``resolve_near_duplicates`` (keep the first; a
document goes when an earlier *kept* document is its verified near-duplicate). It decides each
connected component of the verified pairs on its own, so a distributed pipeline may find the
components apart and resolve them in parallel with the same result.
"""
from __future__ import annotations

import hashlib
import re
import unicodedata
from collections import defaultdict
from typing import Iterable, Sequence

import numpy as np

MERSENNE61 = np.uint64((1 << 61) - 1)
_M61 = (1 << 61) - 1
_WS = re.compile(r"\s+")


# ----------------------------------------------------------------------------- exact

def normalize(text: str) -> str:
    """NFKC, casefold, whitespace runs → one space, stripped."""
    return _WS.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def exact_hash(text: str) -> str:
    """BLAKE2b (128-bit) hex digest of ``normalize(text)``."""
    return hashlib.blake2b(normalize(text).encode("utf-8"), digest_size=16).hexdigest()


def exact_dedup(docs: Sequence[str]) -> tuple[list[int], list[tuple[int, int]]]:
    """(kept indices in order, removed as (index, index of the first equal document))."""
    first: dict[str, int] = {}
    kept, removed = [], []
    for i, doc in enumerate(docs):
        h = exact_hash(doc)
        if h in first:
            removed.append((i, first[h]))
        else:
            first[h] = i
            kept.append(i)
    return kept, removed


# ----------------------------------------------------------------------------- shingles

def shingles(text: str, ngram: int = 5, unit: str = "word") -> set[str]:
    """The set of ``ngram``-grams of ``normalize(text)``: of words (``unit='word'``, joined by
    a space) or of characters (``unit='char'``). A text shorter than one n-gram is its own
    single shingle; an empty text has none."""
    if ngram < 1:
        raise ValueError(f"ngram={ngram}: must be at least 1")
    norm = normalize(text)
    if unit == "word":
        items: Sequence[str] = norm.split(" ") if norm else []
        join = " ".join
    elif unit == "char":
        items, join = norm, "".join
    else:
        raise ValueError(f"unit={unit!r}: 'word' or 'char'")
    if not items:
        return set()
    if len(items) <= ngram:
        return {join(items)}
    return {join(items[i:i + ngram]) for i in range(len(items) - ngram + 1)}


def hash64(strings: Iterable[str]) -> np.ndarray:
    """64-bit BLAKE2b hashes of ``strings``: uint64 [n]."""
    return np.array([int.from_bytes(hashlib.blake2b(s.encode("utf-8"), digest_size=8).digest(), "little")
                     for s in strings], dtype=np.uint64).reshape(-1)


def jaccard(a: set, b: set) -> float:
    """|a ∩ b| / |a ∪ b| (1.0 for two empty sets)."""
    union = len(a | b)
    return len(a & b) / union if union else 1.0


# ----------------------------------------------------------------------------- MinHash

def _mod61(y: np.ndarray) -> np.ndarray:
    """y mod (2⁶¹ − 1) for uint64 y, using 2⁶¹ ≡ 1."""
    y = (y & MERSENNE61) + (y >> np.uint64(61))
    y = (y & MERSENNE61) + (y >> np.uint64(61))
    return np.where(y >= MERSENNE61, y - MERSENNE61, y)


def mulmod_mersenne61(a: np.ndarray, x: np.ndarray) -> np.ndarray:
    """(a·x) mod (2⁶¹ − 1) exactly, for uint64 a, x < 2⁶¹ (broadcast), without 128-bit ints.

    With a = a₁·2³² + a₀ and x = x₁·2³² + x₀ (a₁, x₁ < 2²⁹):
    a·x = a₁x₁·2⁶⁴ + (a₁x₀ + a₀x₁)·2³² + a₀x₀, and 2⁶⁴ ≡ 8, 2⁶¹ ≡ 1 (mod p).
    """
    a, x = np.asarray(a, np.uint64), np.asarray(x, np.uint64)
    lo32, s32, s29 = np.uint64(0xFFFFFFFF), np.uint64(32), np.uint64(29)
    a1, a0, x1, x0 = a >> s32, a & lo32, x >> s32, x & lo32
    high = (a1 * x1) << np.uint64(3)                       # a₁x₁·2⁶⁴ ≡ 8·a₁x₁ < 2⁶¹
    mid = a1 * x0 + a0 * x1                                # < 2⁶²
    mid = (mid >> s29) + ((mid & np.uint64((1 << 29) - 1)) << s32)   # mid·2³² = hi·2⁶¹ + lo·2³²
    low = _mod61(a0 * x0)                                  # a₀x₀ < 2⁶⁴ fits
    return _mod61(_mod61(high + _mod61(mid)) + low)


def hash_params(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The universal family's (a, b): a ∈ [1, p), b ∈ [0, p), uint64 [num_perm] each."""
    rng = np.random.default_rng(seed)
    a = rng.integers(1, _M61, size=num_perm, dtype=np.uint64)
    b = rng.integers(0, _M61, size=num_perm, dtype=np.uint64)
    return a, b


def minhash_signature(shingle_set: Iterable[str], num_perm: int = 128, seed: int = 0) -> np.ndarray:
    """uint64 [num_perm]: min over the shingles of (a_k·x + b_k) mod p, x their 64-bit hash
    (reduced mod p). An empty set gets p in every coordinate (all empty sets agree)."""
    a, b = hash_params(num_perm, seed)
    x = _mod61(hash64(sorted(shingle_set)))
    if x.size == 0:
        return np.full(num_perm, MERSENNE61, np.uint64)
    h = _mod61(mulmod_mersenne61(a[:, None], x[None, :]) + b[:, None])   # [num_perm, n]
    return h.min(axis=1)


def estimate_jaccard(sig_a: np.ndarray, sig_b: np.ndarray) -> float:
    """Fraction of agreeing MinHash coordinates: unbiased for J, std sqrt(J(1 − J) / num_perm)."""
    return float(np.mean(np.asarray(sig_a) == np.asarray(sig_b)))


# ----------------------------------------------------------------------------- LSH

def s_curve(s, bands: int, rows: int):
    """P[two documents of similarity s share a band] = 1 − (1 − s^rows)^bands."""
    return 1.0 - (1.0 - np.asarray(s, np.float64) ** rows) ** bands


def choose_bands_rows(threshold: float, num_perm: int, min_recall: float = 0.9) -> tuple[int, int]:
    """(bands, rows) with bands = num_perm // rows and the most rows (the steepest S-curve, the
    fewest false candidates) such that a pair exactly at ``threshold`` is still a candidate
    with probability ≥ ``min_recall``; pairs above the threshold are found more often."""
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold={threshold}: must lie in (0, 1)")
    best = (num_perm, 1)
    for rows in range(1, num_perm + 1):
        bands = num_perm // rows
        if s_curve(threshold, bands, rows) >= min_recall:
            best = (bands, rows)
    return best


def band_keys(signature: np.ndarray, bands: int, rows: int) -> list[bytes]:
    """One signature's LSH bucket keys, one per band: the bytes of its ``rows`` rows there. Two
    documents are candidates when some band's keys are equal (``lsh_candidates``; the Beam pipeline
    groups by (band, key) to find the same pairs)."""
    sig = np.ascontiguousarray(np.asarray(signature, np.uint64))
    return [sig[b * rows:(b + 1) * rows].tobytes() for b in range(bands)]


def lsh_candidates(signatures: np.ndarray, bands: int, rows: int) -> set[tuple[int, int]]:
    """Pairs (i, j), i < j, whose signatures [N, ≥ bands·rows] agree on all rows of some band."""
    sig = np.asarray(signatures, np.uint64)
    if bands * rows > sig.shape[1]:
        raise ValueError(f"bands·rows = {bands * rows} exceeds the signature length {sig.shape[1]}")
    pairs: set[tuple[int, int]] = set()
    for band in range(bands):
        buckets: dict[bytes, list[int]] = defaultdict(list)
        block = np.ascontiguousarray(sig[:, band * rows:(band + 1) * rows])
        for i in range(sig.shape[0]):
            buckets[block[i].tobytes()].append(i)
        for members in buckets.values():
            for x, i in enumerate(members):
                for j in members[x + 1:]:
                    pairs.add((i, j))
    return pairs


def near_dedup(docs: Sequence[str], threshold: float = 0.8, num_perm: int = 128, ngram: int = 5, *,
               unit: str = "word", seed: int = 0, bands: int | None = None, rows: int | None = None,
               verify: str = "exact") -> tuple[list[int], list[tuple[int, int, float]]]:
    """Drop documents whose shingle Jaccard with an earlier kept document is ≥ ``threshold``.

    Returns (kept indices in order, removed as (index, duplicate_of, jaccard)); a removed
    document points at the kept earlier candidate of highest similarity (lowest index on
    ties). Candidates come from LSH banding (``choose_bands_rows`` unless bands and rows are
    given); ``verify='exact'`` checks them by the exact Jaccard of the shingle sets,
    ``'estimate'`` by the MinHash estimate.
    """
    if verify not in ("exact", "estimate"):
        raise ValueError(f"verify={verify!r}: 'exact' or 'estimate'")
    if (bands is None) != (rows is None):
        raise ValueError("give both bands and rows, or neither")
    if bands is None:
        bands, rows = choose_bands_rows(threshold, num_perm)
    sets = [shingles(d, ngram, unit) for d in docs]
    sigs = np.stack([minhash_signature(s, num_perm, seed) for s in sets]) if sets else np.zeros((0, num_perm), np.uint64)
    edges = []
    for i, j in sorted(lsh_candidates(sigs, bands, rows)):
        sim = jaccard(sets[i], sets[j]) if verify == "exact" else estimate_jaccard(sigs[i], sigs[j])
        if sim >= threshold:
            edges.append((i, j, float(sim)))
    removed = resolve_near_duplicates(edges)
    gone = {j for j, _, _ in removed}
    return [j for j in range(len(docs)) if j not in gone], removed


def resolve_near_duplicates(edges: Iterable[tuple]) -> list[tuple]:
    """The keep-the-first rule over verified near-duplicate pairs: which documents go.

    ``edges`` are (i, j, similarity) with i < j in document order (ids may be any sortable keys,
    e.g. (file, line)), each a verified pair (similarity ≥ threshold). Documents are visited in
    order; a document is removed when one of its earlier neighbours was kept, and points at the
    kept earlier neighbour of highest similarity (lowest id on ties); otherwise it is kept. So the
    first document of every group is kept, and a chain a~b~c with a≁c keeps a and c (c's only
    earlier neighbour, b, went). The result is the lexicographically first maximal independent set
    of the similarity graph: it depends only on each connected component's own edges, which is
    what lets the Beam pipeline resolve the components apart (``beam_prepare``) and agree with
    ``near_dedup`` exactly. Returns [(removed id, duplicate_of, similarity)] in id order; documents
    in no edge are kept and not listed.
    """
    earlier: dict = defaultdict(list)
    for i, j, sim in edges:
        if not i < j:
            raise ValueError(f"edge ({i!r}, {j!r}): the first id must come first in document order")
        earlier[j].append((i, sim))
    gone: set = set()
    removed = []
    for j in sorted(earlier):
        best = None
        for i, sim in sorted(earlier[j]):
            if i not in gone and (best is None or sim > best[1]):
                best = (i, sim)
        if best is not None:
            gone.add(j)
            removed.append((j, best[0], float(best[1])))
    return removed
