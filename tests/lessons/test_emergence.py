"""The emergence lesson: its task is addition written as the lesson says, its verdict reads the
shape of the measured curves (a p^L exact match over a smooth p supports the claim; a smooth exact
match does not), and ``--quick`` writes result.json and the PNG."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lineage_jax import cli
from lineage_jax.config import ConfigError
from lineage_jax.lessons import emergence as lesson


def test_problems_are_sums_with_the_answer_least_significant_first():
    seq, answer = lesson.problems(np.random.default_rng(0), 50, 3)
    for s, ans in zip(seq, answer):
        a, b = int("".join(map(str, s[:3]))), int("".join(map(str, s[4:7])))
        assert s[3] == lesson.PLUS and s[7] == lesson.EQUALS
        assert int("".join(map(str, ans[::-1]))) == a + b and list(s[8:]) == list(ans)


def rows_from(p_per_size, L=4, em=None):
    rows = []
    for i, p in enumerate(p_per_size):
        rows.append({"params": 1000 * 2 ** i, "token_accuracy": p, "log_likelihood": 0.9 * np.log(p),
                     "exact_match": p ** L if em is None else em[i], "p_to_the_L": p ** L})
    return rows


def test_supports_reads_the_curves():
    smooth_p = [0.3, 0.45, 0.6, 0.75, 0.9, 0.99]
    assert lesson.supports(rows_from(smooth_p))                       # p^L over a smooth p: the jump is the metric
    linear_em = list(np.linspace(0.0, 0.96, 6))
    assert not lesson.supports(rows_from(smooth_p, em=linear_em))     # a smooth exact match is no jump, nor p^L
    assert not lesson.supports(rows_from([0.3, 0.31, 0.32, 0.33, 0.34, 0.35]))   # nothing rose


def test_config_refusals():
    with pytest.raises(ConfigError, match="3 or more model widths"):
        lesson.Config(widths="16,32")
    with pytest.raises(ConfigError, match="multiple of 8"):
        lesson.Config(widths="16,20,32")
    with pytest.raises(ConfigError, match="seeds=0"):
        lesson.Config(seeds=0)


def test_score_of_an_untrained_model_is_in_range():
    cfg = lesson.Config(steps=1)
    m = lesson.model_config(cfg, 8)
    model = lesson.build(m)
    params = lesson.meta.unbox(jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, m.context), jnp.int32))["params"])
    seq, answer = lesson.problems(np.random.default_rng(1), 32, cfg.digits)
    s = lesson.score(cfg, model, params, seq, answer)
    assert 0 <= s["exact_match"] <= s["p_to_the_L"] + 0.1 and 0 <= s["token_accuracy"] <= 1
    assert s["log_likelihood"] < 0 and 0 <= s["edit_distance"] <= cfg.digits + 1


@pytest.mark.slow
def test_quick_writes_result_json_and_png(tmp_path):
    assert cli.main(["lesson", "emergence", "--quick", "--out", str(tmp_path), "--no-progress", "--steps", "30",
                     "n_test=64", "--widths", "8,16,24"]) == 0
    res = json.loads((tmp_path / "result.json").read_text())
    assert [r["width"] for r in res["rows"]] == [8, 16, 24]
    for r in res["rows"]:
        assert 0 <= r["exact_match"] <= r["token_accuracy"] <= 1 and r["log_likelihood"] < 0
    assert (tmp_path / "emergence.png").read_bytes()[:4] == b"\x89PNG"
