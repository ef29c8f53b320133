"""The alexnet lesson: its net split between two towers on a 2-device mesh equals one device; its data-parallel
gradient on 8 emulated devices equals one device's; ``lineage lesson alexnet --quick`` writes a result.json
whose verdict follows its rows (skipped without scikit-learn's digits)."""
import importlib.util
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, Mesh
from jax.sharding import PartitionSpec as P

import parallel
from lineage_jax import cli
from lineage_jax.config import UserError
from lineage_jax.data import digits
from lineage_jax.foundations import alexnet as ax
from lineage_jax.foundations import nets
from lineage_jax.lessons import alexnet as lesson


def _batch(n=16):
    x = jax.random.uniform(jax.random.key(5), (n, 8, 8, 1))
    return x, jax.random.randint(jax.random.key(6), (n,), 0, 10)


def test_the_lessons_net_on_two_devices_equals_one_device():
    params = lesson.init(jax.random.key(0), 8, 12, 16, 8, 32)
    x, _ = _batch()
    mesh = Mesh(np.asarray(jax.devices()[:2]), ("tower",), axis_types=(AxisType.Auto,))
    layers = nets.to_layers(params)          # tower_body reads [{"w", "b"}, …]
    # the split is read off the logical names: every output-channel axis is "mlp", mapped to the tower axis
    with nn.logical_axis_rules([("mlp", "tower"), ("embed", None)]):
        named = nn.logical_to_mesh(nn.get_partition_spec(
            jax.eval_shape(lesson.model_for(params).init, jax.random.key(0), x)))["params"]
    specs = nets.to_layers(named)
    assert specs == jax.tree.map(lambda a: P(*[None] * (a.ndim - 1), "tower"), layers)
    body = lambda p, x: ax.tower_body(p, x, lesson.LAYOUT, "tower", pool_padding=lesson.POOL)
    two = jax.jit(jax.shard_map(body, mesh=mesh, in_specs=(specs, P()), out_specs=P(None, "tower"), check_vma=False))
    np.testing.assert_allclose(two(layers, x), jax.jit(lesson.logits)(params, x), rtol=1e-5, atol=1e-5)


def test_data_parallel_on_8_devices_equals_one_device():
    params = lesson.init(jax.random.key(1), 8, 12, 16, 8, 32)
    x, y = _batch(32)
    mesh = parallel.make_mesh({"data": -1})

    def body(p, xs, ys):
        return jax.lax.pmean(jax.value_and_grad(lesson.loss_fn)(p, xs, ys), "data")
    loss8, grads8 = jax.jit(jax.shard_map(body, mesh=mesh, in_specs=(P(), P("data"), P("data")),
                                          out_specs=P(), check_vma=False))(params, x, y)
    loss1, grads1 = jax.jit(jax.value_and_grad(lesson.loss_fn))(params, x, y)   # jitted: one compile, not one per op
    np.testing.assert_allclose(loss8, loss1, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), grads8, grads1)


def test_dropout_only_in_training():
    params = lesson.init(jax.random.key(2), 8, 12, 16, 8, 32)
    x, _ = _batch()
    plain = lesson.logits(params, x)
    np.testing.assert_array_equal(lesson.logits(params, x, key=None, rate=0.5), plain)
    assert not np.allclose(lesson.logits(params, x, key=jax.random.key(0), rate=0.5), plain)


def test_odd_channels_are_refused():
    with pytest.raises(UserError, match=r"^c2=7: must be even"):
        lesson.Config(c2=7)


def test_quick_writes_result_json_and_png(tmp_path):
    try:
        digits.digits_csv()
    except UserError:
        pytest.skip("scikit-learn (its bundled digits file) is not installed")
    rc = cli.main(["lesson", "alexnet", "--quick", "--out", str(tmp_path / "o"), "--no-progress", "--steps", "60",
                   f"data_dir={tmp_path / 'tfds'}"])
    assert rc == 0
    res = json.loads((tmp_path / "o" / "result.json").read_text())
    d = res["details"]
    assert d["n_train"] + d["n_test"] == 1797 and sum(map(sum, d["confusion"])) == d["n_test"]
    assert res["rows"][-1]["test_accuracy"] > 0.3 and res["supported"] is lesson.supports(res["rows"])
    assert (tmp_path / "o" / "alexnet.png").read_bytes()[:4] == b"\x89PNG"


def test_without_scikit_learn_the_cli_says_so_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    rc = cli.main(["lesson", "alexnet", "--quick", "--out", str(tmp_path / "o"), f"data_dir={tmp_path / 'tfds'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err == ["error: the digits images ship with scikit-learn, which is not installed: "
                               "pip install scikit-learn (only its bundled data file is read)"]
