"""The icl lesson: the verdict follows the rows (each clause can fail it), the phase window is read off the
curve, bad config is one line, and ``lineage lesson icl --quick`` writes a result.json with both models,
the few-shot rows and its PNG."""
import json

import pytest

from lineage_jax import cli
from lineage_jax.config import ConfigError
from lineage_jax.lessons import icl as lesson


def _rows(**change):
    rep = {"part": "pretrain", "model": "repeats", "steps": 1000, "icl_score": 2.0, "prefix_matching": 0.6,
           "copying": 0.9, "phase_width": 100}
    ctl = {"part": "pretrain", "model": "control", "steps": 1000, "icl_score": 0.0, "prefix_matching": 0.05,
           "copying": 0.1, "phase_width": 0}
    shots = [{"part": "few-shot", "k": 0, "accuracy": 0.02}, {"part": "few-shot", "k": 8, "accuracy": 0.8}]
    for key, value in change.items():
        who, field = key.split("__")
        {"rep": rep, "ctl": ctl, "shot": shots[-1]}[who][field] = value
    return [rep, ctl, *shots]


def test_supports_reads_every_clause():
    assert lesson.supports(_rows())
    for bad in (dict(rep__icl_score=0.5), dict(rep__prefix_matching=0.1), dict(rep__copying=0.2),
                dict(rep__phase_width=400), dict(ctl__prefix_matching=0.5), dict(shot__accuracy=0.1)):
        assert not lesson.supports(_rows(**bad)), bad


def test_phase_window_and_config_errors():
    curve = [(100, 0.0), (200, 0.05), (300, 0.5), (400, 1.9), (500, 2.0)]
    assert lesson.phase_window(curve) == (300, 400)
    assert lesson.phase_window([(100, 0.0), (200, 0.05)]) is None
    assert not lesson.supports(_rows(rep__phase_width=None))
    for bad, field in ((dict(shots="4,2"), "shots="), (dict(shots="0,20", length=32), "shots="),
                       (dict(d=30, heads=4), "d=30"), (dict(lr=2.0), "lr=")):
        with pytest.raises(ConfigError, match=field):
            lesson.Config(**bad)


def test_quick_writes_result_json_and_png(tmp_path):
    rc = cli.main(["lesson", "icl", "--quick", "--out", str(tmp_path), "--no-progress", "steps=40", "eval_every=20",
                   "eval_batch=16", "d=16", "length=16", "shots=0,4"])
    assert rc == 0
    res = json.loads((tmp_path / "result.json").read_text())
    assert [r["model"] for r in res["rows"] if r["part"] == "pretrain"] == ["repeats", "control"]
    assert [r["k"] for r in res["rows"] if r["part"] == "few-shot"] == [0, 4]
    assert res["supported"] is lesson.supports(res["rows"])
    assert [e["step"] for e in res["details"]["curves"]["repeats"]] == [20, 40]
    assert (tmp_path / "icl.png").read_bytes()[:4] == b"\x89PNG"
