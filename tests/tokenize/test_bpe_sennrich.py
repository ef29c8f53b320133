"""Sennrich, Haddow & Birch 2016: BPE merges learned from word frequencies (Algorithm 1)."""
import pytest

from lineage_jax.tokenize.sennrich import apply_merges, learn_merges, merge_word, pair_counts, word_symbols

# The paper's Algorithm 1 vocabulary (word → frequency, characters space-separated, </w> last).
PAPER_VOCAB = {"l o w </w>": 5, "l o w e r </w>": 2, "n e w e s t </w>": 6, "w i d e s t </w>": 3}


def test_algorithm_1_paper_example():
    """Algorithm 1 with num_merges = 10 on the paper's vocabulary: 'es' (count 9) first, then
    'est', 'est</w>', 'lo', 'low' (7), ... Ties go to the first pair counted, as the paper's
    ``max`` over an insertion-ordered dict does."""
    merges = learn_merges(PAPER_VOCAB, 10)
    assert merges == [("e", "s"), ("es", "t"), ("est", "</w>"), ("l", "o"), ("lo", "w"),
                      ("n", "e"), ("ne", "w"), ("new", "est</w>"), ("low", "</w>"), ("w", "i")]
    # the counts behind the first choice: e-s, s-t and t-</w> all occur 6 + 3 = 9 times
    counts = pair_counts({word_symbols(w): f for w, f in PAPER_VOCAB.items()})
    assert counts[("e", "s")] == counts[("s", "t")] == counts[("t", "</w>")] == 9 == max(counts.values())
    # applying the merges in the order learned segments the training words as learning left them
    assert apply_merges("newest", merges) == ["newest</w>"]
    assert apply_merges("lowest", merges) == ["low", "est</w>"]              # an unseen word
    assert apply_merges("lower", merges) == ["low", "e", "r", "</w>"]
    assert apply_merges("widest", merges) == ["wi", "d", "est</w>"]


def test_figure_1_trace_is_a_valid_bpe_run():
    """The paper's Fig. 1 lists the merges 'r </w>', 'l o', 'lo w', 'e r</w>' for the dictionary
    {low, lowest, newer, wider}. Every first step there is a five-way tie (count 2), so any
    order among tied pairs is BPE: we check each figure step has the maximal count at its
    time, and that our tie-break reaches the same segmentation after four merges."""
    words = {"low": 1, "lowest": 1, "newer": 1, "wider": 1}
    figure = [("r", "</w>"), ("l", "o"), ("lo", "w"), ("e", "r</w>")]
    vocab = {word_symbols(w): f for w, f in words.items()}
    for pair in figure:
        counts = pair_counts(vocab)
        assert counts[pair] == max(counts.values())
        vocab = {merge_word(s, pair): f for s, f in vocab.items()}
    ours = learn_merges(words, 4)
    assert ours == [("l", "o"), ("lo", "w"), ("e", "r"), ("er", "</w>")]
    assert [apply_merges(w, ours) for w in words] == [list(s) for s in vocab]
    assert [apply_merges(w, figure) for w in words] == [list(s) for s in vocab]


def test_frequency_weighting_and_overlaps():
    # a pair in a frequent word beats a pair repeated within rarer words
    assert learn_merges({"ab": 3, "cdcd": 1}, 1) == [("a", "b")]
    assert learn_merges({"ab": 1, "cdcd": 1}, 1) == [("c", "d")]
    # non-overlapping, left to right (the paper's regex substitution)
    assert merge_word(("a", "a", "a"), ("a", "a")) == ("aa", "a")
    assert learn_merges({"aaaa": 1}, 2) == [("a", "a"), ("aa", "aa")]
    # stops when every word is one symbol
    assert learn_merges({"ab": 1}, 10) == [("a", "b"), ("ab", "</w>")]


def test_bad_input():
    with pytest.raises(TypeError, match="word must be str, got bytes"):
        apply_merges(b"low", [])
    with pytest.raises(ValueError, match="num_merges must be a non-negative int"):
        learn_merges(PAPER_VOCAB, -1)
