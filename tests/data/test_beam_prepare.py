"""The Beam pipeline (``pipeline/beam_prepare.py``) on the direct runner equals the in-process
``prepare`` row for row: on the planted corpus (duplicates, junk, other languages, blocklisted and
scorer-dropped documents), through the CLI; on a random corpus of near-duplicate chains fed in a
shuffled order. Near-duplicate groups whose pairs come from different LSH bands are merged by the
union-find CombineFn and resolved per component exactly as ``near_dedup`` resolves them."""
import io
import json
import random
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

beam = pytest.importorskip("apache_beam")

from lineage_jax import cli  # noqa: E402
from lineage_jax.data.pipeline import beam_prepare as bp  # noqa: E402
from lineage_jax.data.pipeline import prepare as prep  # noqa: E402
from lineage_jax.data.pipeline.dedup import exact_dedup, near_dedup, resolve_near_duplicates  # noqa: E402
from lineage_jax.data.prepared import read_prepared  # noqa: E402
from tests.data.test_prepare import _name, _sentences, make_corpus  # noqa: E402

SCORER = "tests.data.test_filters:zebra_free>=0.5"
COMPARED = ("input_docs", "output_docs", "removed", "tokens", "stages", "quality_reasons", "content_reasons",
            "languages", "splits", "removed_docs")


def planted(root: Path) -> dict[str, str]:
    fate = make_corpus(root)
    en = _sentences("en")
    for name, text, why in (("blocked_a.txt", " ".join(en[3:9]) + " Claim your casino bonus today.", "content"),
                            ("blocked_b.txt", " ".join(en[15:21]) + " Hot singles are waiting.", "content"),
                            ("zebra.txt", " ".join(en[27:33]) + " A zebra walked by.", "content")):
        (root / name).write_text(text, encoding="utf-8")
        fate[name] = why
    return fate


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    root = tmp_path_factory.mktemp("planted")
    fate = planted(root / "in")
    common = ["data", "prepare", "--inputs", str(root / "in"), "--seq-len", "64", "--eval-fraction", "0.2",
              "--blocklist", "--scorer", SCORER, "--json", "--no-progress"]
    mp = pytest.MonkeyPatch()
    out = {}
    for runner in ("in_process", "direct"):
        buf = io.StringIO()
        mp.setattr(sys, "stdout", buf)
        assert cli.main([*common, "--out", str(root / runner), "--runner", runner]) == 0
        mp.undo()
        out[runner] = (root / runner, json.loads(buf.getvalue()))
    return fate, out


def test_planted_corpus_beam_equals_in_process_row_for_row(both):
    fate, out = both
    (dir_a, a), (dir_b, b) = out["in_process"], out["direct"]
    for key in COMPARED:
        assert a[key] == b[key], key
    assert b["throughput"]["runner"] == "DirectRunner" and a["throughput"]["runner"] == "in_process"
    assert {_name(r["source"]): r["stage"] for r in b["removed_docs"]} == {k: v for k, v in fate.items() if v != "kept"}
    by = {_name(r["source"]): r["reason"] for r in b["removed_docs"] if r["stage"] == "content"}
    assert by["blocked_a.txt"] == by["blocked_b.txt"] == "blocklist" and by["zebra.txt"].endswith(":zebra_free")
    assert b["content_reasons"] == {"blocklist": 2, by["zebra.txt"]: 1}
    rows_a, meta_a = read_prepared(dir_a)
    rows_b, meta_b = read_prepared(dir_b)
    assert meta_a == meta_b and rows_a.keys() == rows_b.keys()
    for split in rows_a:
        for feature in rows_a[split]:
            np.testing.assert_array_equal(rows_a[split][feature], rows_b[split][feature])
    assert (dir_a / "documents.jsonl").read_text() == (dir_b / "documents.jsonl").read_text()
    assert (dir_b / "funnel.png").stat().st_size > 1000


# ----------------------------------------------------------------------------- random corpora, any order

def chain_corpus(seed: int, n_base: int = 6, chain: int = 4, words: int = 80) -> list[str]:
    """Random English-word documents, each base followed by a chain of variants two edits apart
    (neighbours near-duplicates, the ends of a chain often not), and exact copies."""
    rng = random.Random(seed)
    vocab = sorted({w.strip(".,;:!?\"'()").lower() for s in _sentences("en") for w in s.split()} - {""})
    docs = []
    for _ in range(n_base):
        cur = [rng.choice(vocab) for _ in range(words)]
        docs.append(" ".join(cur) + ".")
        for _ in range(rng.randint(1, chain)):
            cur = list(cur)
            for _ in range(2):
                cur[rng.randrange(words)] = rng.choice(vocab)
            docs.append(" ".join(cur) + ".")
    docs += [d.upper() for d in rng.sample(docs, 2)]                  # exact duplicates (normalised)
    rng.shuffle(docs)
    return docs


def dedup_in_process(docs, cfg):
    kept, exact = exact_dedup(docs)
    kept_near, near = near_dedup([docs[i] for i in kept], cfg.near_dup_threshold, cfg.num_perm, cfg.shingle_ngram)
    return {i for i, _ in exact} | {kept[j] for j, _, _ in near}, [kept[i] for i in kept_near]


def dedup_beam(docs, cfg, tmp: Path, order_seed: int, options=None):
    items = [((0, i), f"doc{i}", d) for i, d in enumerate(docs)]
    random.Random(order_seed).shuffle(items)                          # Beam sees them in another order
    prefix = str(tmp / "records")
    with beam.Pipeline(options=options or bp.pipeline_options(1, [])) as p:
        (bp.stages(p | beam.Create(items), cfg) | beam.Map(json.dumps) | beam.io.WriteToText(prefix))
    removed, kept, _ = bp.sort_records(bp.read_records(prefix))
    return removed, kept


def test_random_corpus_in_shuffled_order_keeps_the_same_set(tmp_path):
    cfg = prep.PrepareConfig(languages=("en", "de", "fr", "es", "it", "nl", "pt", "other"),
                             quality=prep.QualityConfig(min_words=1, min_stop_words=0)).validate()
    docs = chain_corpus(0)
    gone, _ = dedup_in_process(docs, cfg)
    removed, kept = dedup_beam(docs, cfg, tmp_path, order_seed=1)
    dedup_gone = {int(r["source"][3:]) for r in removed if r["stage"] in ("exact_dup", "near_dup")}
    assert dedup_gone == gone and sum(r["stage"] == "near_dup" for r in removed) >= 2
    ref = {}
    for i, f in exact_dedup(docs)[1]:
        ref[i] = f
    assert {int(r["source"][3:]): int(r["duplicate_of"][3:]) for r in removed if r["stage"] == "exact_dup"} == ref
    assert [int(r["source"][3:]) for r in kept] == sorted(set(range(len(docs))) - {int(r["source"][3:]) for r in removed})


@pytest.mark.slow
@settings(max_examples=4, deadline=None)
@given(seed=st.integers(0, 10_000), order=st.integers(0, 10_000))
def test_random_corpora_any_order_two_workers_match(tmp_path_factory, seed, order):
    cfg = prep.PrepareConfig(languages=("en", "de", "fr", "es", "it", "nl", "pt", "other"),
                             quality=prep.QualityConfig(min_words=1, min_stop_words=0)).validate()
    docs = chain_corpus(seed, n_base=10)
    gone, _ = dedup_in_process(docs, cfg)
    removed, _ = dedup_beam(docs, cfg, tmp_path_factory.mktemp("r"), order, bp.pipeline_options(2, []))
    assert {int(r["source"][3:]) for r in removed if r["stage"] in ("exact_dup", "near_dup")} == gone


# ----------------------------------------------------------------------------- groups across bands

@settings(max_examples=60, deadline=None)
@given(edges=st.lists(st.tuples(st.integers(0, 14), st.integers(0, 14), st.sampled_from([0.8, 0.85, 0.9, 1.0])),
                      max_size=30),
       parts=st.integers(1, 4), seed=st.integers(0, 1000))
def test_union_find_components_resolved_apart_equal_the_global_rule(edges, parts, seed):
    """Pairs found in different bands (here: split at random among partial accumulators, as workers
    would find them) merge into one component; resolving each component alone gives the global answer."""
    e = sorted({(min(i, j), max(i, j)): s for i, j, s in edges if i != j}.items())
    e = [(i, j, s) for (i, j), s in e]
    rng = random.Random(seed)
    uf = bp.UnionFind()
    accs = [uf.create_accumulator() for _ in range(parts)]
    for edge in e:
        k = rng.randrange(parts)
        accs[k] = uf.add_input(accs[k], edge)
    roots = uf.extract_output(uf.merge_accumulators(accs))
    groups = {}
    for i, j, s in e:
        assert roots[i] == roots[j]
        groups.setdefault(roots[i], []).append((i, j, s))
    assert all(r == min(n for n, rr in roots.items() if rr == r) for r in roots.values())   # root = smallest id
    apart = sorted(x for g in groups.values() for x in resolve_near_duplicates(g))
    assert apart == resolve_near_duplicates(e)


def test_a_chain_keeps_its_ends_and_a_hub_keeps_one():
    """a~b, b~c, a≁c (the pairs from two different bands): b goes (a is kept), c stays (its only
    earlier neighbour went); a triangle keeps only its first; duplicate_of is the most similar kept."""
    assert resolve_near_duplicates([(0, 1, 0.9), (1, 2, 0.9)]) == [(1, 0, 0.9)]
    assert resolve_near_duplicates([(0, 1, 0.85), (0, 2, 0.8), (1, 2, 0.95)]) == [(1, 0, 0.85), (2, 0, 0.8)]
    assert resolve_near_duplicates([(0, 2, 0.8), (1, 2, 0.9)]) == [(2, 1, 0.9)]     # 0, 1 kept; 2 → the closer
    with pytest.raises(ValueError, match="first id"):
        resolve_near_duplicates([(2, 1, 0.9)])


def test_cli_refuses_beam_options_without_the_direct_runner(capsys, tmp_path):
    for argv, want in ((["--workers", "2"], "need --runner direct"), (["--", "--x=1"], "need --runner direct"),
                       (["--runner", "direct", "--workers", "0"], "--workers=0"),
                       (["--scorer", "nocolon"], "expected MODULE:FUNCTION")):
        assert cli.main(["data", "prepare", "--inputs", str(tmp_path), "--out", str(tmp_path / "o"), *argv]) == 2
        err = capsys.readouterr().err
        assert want in err and err.count("\n") == 1
