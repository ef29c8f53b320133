"""The react lesson: the verdict reads the ReAct-vs-direct gaps over the trained lengths, the window holds the
longest reference trace, bad config is one line, and ``lineage lesson react --quick`` writes a result.json with
the three models at every length (one beyond training) and its PNG."""
import json

import numpy as np
import pytest

from lineage_jax import cli
from lineage_jax.config import ConfigError
from lineage_jax.lessons import react as lesson
from lineage_jax.reasoning import arith, react


def _rows(direct, tool):
    return [{"model": m, "digits": d + 1, "trained": d < len(accs) - 1, "accuracy": a}
            for m, accs in (("direct", direct), ("react", tool)) for d, a in enumerate(accs)]


def test_supports_reads_the_gaps():
    assert lesson.supports(_rows([0.5, 0.2, 0.0, 0.0], [0.9, 0.9, 0.9, 0.0]))
    assert not lesson.supports(_rows([0.8, 0.8, 0.3, 0.0], [0.9, 0.9, 0.5, 1.0]))    # mean gap too small
    assert not lesson.supports(_rows([0.1, 0.1, 0.8, 0.0], [0.9, 0.9, 0.9, 0.0]))    # not on the largest numbers


def test_window_holds_the_longest_trace_and_bad_config():
    cfg = lesson.Config(max_digits=3, b_digits=2)
    worst = arith.Problem("9999*99=", 9999 * 99, (), "mul", 4)
    assert len(react.tool_trace(worst)["text"]) < cfg.window
    assert all(p.prompt.count("*") == 1 and len(p.prompt.split("*")[0]) == 2
               for p in lesson.problems(5, 2, 1, seed=0))
    for bad, field in ((dict(max_digits=0), "max_digits="), (dict(steps=0), "steps=0"), (dict(d=30), "d=30")):
        with pytest.raises(ConfigError, match=field):
            lesson.Config(**bad)


def test_measure_reads_answers_after_the_prompt():
    p = arith.Problem("12*3=", 36, (), "mul", 2)
    traces = [{"text": "12*3=[calc(12*3)]=36;>36.", "calls": ["=36;"], "stop": "answer"},
              {"text": "12*3=>35.", "calls": [], "stop": "answer"}]
    m = lesson.measure(traces, [p, p])
    assert m == {"accuracy": 0.5, "calls_per_problem": 0.5, "answered": 1.0} and np.isfinite(m["accuracy"])


@pytest.mark.slow    # trains two models and runs the loop: ~60 s of CPU
def test_quick_writes_result_json_and_png(tmp_path):
    rc = cli.main(["lesson", "react", "--quick", "--out", str(tmp_path), "--no-progress", "steps=20", "d=16",
                   "layers=1", "test_per_size=4"])
    assert rc == 0
    res = json.loads((tmp_path / "result.json").read_text())
    assert [(r["model"], r["digits"], r["trained"]) for r in res["rows"]] == [
        (m, d, d <= 2) for m in lesson.MODELS for d in (1, 2, 3)]
    assert res["supported"] is lesson.supports(res["rows"])
    assert (tmp_path / "react.png").read_bytes()[:4] == b"\x89PNG"
