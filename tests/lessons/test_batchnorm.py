"""The batchnorm lesson: the Flax net's BN (batch_stats threaded through the pure step) is the hand formula,
the train/eval mismatch at batch size 1 is exact (every pre-activation = β), LayerNorm has none, and
``lineage lesson batchnorm --quick`` writes a result.json whose verdict follows its rows."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lineage_jax import cli
from lineage_jax.foundations import batchnorm as bn
from lineage_jax.lessons import batchnorm as lesson


def _net(norm, seed=0):
    x = jax.random.normal(jax.random.key(seed), (32, 6))
    y = jax.random.randint(jax.random.key(seed + 1), (32,), 0, 4)
    model, tx = lesson.MLP(hidden=8, layers=2, classes=4, norm=norm), optax.sgd(0.5)
    return model, tx, lesson.init_state(model, tx, jax.random.key(seed + 2), x), x, y


def test_train_step_threads_batch_stats_as_the_formula_says():
    model, tx, state, x, y = _net("batch")
    step = lesson.make_train_step(model, tx)
    new, _ = step(state, (x, y))
    p = state.params
    h = x @ p["dense0"]["kernel"] + p["dense0"]["bias"]
    _, mean, var = bn.train(h, p["bn0"]["scale"], p["bn0"]["bias"], (0,))
    rm, rv = bn.update_running(state.batch_stats["bn0"]["mean"], state.batch_stats["bn0"]["var"], mean, var, 32,
                               0.9, "flax")
    np.testing.assert_allclose(new.batch_stats["bn0"]["mean"], rm, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(new.batch_stats["bn0"]["var"], rv, rtol=1e-4, atol=1e-6)
    again, _ = step(state, (x, y))                      # pure: the same state in, the same state out
    jax.tree.map(np.testing.assert_array_equal, again.batch_stats, new.batch_stats)
    assert lesson.init_state(*_net("none")[:2], jax.random.key(0), x).batch_stats == {}


def test_batch_of_one_in_training_mode_is_beta_everywhere():
    """x − μ_B = 0 for a single example: the first BN layer outputs exactly its β, whatever the input."""
    model, _, state, x, _ = _net("batch")
    state = state.replace(params={**state.params, "bn0": {"scale": jnp.full(8, 2.0), "bias": jnp.arange(8.0)}})
    _, inter = model.apply({"params": state.params, "batch_stats": state.batch_stats}, x[:1], train=True,
                           mutable=["batch_stats", "intermediates"], capture_intermediates=True)
    np.testing.assert_allclose(inter["intermediates"]["bn0"]["__call__"][0], jnp.arange(8.0)[None], atol=1e-6)
    one = lesson.logits_of(model, state, x, train_mode=True, batch_size=1)
    np.testing.assert_allclose(one, jnp.broadcast_to(one[:1], one.shape), atol=1e-6)   # one answer for all


def test_layernorm_has_no_train_eval_mismatch():
    model, _, state, x, _ = _net("layer")
    eval_logits = lesson.logits_of(model, state, x, train_mode=False)
    for size in (1, 2, 32):
        np.testing.assert_array_equal(lesson.logits_of(model, state, x, train_mode=True, batch_size=size), eval_logits)


def test_parameters_carry_logical_axis_names():
    model, _, _, x, _ = _net("batch")
    boxed = model.init(jax.random.key(0), x[:2], train=False)["params"]
    assert boxed["dense0"]["kernel"].names == ("embed", "mlp") and boxed["bn0"]["scale"].names == ("mlp",)


def test_supports_reads_the_rows():
    rows = [{"norm": "none", "lr": 8.0, "steps_to_target": None}, {"norm": "batch", "lr": 8.0, "steps_to_target": 100},
            {"norm": "batch", "batch_size": 1, "eval_accuracy": 0.8, "train_mode_accuracy": 0.3},
            {"norm": "layer", "batch_size": 1, "max_logit_difference": 0.0}]
    assert lesson.supports(rows)
    assert not lesson.supports([{**rows[0], "steps_to_target": 50}, *rows[1:]])
    assert not lesson.supports([*rows[:2], {**rows[2], "train_mode_accuracy": 0.7}, rows[3]])
    assert not lesson.supports([*rows[:3], {**rows[3], "max_logit_difference": 1e-3}])
    assert lesson.supports([*rows[:3], {**rows[3], "max_logit_difference": 1e-7}])      # rounding only
    assert not lesson.supports([*rows[:2], {**rows[2], "batch_size": 2}, rows[3]])      # batch 1 not measured


def test_quick_writes_result_json_and_png(tmp_path):
    rc = cli.main(["lesson", "batchnorm", "--quick", "--out", str(tmp_path), "--no-progress", "--steps", "200",
                   "n_train=1024", "n_test=256", "mismatch_sizes=1,64"])
    assert rc == 0
    res = json.loads((tmp_path / "result.json").read_text())
    race = [r for r in res["rows"] if "steps_to_target" in r]
    assert [(r["norm"], r["lr"]) for r in race] == [("none", 8.0), ("batch", 8.0), ("layer", 8.0)]
    bn1 = next(r for r in res["rows"] if r.get("batch_size") == 1 and r["norm"] == "batch")
    assert bn1["train_mode_accuracy"] < bn1["eval_accuracy"]
    assert res["supported"] is lesson.supports(res["rows"])
    assert (tmp_path / "batchnorm.png").read_bytes()[:4] == b"\x89PNG"
