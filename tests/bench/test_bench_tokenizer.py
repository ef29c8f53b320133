"""``lineage bench tokenizer --quick``: the teaching BPE, the fast path and ``tokenizers`` learn
the same merges and produce the same ids on the stdlib corpus; times become ratios."""
import json

import pytest

from lineage_jax import cli
from lineage_jax.bench import tokenizer as bench


def test_bench_tokenizer_quick_through_the_cli(capsys):
    assert cli.main(["bench", "tokenizer", "--quick", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["corpus"]["bytes"] >= bench.QUICK["bytes"] and r["vocab_size"] == bench.QUICK["vocab"]
    t, e = r["train"], r["encode"]
    assert t["same_merges"] and t["merges"] > 0
    assert e["same_ids"] and e["tokens"] > r["corpus"]["bytes"] / 10
    for part, names in ((t, ("teaching", "fast", "tokenizers")),
                        (e, ("teaching", "fast", "prepare_fast", "tokenizers"))):
        for k in names:
            assert part[f"{k}_s"] > 0
            assert part[f"{k}_over_tokenizers"] == pytest.approx(part[f"{k}_s"] / part["tokenizers_s"])
    assert e["meets_target"] == (e["prepare_fast_over_tokenizers"] <= bench.TARGET)
    assert e["prepare_fast_over_tokenizers"] < 3.0           # a loose bound: the same library underneath
    text = bench.report(r)
    assert "same merges: True" in text and "same ids: True" in text and "prepare_fast" in text


def test_stdlib_corpus_stops_at_the_budget():
    docs = bench.stdlib_corpus(50_000)
    sizes = [len(d.encode("utf-8")) for d in docs]
    assert sum(sizes) >= 50_000 and sum(sizes[:-1]) < 50_000
    assert docs == bench.stdlib_corpus(50_000)                # sorted files: the same corpus every run
