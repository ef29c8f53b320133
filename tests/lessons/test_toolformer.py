"""The toolformer lesson: the proposals hold the right call and wrong ones at every position, the pretraining
corpus never names the tool, the filter table and the verdict read the gains, bad config is one line, and
``lineage lesson toolformer --quick`` writes a result.json with the filter table, before/after rows and its PNG."""
import json

import numpy as np
import pytest

from lineage_jax import cli
from lineage_jax.config import ConfigError
from lineage_jax.lessons import toolformer as lesson
from lineage_jax.reasoning import arith, toolformer


def test_proposals_and_the_tool_free_corpus():
    p = arith.Problem("12*3=", 36, (), "mul", 2)
    cands = lesson.proposals(7, p)
    assert {(c.position, c.argument, c.result, c.kind) for c in cands} == {
        (pos, arg, res, kind) for pos in range(3)
        for arg, res, kind in (("12*3", "36", "mul:right"), ("12+3", "15", "mul:wrong"), ("12*4", "48", "mul:wrong"))}
    assert all(c.text == 7 for c in cands)
    rng = np.random.default_rng(0)
    texts = [lesson.pretraining_text(p, rng, 0.5) for _ in range(200)]
    assert "12*3=>36." in texts and not any("calc" in t for t in texts)
    asides = [t for t in texts if "[" in t]
    assert 50 < len(asides) < 150 and all(t.endswith("(12*3)]=36;>36.") for t in asides)


def test_filter_rows_and_the_verdict():
    cands = [toolformer.Candidate(0, 0, "12*3", "36", "mul:right"), toolformer.Candidate(0, 0, "12+3", "15", "mul:wrong"),
             toolformer.Candidate(1, 0, "2+2", "4", "add:right"), toolformer.Candidate(1, 0, "2*2", "4", "add:wrong")]
    rows = lesson.filter_rows(cands, np.array([0.8, -1.0, 0.1, 0.0]), [0.5, 1.0], 0.5)
    at = {(r["tau"], r["problem"]): r for r in rows}
    assert at[(0.5, "mul")]["texts_with_right_call"] == 1.0 and at[(1.0, "mul")]["texts_with_right_call"] == 0.0
    assert at[(0.5, "add")]["right_kept"] == 0.0 and at[(0.5, "mul")]["wrong_kept"] == 0.0
    ev = lambda before, after, calls: [
        {"part": "eval", "model": "before", "problem": "mul", "accuracy": before, "calls_per_problem": 0.0},
        {"part": "eval", "model": "before", "problem": "add", "accuracy": 1.0, "calls_per_problem": 0.0},
        {"part": "eval", "model": "after", "problem": "mul", "accuracy": after, "calls_per_problem": calls},
        {"part": "eval", "model": "after", "problem": "add", "accuracy": 1.0, "calls_per_problem": 0.1}]
    assert lesson.supports(rows + ev(0.3, 0.9, 0.8))
    assert not lesson.supports(rows + ev(0.3, 0.4, 0.8))        # too small a gain
    assert not lesson.supports(rows + ev(0.3, 0.9, 0.05))       # calls more where it does not help
    for bad, field in ((dict(quoted=1.0), "quoted="), (dict(taus="1,x"), "taus="), (dict(tau=0.0), "tau=")):
        with pytest.raises(ConfigError, match=field):
            lesson.Config(**bad)


@pytest.mark.slow    # pretrains, scores the candidates, fine-tunes and runs the loop: ~60 s of CPU
def test_quick_writes_result_json_and_png(tmp_path):
    rc = cli.main(["lesson", "toolformer", "--quick", "--out", str(tmp_path), "--no-progress", "base_steps=20",
                   "ft_steps=10", "d=16", "layers=1", "corpus=8", "test_per_kind=4"])
    assert rc == 0
    res = json.loads((tmp_path / "result.json").read_text())
    parts = [(r["part"], r.get("model"), r["problem"]) for r in res["rows"]]
    assert parts[-4:] == [("eval", "before", "mul"), ("eval", "before", "add"), ("eval", "after", "mul"),
                          ("eval", "after", "add")]
    assert sum(r["part"] == "filter" for r in res["rows"]) == 2 * 4             # 4 τ × 2 kinds
    assert res["supported"] is lesson.supports(res["rows"])
    assert (tmp_path / "toolformer.png").read_bytes()[:4] == b"\x89PNG"
