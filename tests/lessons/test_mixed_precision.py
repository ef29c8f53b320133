"""The mixed_precision lesson: its fp16 step with the project's dynamic loss scaling skips an overflowing
step and halves S; in fp32 it is the plain Adam step; ``lineage lesson mixed_precision --quick`` writes a
result.json whose verdict follows its rows."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lineage_jax import cli
from lineage_jax.foundations import mlp, nets
from lineage_jax.lessons import mixed_precision as mp
from parallel import precision


def _state(ls, tx):
    params = nets.from_layers(mlp.init(jax.random.key(3), [4, 8, 3], "he"))
    x = jax.random.normal(jax.random.key(4), (16, 4))
    return mp.State(params=params, opt_state=tx.init(params), loss_scale=ls), (x, jnp.arange(16) % 3)


def test_fp32_step_is_the_plain_adam_step():
    tx = optax.adam(1e-2)
    state, batch = _state(precision.static_loss_scale(1.0), tx)
    new, m = mp.make_train_step(tx, precision.policy_for("fp32"), period=10)(state, batch)
    grads = jax.grad(lambda p: mlp.loss(nets.to_layers(p), *batch, "relu"))(state.params)
    updates, _ = tx.update(grads, state.opt_state, state.params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
                 new.params, optax.apply_updates(state.params, updates))
    assert float(m["finite"]) == 1.0 and float(new.loss_scale.scale) == 1.0


def test_fp16_overflow_is_skipped_and_halves_the_scale():
    tx = optax.adam(1e-2)
    state, batch = _state(precision.loss_scale_init(2.0 ** 40), tx)    # S·δ overflows fp16's 65,504
    step = mp.make_train_step(tx, precision.policy_for("fp16"), period=10)
    new, m = step(state, batch)
    assert float(m["finite"]) == 0.0 and int(new.loss_scale.skipped) == 1
    assert float(new.loss_scale.scale) == 2.0 ** 39
    jax.tree.map(np.testing.assert_array_equal, new.params, state.params)   # the update was not applied
    ok, _ = step(state.replace(loss_scale=precision.loss_scale_init(2.0 ** 10)), batch)
    assert int(ok.loss_scale.skipped) == 0 and int(ok.loss_scale.good_steps) == 1
    assert ok.params["layer_0"]["kernel"].dtype == jnp.float32                         # master weights stay float32


def test_measure_on_a_fitted_net():
    params = mlp.init(jax.random.key(0), [4, 16, 3], "he")
    params = [params[0], {"w": params[1]["w"] * 40.0, "b": params[1]["b"]}]   # confident: p ≈ onehot
    x = jax.random.normal(jax.random.key(1), (64, 4))
    y = mlp.forward(params, x, "relu")[0].argmax(-1)
    row, ref = mp.measure(params, x, y, 2.0 ** 20)
    assert len(ref) == 2 and row["loss_scale"] == 2.0 ** 20
    assert row["fp16_flushed"] > 0.05 and row["fp16_scaled_flushed"] < row["fp16_flushed"] and row["bf16_flushed"] == 0


def test_supports_reads_the_last_row():
    good = {"fp16_flushed": 0.3, "fp16_scaled_flushed": 0.01, "fp16_scaled_overflow": 0.0, "bf16_flushed": 0.0}
    assert mp.supports([{}, good])
    assert not mp.supports([good, {**good, "fp16_flushed": 0.01}])
    assert not mp.supports([{**good, "fp16_scaled_flushed": 0.2}])      # more than half still flushed
    assert not mp.supports([{**good, "fp16_scaled_overflow": 0.5}])


def test_quick_writes_result_json_and_png(tmp_path):
    rc = cli.main(["lesson", "mixed_precision", "--quick", "--out", str(tmp_path), "--no-progress", "--steps", "300",
                   "n_train=512"])
    assert rc == 0
    res = json.loads((tmp_path / "result.json").read_text())
    assert [r["step"] for r in res["rows"]] == [1, 150, 300]
    assert res["rows"][-1]["fp16_flushed"] > res["rows"][0]["fp16_flushed"]       # δ shrink as the net fits
    assert res["supported"] is mp.supports(res["rows"])
    assert (tmp_path / "mixed_precision.png").read_bytes()[:4] == b"\x89PNG"
