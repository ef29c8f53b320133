"""The rnn_vs_transformer lesson: the sequential steps are counted from the traced program (n per LSTM layer,
none in the Transformer encoder), the parameter counts match, the verdict follows the rows, and ``lineage
lesson rnn_vs_transformer --quick`` writes a result.json and its PNG. No timing is asserted."""
import json

import jax
import numpy as np
import pytest

from lineage_jax import cli
from lineage_jax.config import ConfigError
from lineage_jax.lessons import rnn_vs_transformer as lesson


def test_sequential_steps_are_n_per_lstm_layer_and_none_in_the_transformer():
    tokens = jax.random.randint(jax.random.key(0), (2, 10), 0, 16)
    lp = lesson.lstm_init(jax.random.key(1), 16, 8, 3)
    assert lesson.scan_iterations(lesson.lstm_logits, lp, tokens) == 30
    assert lesson.scan_iterations(lesson.lstm_logits, lp, tokens[:, :4]) == 12
    model = lesson.transformer(8, 2, 2, 16, 10)
    from flax.core import meta
    tp = meta.unbox(model.init(jax.random.key(2), tokens, method=lesson.Transformer.encode)["params"])
    assert lesson.scan_iterations(lambda p, t: lesson.transformer_logits(model, p, t), tp, tokens) == 0
    assert lesson.lstm_logits(lp, tokens).shape == lesson.transformer_logits(model, tp, tokens).shape == (2, 10, 16)
    # a nested scan counts its inner length times the outer
    nested = lambda x: jax.lax.scan(lambda c, _: (jax.lax.scan(lambda d, _: (d + 1, None), c, None, length=3)[0],
                                                  None), x, None, length=4)[0]
    assert lesson.scan_iterations(nested, 0) == 12


def test_parameter_counts_match_within_two_percent():
    d, V = 32, 16
    lp = lesson.count_params(lesson.lstm_init(jax.random.key(0), V, d, 3))
    model = lesson.transformer(d, 4, 2, V, 8)
    from flax.core import meta
    tp = lesson.count_params(meta.unbox(model.init(jax.random.key(0), np.zeros((1, 8), np.int32),
                                                   method=lesson.Transformer.encode)["params"]))
    assert abs(lp - tp) / tp < 0.02


def test_the_step_is_pure_and_learns():
    tokens = jax.random.randint(jax.random.key(0), (4, 12), 0, 8)
    labels = tokens
    lp = lesson.lstm_init(jax.random.key(1), 8, 16, 1)
    step = lesson.make_step(lesson.lstm_logits, lr=1.0)
    (p1, l1), (p2, l2) = step(lp, tokens, labels), step(lp, tokens, labels)
    jax.tree.map(np.testing.assert_array_equal, p1, p2)
    p = p1
    for _ in range(40):
        p, loss = step(p, tokens, labels)
    assert float(loss) < 0.5 * float(l1)


def test_supports_reads_the_rows_and_config_refuses_bad_lengths():
    def rows(r_short, r_long, steps_ok=True, acc_lstm=(0.5, 0.4), acc_tf=(0.6, 0.2)):
        out = []
        for n, r in ((64, r_short), (1024, r_long)):
            out += [{"model": "lstm", "n": n, "sequential_steps": 3 * n, "step_ms": r},
                    {"model": "transformer", "n": n, "sequential_steps": 2 if steps_ok else n, "step_ms": 1.0}]
        for model, accs in (("lstm", acc_lstm), ("transformer", acc_tf)):
            out += [{"model": model, "n": 128, "part": "equal_wall_time", "lr": lr, "heldout_accuracy": a}
                    for lr, a in zip((1e-3, 3e-3), accs)]
        return out
    assert lesson.supports(rows(2.0, 8.0))
    assert not lesson.supports(rows(2.0, 1.5))
    assert not lesson.supports(rows(2.0, 8.0, steps_ok=False))
    # each model is judged at its best learning rate
    assert not lesson.supports(rows(2.0, 8.0, acc_lstm=(0.2, 0.7)))
    assert lesson.transformer_as_good_at_equal_time(rows(2.0, 1.5)) and not lesson.time_ratio_grows(rows(2.0, 1.5))
    assert lesson.best_at_equal_time(rows(2.0, 8.0))["transformer"]["lr"] == 1e-3
    for bad in ("64", "128,64", "64,x", "1,2"):
        with pytest.raises(ConfigError, match="lengths="):
            lesson.Config(lengths=bad)
    with pytest.raises(ConfigError, match="delay=40, quality_n=32"):
        lesson.Config(delay=40, quality_n=32)
    with pytest.raises(ConfigError, match="race_lrs="):
        lesson.Config(race_lrs="0.1,-1")


def test_race_gives_each_model_the_steps_that_fit_in_equal_seconds():
    cfg = lesson.Config(d=16, heads=2, vocab=8, quality_n=12, delay=2, budget_steps=20, checkpoints=2, race_batch=16,
                        repeats=1)
    tokens, labels = lesson.delayed_copy(jax.random.key(0), 4, 12, 8, 2)
    np.testing.assert_array_equal(labels[:, 2:], tokens[:, :-2])
    heldout = lesson.delayed_copy(jax.random.key(1), 64, 12, 8, 2)
    small, big = (lesson.lstm_init(jax.random.key(2), 8, w, 1) for w in (8, 64))
    curves, ms = lesson.race({"a": (lesson.lstm_logits, small, 0.03, "small"),
                              "b": (lesson.lstm_logits, small, 0.01, "small"),
                              "c": (lesson.lstm_logits, big, 0.03, "big")}, cfg, heldout, progress=False)
    slow = max(ms, key=ms.get)
    steps = {k: c[-1]["steps"] for k, c in curves.items()}
    assert steps["a"] == steps["b"] and [p["steps"] for p in curves["a"]] == [0, round(steps["a"] / 2), steps["a"]]
    assert steps["c" if slow == "big" else "a"] == 20
    for k, kind in (("a", "small"), ("c", "big")):    # equal seconds: steps × median step time
        assert abs(curves[k][-1]["seconds"] - 20 * ms[slow] / 1e3) <= ms[kind] / 1e3


def test_quick_writes_result_json_and_png(tmp_path):
    rc = cli.main(["lesson", "rnn_vs_transformer", "--quick", "--out", str(tmp_path), "--no-progress",
                   "--lengths", "8,16", "d=16", "repeats=1", "quality_n=16", "budget_steps=10"])
    assert rc == 0
    res = json.loads((tmp_path / "result.json").read_text())
    timing = [r for r in res["rows"] if "part" not in r]
    assert [(r["model"], r["n"]) for r in timing] == [("lstm", 8), ("transformer", 8), ("lstm", 16), ("transformer", 16)]
    assert [r["sequential_steps"] for r in timing] == [24, 2, 48, 2]
    race = [r for r in res["rows"] if r.get("part") == "equal_wall_time"]
    assert sorted(r["model"] for r in race) == ["lstm", "transformer"]
    assert all(r["steps"] > 0 and r["train_seconds"] > 0 for r in race)
    assert res["details"]["transformer_as_good_at_equal_time"] is lesson.transformer_as_good_at_equal_time(res["rows"])
    assert res["supported"] is lesson.supports(res["rows"])
    assert (tmp_path / "rnn_vs_transformer.png").read_bytes()[:4] == b"\x89PNG"
