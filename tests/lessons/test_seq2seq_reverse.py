"""The seq2seq_reverse lesson: its verdict reads the deepest depth's rows, its config refuses bad depths, its
train step is pure and learns, and ``lineage lesson seq2seq_reverse --quick`` writes a result.json and PNG."""
import json

import jax
import numpy as np
import optax
import pytest

from lineage_jax import cli
from lineage_jax.config import ConfigError
from lineage_jax.foundations import seq2seq
from lineage_jax.lessons import seq2seq_reverse as lesson
from lineage_jax.lessons.translate import Vocab


def test_supports_reads_the_deepest_rows_and_config_refuses_bad_layers():
    row = lambda layers, rev, ppl, em: {"layers": layers, "reversed": rev, "perplexity": ppl, "exact_match": em}
    good = [row(1, False, 2.0, 0.5), row(1, True, 3.0, 0.4), row(4, False, 1.5, 0.6), row(4, True, 1.3, 0.7)]
    assert lesson.supports(good)
    assert not lesson.supports(good[:3] + [row(4, True, 1.6, 0.7)])        # perplexity not lower
    assert not lesson.supports(good[:3] + [row(4, True, 1.3, 0.6)])        # exact match not higher
    assert lesson.supports([row(1, False, 1.0, 0.9)] + good[1:])           # the shallow rows do not decide
    for bad in ("0", "1,x", ""):
        with pytest.raises(ConfigError, match="layers="):
            lesson.Config(layers=bad)
    assert lesson.Config(layers="4,1,4").layer_list == [1, 4]


def test_the_step_is_pure_and_learns():
    vocab = Vocab()
    pairs = [("one", "1"), ("two", "2"), ("three", "3"), ("four", "4")]
    b = {k: jax.numpy.asarray(v) for k, v in vocab.arrays(pairs, 6, 3).items()}
    p = seq2seq.init(jax.random.key(0), len(vocab), 8, 16, layers=2)
    tx = optax.adam(3e-2)
    step = lesson.make_train_step(tx, reverse=True)
    (s1, m1), (s2, m2) = step((p, tx.init(p)), b), step((p, tx.init(p)), b)
    jax.tree.map(np.testing.assert_array_equal, (s1, m1), (s2, m2))
    state = s1
    for _ in range(60):
        state, m = step(state, b)
    assert float(m["loss"]) < 0.2 * float(m1["loss"])


def test_quick_writes_result_json_and_png(tmp_path):
    rc = cli.main(["lesson", "seq2seq_reverse", "--quick", "--out", str(tmp_path), "--no-progress", "steps=20",
                   "hidden=16", "per_bucket=10", "layers=1"])
    assert rc == 0
    res = json.loads((tmp_path / "result.json").read_text())
    assert [(r["layers"], r["reversed"]) for r in res["rows"]] == [(1, False), (1, True)]
    assert all(r["perplexity"] > 1.0 and 0.0 <= r["exact_match"] <= 1.0 for r in res["rows"])
    assert res["supported"] is lesson.supports(res["rows"])
    assert (tmp_path / "seq2seq_reverse.png").read_bytes()[:4] == b"\x89PNG"
