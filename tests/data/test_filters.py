"""Content filters (``pipeline/filters.py``): the C4-style blocklist matches whole words and phrases
of the normalised text and drops exactly the planted documents; ``ScoreFilter`` keeps on the side
it is told; ``load_scorer`` plugs in an importable function and refuses a bad spec in one line."""
import pytest

from lineage_jax.config import ConfigError
from lineage_jax.data.pipeline.filters import (DEFAULT_BLOCKLIST, Blocklist, ScoreFilter, apply_filters,
                                               content_filters, filter_documents, load_scorer)


def zebra_free(doc: str) -> float:
    """A planted scorer for the tests (here and in test_beam_prepare): 0 when 'zebra' occurs, else 1."""
    return 0.0 if "zebra" in doc.lower() else 1.0


def test_blocklist_drops_exactly_the_planted_documents(tmp_path):
    path = tmp_path / "words.txt"
    path.write_text("# comment line\nBadword\nhot  singles   # a phrase\n\n", encoding="utf-8")
    bl = Blocklist.read(path)
    assert bl.entries == (("badword",), ("hot", "singles"))
    docs = ["a clean text about hot weather and singles tennis",   # both words, not in sequence: kept
            "BADWORD in capitals",                                 # case-insensitive: dropped
            "the badwords plural is another word",                 # whole words only: kept
            "meet hot\nsingles tonight",                           # the phrase across a line break: dropped
            "nothing to see", "prefixbadword suffix"]
    kept, dropped = filter_documents(docs, [bl.as_filter()])
    assert kept == [0, 2, 4, 5] and sorted(dropped) == [1, 3]
    assert dropped[1] == {"reason": "blocklist", "score": 1.0, "threshold": 1.0}
    assert bl.count("badword badword hot singles") == 3


def test_the_shipped_placeholder_list_reads_and_is_short():
    bl = Blocklist.read(DEFAULT_BLOCKLIST)
    assert 0 < len(bl.entries) <= 20
    assert bl.count("a casino bonus for you") == 1 and bl.count("a casino for you") == 0


def test_score_filter_sides_and_first_refusal_wins():
    at_least = ScoreFilter("long", len, 5)
    below = ScoreFilter("short", len, 8, keep="below")
    assert at_least.verdict("abcde") == (True, 5.0) and at_least.verdict("abcd") == (False, 4.0)
    assert below.verdict("abcdefg") == (True, 7.0) and below.verdict("abcdefgh") == (False, 8.0)
    assert apply_filters("abc", [at_least, below])["reason"] == "long"
    assert apply_filters("abcdefghij", [at_least, below])["reason"] == "short"
    assert apply_filters("abcdef", [at_least, below]) is None
    with pytest.raises(ValueError, match="keep="):
        ScoreFilter("x", len, 1, keep="above")


def test_load_scorer_plugs_in_a_function_and_bad_specs_are_one_line(tmp_path):
    f = load_scorer(f"{__name__}:zebra_free>=0.5")
    assert f.name.endswith(":zebra_free") and f.keep == "at_least" and f.threshold == 0.5
    assert apply_filters("a zebra crossing", [f])["reason"] == f.name and apply_filters("a road", [f]) is None
    assert load_scorer(f"{__name__}:zebra_free<0.5").keep == "below"
    for spec, want in (("nocolon>=1", "expected MODULE:FUNCTION"), ("no_such_mod_x:f>=1", "cannot import"),
                       (f"{__name__}:nope>=1", "has no nope"), (f"{__name__}:DEFAULT_BLOCKLIST>=1", "not a function")):
        with pytest.raises(ConfigError, match=want) as e:
            load_scorer(spec)
        assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="lists no word"):
        (tmp_path / "empty.txt").write_text("# nothing\n")
        content_filters(str(tmp_path / "empty.txt"), ())
    with pytest.raises(ConfigError, match="cannot read"):
        content_filters(str(tmp_path / "missing.txt"), ())
    assert [x.name for x in content_filters("default", [f"{__name__}:zebra_free>=0.5"])][0] == "blocklist"
