"""Deduplication: exact by normalised hash; near by MinHash (Broder 1997) + LSH banding."""
import numpy as np
from hypothesis import given, settings, strategies as st

from lineage_jax.data.pipeline.dedup import (MERSENNE61, choose_bands_rows, estimate_jaccard, exact_dedup, jaccard,
                                             lsh_candidates, minhash_signature, mulmod_mersenne61, near_dedup,
                                             normalize, s_curve, shingles)

P61 = (1 << 61) - 1


def test_exact_dedup_removes_normalised_duplicates_and_keeps_order():
    docs = ["Hello  World", "Goodbye", "hello world", "HELLO\tWORLD\n", "Ｈｅｌｌｏ world", "goodbye ", "Hello, World"]
    kept, removed = exact_dedup(docs)
    assert kept == [0, 1, 6]
    assert removed == [(2, 0), (3, 0), (4, 0), (5, 1)]
    assert normalize("  Ｈｅｌｌｏ\n\tWORLD ") == "hello world"


@settings(max_examples=200, deadline=None)
@given(st.integers(0, P61 - 1), st.integers(0, P61 - 1))
def test_mulmod_mersenne61_is_exact(a, x):
    got = mulmod_mersenne61(np.array([a], np.uint64), np.array([x], np.uint64))
    assert int(got[0]) == a * x % P61


def test_shingles_words_and_chars():
    assert shingles("a b c d", 2) == {"a b", "b c", "c d"}
    assert shingles("A  b", 5) == {"a b"}
    assert shingles("abcd", 3, unit="char") == {"abc", "bcd"}
    assert shingles("", 3) == set()


def test_minhash_estimate_error_is_within_its_theoretical_bound():
    """|est − J| ≤ 4·sqrt(J(1−J)/num_perm) for every pair, and the mean error ≈ 0 (unbiased)."""
    rng = np.random.default_rng(0)
    num_perm, errors, variances = 128, [], []
    for pair in range(200):
        common, only_a, only_b = rng.integers(5, 150, size=3)
        a = {f"{pair}:c{i}" for i in range(common)} | {f"{pair}:a{i}" for i in range(only_a)}
        b = {f"{pair}:c{i}" for i in range(common)} | {f"{pair}:b{i}" for i in range(only_b)}
        J = jaccard(a, b)
        est = estimate_jaccard(minhash_signature(a, num_perm, seed=1), minhash_signature(b, num_perm, seed=1))
        sigma = np.sqrt(J * (1 - J) / num_perm)
        assert abs(est - J) <= 4 * sigma, (pair, est, J)
        errors.append(est - J)
        variances.append(J * (1 - J) / num_perm)
    sigma_mean = np.sqrt(np.sum(variances)) / len(errors)
    assert abs(np.mean(errors)) <= 4 * sigma_mean


def test_minhash_of_identical_and_empty_sets():
    s = {"x y", "y z", "z w"}
    assert estimate_jaccard(minhash_signature(s, 64, 3), minhash_signature(set(s), 64, 3)) == 1.0
    assert (minhash_signature(set(), 16, 0) == MERSENNE61).all()


def test_band_choice_follows_the_s_curve():
    bands, rows = choose_bands_rows(0.8, 128)
    assert (bands, rows) == (16, 8)
    assert s_curve(0.8, bands, rows) >= 0.9 and s_curve(0.5, bands, rows) < 0.1
    assert s_curve(0.8, 128 // (rows + 1), rows + 1) < 0.9   # one more row per band would miss > 10 % at t


def test_lsh_candidates_are_pairs_agreeing_on_a_band():
    sig = np.array([[1, 2, 3, 4], [1, 2, 9, 9], [7, 7, 3, 4], [5, 6, 7, 8]], np.uint64)
    assert lsh_candidates(sig, bands=2, rows=2) == {(0, 1), (0, 2)}
    assert lsh_candidates(sig, bands=1, rows=4) == set()


def _words(prefix, n):
    return [f"{prefix}{i}" for i in range(n)]


def _variant(base, shared, tag):
    """``base`` with its words after the first ``shared`` replaced by fresh ones."""
    return base[:shared] + _words(tag, len(base) - shared)


def test_near_dedup_removes_pairs_above_the_threshold_and_keeps_those_below():
    """Word 5-gram shingles of 104 distinct words: a variant sharing a prefix of m words has
    J = (m − 4) / (200 − (m − 4)) with the base."""
    docs, expected_removed, expected_kept = [], [], []
    for g, (m, dup) in enumerate([(99, True), (96, True), (89, False), (71, False)]):   # J ≈ .905, .852, .739, .504
        base = _words(f"g{g}w", 104)
        other = _variant(base, m, f"g{g}v")
        J = jaccard(shingles(" ".join(base)), shingles(" ".join(other)))
        assert (J >= 0.8) == dup
        assert abs(J - (m - 4) / (200 - (m - 4))) < 1e-12
        docs += [" ".join(base), " ".join(other)]
        (expected_removed if dup else expected_kept).append((len(docs) - 1, len(docs) - 2, J))
    docs.append(docs[0].upper())   # a case variant of the first: J = 1
    kept, removed = near_dedup(docs, threshold=0.8, num_perm=128, ngram=5)
    assert removed == [(i, j, J) for i, j, J in expected_removed] + [(len(docs) - 1, 0, 1.0)]
    assert kept == [i for i in range(len(docs)) if i not in {r[0] for r in removed}]
    for i, _, _ in expected_kept:
        assert i in kept


def test_near_dedup_with_estimated_jaccard_and_char_shingles():
    base = _words("w", 104)
    docs = [" ".join(base), " ".join(_variant(base, 102, "v")), " ".join(_variant(base, 71, "u"))]
    kept, removed = near_dedup(docs, threshold=0.8, verify="estimate")
    assert kept == [0, 2] and removed[0][:2] == (1, 0) and removed[0][2] >= 0.8
    kept, removed = near_dedup(["the quick brown fox jumps", "the quick brown fox jumps!", "lazy dogs sleep"],
                               threshold=0.7, ngram=3, unit="char")
    assert kept == [0, 2] and [r[:2] for r in removed] == [(1, 0)]
