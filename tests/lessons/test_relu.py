"""The relu lesson: its measurements at initialisation against hand values, and ``lineage lesson relu
--quick`` writing a result.json whose verdict follows its rows."""
import json

import jax
import jax.numpy as jnp
import numpy as np

from lineage_jax import cli
from lineage_jax.foundations import mlp
from lineage_jax.lessons import relu


def test_sigmoid_gradient_vanishes_and_relu_zeroes_half_the_units_at_init():
    x, y = relu.random_labels(3, 256, 16, 5)
    sizes = [16] + [48] * 10 + [5]
    sig = relu.at_init(mlp.init(jax.random.key(4), sizes, "glorot"), x, y, "sigmoid")
    assert sig["norms"][0] / sig["norms"][-1] < 1e-3 and sig["zero_fraction"] == 0.0
    assert all(a > b for a, b in zip(sig["norms"][1:], sig["norms"][:-1]))   # shrinking towards the input
    r = relu.at_init(mlp.init(jax.random.key(4), sizes, "he"), x, y, "relu")
    assert 0.4 < r["zero_fraction"] < 0.6


def test_zero_fraction_by_hand():
    """One hidden layer with weights ±1 on a single input: exactly the units with negative pre-activation
    are zero."""
    params = [{"w": jnp.array([[1.0, -1.0, 2.0, -3.0]]), "b": jnp.zeros(4)}, {"w": jnp.ones((4, 2)), "b": jnp.zeros(2)}]
    out = relu.at_init(params, jnp.array([[1.0], [-1.0]]), jnp.array([0, 1]), "relu")
    assert out["zero_fraction"] == 0.5 and len(out["norms"]) == 2


def test_supports_reads_the_rows():
    sig = {"activation": "sigmoid", "first_over_last": 1e-5, "zero_fraction": 0.0, "steps_to_target": None}
    rl = {"activation": "relu", "first_over_last": 0.3, "zero_fraction": 0.5, "steps_to_target": 200}
    assert relu.supports([sig, rl])
    assert not relu.supports([{**sig, "first_over_last": 0.5}, rl])
    assert not relu.supports([sig, {**rl, "zero_fraction": 0.1}])
    assert not relu.supports([sig, {**rl, "steps_to_target": None}])
    assert not relu.supports([{**sig, "steps_to_target": 100}, rl])


def test_quick_writes_result_json_and_png(tmp_path):
    rc = cli.main(["lesson", "relu", "--quick", "--out", str(tmp_path), "--no-progress", "--depth", "6",
                   "--steps", "300", "examples=256"])
    assert rc == 0
    res = json.loads((tmp_path / "result.json").read_text())
    by = {r["activation"]: r for r in res["rows"] if "activation" in r}
    assert set(by) == {"sigmoid", "tanh", "relu"} and res["details"]["config"]["depth"] == 6
    assert by["sigmoid"]["first_over_last"] < by["tanh"]["first_over_last"]
    ratio = res["rows"][-1]
    assert ratio["alexnet"] == 6.0 and res["details"]["tanh_over_relu"] == ratio["measured"]
    assert res["supported"] is relu.supports(res["rows"])
    assert (tmp_path / "relu.png").read_bytes()[:4] == b"\x89PNG"
    np.testing.assert_equal(res["details"]["alexnet_ratio_reproduced"],
                            ratio["measured"] is not None and ratio["measured"] >= 3.0)
