"""The dropout lesson: its train step is pure and its masks come from (key, step, device) — the 8-device
data-parallel step equals one device drawing each shard's masks by hand — and ``lineage lesson dropout
--quick`` writes a result.json whose verdict follows its rows."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax

import parallel

from lineage_jax import cli
from lineage_jax.foundations import dropout as dr
from lineage_jax.foundations import mlp, nets
from lineage_jax.lessons import dropout as lesson


def _setup(batch=32):
    xtr, ytr, _, _ = lesson.teacher_task(5, batch, 8, inputs=6, classes=3, label_noise=0.1)
    params = nets.from_layers(mlp.init(jax.random.key(2), [6, 16, 16, 3], "he"))
    tx = optax.sgd(0.1)
    state = lesson.State(step=jnp.int32(3), params=params, opt_state=tx.init(params), key=jax.random.key(4))
    return tx, state, (xtr, ytr)


def test_the_step_is_pure_and_replays_its_masks():
    tx, state, batch = _setup()
    step = jax.jit(lesson.make_train_step(tx, 0.5))
    (s1, m1), (s2, m2) = step(state, batch), step(state, batch)
    jax.tree.map(np.testing.assert_array_equal, (s1.params, m1), (s2.params, m2))
    s3, _ = step(s1, batch)                                  # the next step draws new masks
    key = jax.random.fold_in(state.key, 4)
    x, y = batch
    loss = lambda p, k: mlp.softmax_cross_entropy(lesson.forward(p, x, k, 0.5, False), y)[0]
    np.testing.assert_allclose(jax.grad(loss)(s1.params, key)["layer_0"]["kernel"] * -0.1,
                               s3.params["layer_0"]["kernel"] - s1.params["layer_0"]["kernel"], rtol=1e-5, atol=1e-7)
    assert int(s3.step) == 5


def test_eight_devices_equal_one_device_drawing_each_shards_masks():
    tx, state, (x, y) = _setup(batch=32)
    mesh = parallel.make_mesh({"data": -1})          # GSPMD-style (Auto) axes: data = 8
    sharded = lesson.data_parallel(lesson.make_train_step(tx, 0.5, axis_name="data"), mesh)
    new, metrics = sharded(state, (x, y))
    step_key = jax.random.fold_in(state.key, state.step)

    def shard_loss(params, d):
        xs, ys = x[4 * d: 4 * d + 4], y[4 * d: 4 * d + 4]
        logits = lesson.forward(params, xs, jax.random.fold_in(step_key, d), 0.5, False)
        return mlp.softmax_cross_entropy(logits, ys)[0]
    grads = jax.tree.map(lambda *g: sum(g) / 8, *[jax.grad(shard_loss)(state.params, d) for d in range(8)])
    expect = jax.tree.map(lambda p, g: p - 0.1 * g, state.params, grads)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), new.params, expect)
    np.testing.assert_allclose(metrics["loss"], np.mean([shard_loss(state.params, d) for d in range(8)]), rtol=1e-5)
    # and not the masks of one key for the whole batch: that step differs
    one_key = jax.grad(lambda p: mlp.softmax_cross_entropy(lesson.forward(p, x, step_key, 0.5, False), y)[0])
    assert not np.allclose(jax.tree.leaves(one_key(state.params))[0], jax.tree.leaves(grads)[0])


def test_evaluation_is_the_plain_net():
    _, state, (x, y) = _setup()
    np.testing.assert_array_equal(lesson.forward(state.params, x, jax.random.key(0), 0.5, True),
                                  mlp.forward(nets.to_layers(state.params), x, "relu")[0])
    assert dr.dropout(jax.random.key(0), x, 0.5, deterministic=True) is x


def test_supports_reads_the_rows():
    row = lambda rate, gap, test: {"step": 10, "rate": rate, "gap": gap, "test_accuracy": test}
    assert lesson.supports([row(0.0, 0.3, 0.7), row(0.5, 0.1, 0.75)])
    assert not lesson.supports([row(0.0, 0.3, 0.7), row(0.5, 0.35, 0.75)])
    assert not lesson.supports([row(0.0, 0.3, 0.7), row(0.5, 0.1, 0.65)])


def test_quick_writes_result_json_and_png(tmp_path):
    rc = cli.main(["lesson", "dropout", "--quick", "--out", str(tmp_path), "--no-progress", "--steps", "300",
                   "n_test=512"])
    assert rc == 0
    res = json.loads((tmp_path / "result.json").read_text())
    assert {r["rate"] for r in res["rows"]} == {0.0, 0.5} and {r["step"] for r in res["rows"]} == {150, 300}
    d = res["details"]
    assert d["gap_without"] > d["gap_with"] and res["supported"] is lesson.supports(res["rows"])
    assert (tmp_path / "dropout.png").read_bytes()[:4] == b"\x89PNG"
