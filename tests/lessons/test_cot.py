"""The cot lesson: the verdict follows the rows (mean margin over trained lengths, and a margin that grows),
the window fits the longest scratchpad, bad config is one line, and ``lineage lesson cot --quick`` writes a
result.json with both formats at every length (one beyond training) and its PNG."""
import json

import pytest

from lineage_jax import cli
from lineage_jax.config import ConfigError
from lineage_jax.lessons import cot as lesson
from lineage_jax.reasoning import arith


def _rows(direct, scratch):
    return [{"format": f, "digits": d + 1, "trained": d < len(accs) - 1, "accuracy": a}
            for f, accs in (("direct", direct), ("scratchpad", scratch)) for d, a in enumerate(accs)]


def test_supports_reads_the_margins():
    assert lesson.supports(_rows([0.9, 0.4, 0.1, 0.0], [0.95, 0.8, 0.7, 0.0]))
    assert not lesson.supports(_rows([0.9, 0.8, 0.7, 0.0], [0.9, 0.7, 0.6, 0.0]))    # scratchpad worse
    assert not lesson.supports(_rows([0.5, 0.6, 0.6, 0.0], [0.9, 0.8, 0.7, 0.0]))    # margin shrinks


def test_window_fits_the_longest_test_problem_and_bad_config():
    cfg = lesson.Config(max_digits=3)
    p = arith.addition(__import__("numpy").random.default_rng(0), 4)
    worst = arith.Problem("9999+9999=", 19998, tuple(arith.addition_steps(9999, 9999)), "add", 4)
    assert len(worst.prompt + worst.completion(True)) <= cfg.window and p.size == 4
    for bad, field in ((dict(max_digits=1), "max_digits="), (dict(votes=-1), "votes="), (dict(d=30), "d=30")):
        with pytest.raises(ConfigError, match=field):
            lesson.Config(**bad)


@pytest.mark.slow    # trains two models and samples: ~40 s of CPU
def test_quick_writes_result_json_and_png(tmp_path):
    rc = cli.main(["lesson", "cot", "--quick", "--out", str(tmp_path), "--no-progress", "steps=10", "d=16",
                   "layers=1", "test_per_size=4", "votes=2"])
    assert rc == 0
    res = json.loads((tmp_path / "result.json").read_text())
    assert [(r["format"], r["digits"], r["trained"]) for r in res["rows"]] == [
        ("direct", 1, True), ("direct", 2, True), ("direct", 3, False),
        ("scratchpad", 1, True), ("scratchpad", 2, True), ("scratchpad", 3, False)]
    assert all(0 <= r["self_consistency"] <= 1 for r in res["rows"])
    assert res["supported"] is lesson.supports(res["rows"])
    assert (tmp_path / "cot.png").read_bytes()[:4] == b"\x89PNG"
