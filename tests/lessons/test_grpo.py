"""The grpo lesson: the verdict reads GRPO's curve (final vs the SFT start), bad config is one line, and
``lineage lesson grpo --quick`` writes a result.json with both variants' curves from the same start,
pass@k rows and its PNG."""
import json

import pytest

from lineage_jax import cli
from lineage_jax.config import ConfigError
from lineage_jax.lessons import grpo as lesson


def _curve(variant, accs):
    return [{"part": "curve", "variant": variant, "step": 10 * i, "accuracy": a} for i, a in enumerate(accs)]


def test_supports_reads_the_grpo_curve():
    assert lesson.supports(_curve("grpo", [0.4, 0.5, 0.6]) + _curve("dr_grpo", [0.4, 0.3]))
    assert not lesson.supports(_curve("grpo", [0.4, 0.6, 0.42]) + _curve("dr_grpo", [0.4, 0.9]))


def test_config_errors_name_the_field():
    for bad, field in ((dict(group=1), "group=1"), (dict(digits=9), "digits=9"), (dict(beta=-1.0), "beta=-1.0"),
                       (dict(d=30), "d=30")):
        with pytest.raises(ConfigError, match=field):
            lesson.Config(**bad)


@pytest.mark.slow    # trains two models and samples: ~40 s of CPU
def test_quick_writes_result_json_and_png(tmp_path):
    rc = cli.main(["lesson", "grpo", "--quick", "--out", str(tmp_path), "--no-progress", "sft_steps=10", "rl_steps=2",
                   "d=16", "layers=1", "test=8", "digits=1"])
    assert rc == 0
    res = json.loads((tmp_path / "result.json").read_text())
    curves = [(r["variant"], r["step"]) for r in res["rows"] if r["part"] == "curve"]
    assert curves == [("grpo", 0), ("grpo", 2), ("dr_grpo", 0), ("dr_grpo", 2)]
    starts = [r for r in res["rows"] if r["part"] == "curve" and r["step"] == 0]
    assert starts[0]["accuracy"] == starts[1]["accuracy"]              # the same SFT start
    assert [r["variant"] for r in res["rows"] if r["part"] == "pass@k"] == ["sft", "grpo", "dr_grpo"]
    assert all(r["pass@4"] >= r["pass@1"] for r in res["rows"] if r["part"] == "pass@k")
    assert res["supported"] is lesson.supports(res["rows"])
    assert (tmp_path / "grpo.png").read_bytes()[:4] == b"\x89PNG"
