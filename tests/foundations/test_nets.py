"""The linen modules of ``foundations/nets.py`` compute what the pure functions compute on the same parameters
(bit for bit where the arithmetic is the same), their gradients equal the hand backward, every parameter
carries logical axis names from the project's vocabulary, and dtype / param_dtype are kept apart."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.core import meta

from lineage_jax.foundations import alexnet as ax
from lineage_jax.foundations import mlp, nets
from lineage_jax.lessons import alexnet as alexnet_lesson
from lineage_jax.foundations.dropout import dropout
from parallel.axes import check_names

SIZES = [5, 12, 12, 3]


def _hand_dropout_forward(layers, x, key, rate):
    """The dropout lesson's forward before the port: one key per layer, split from ``key``."""
    keys, h = jax.random.split(key, len(layers)), x
    for l, p in enumerate(layers):
        h = h @ p["w"] + p["b"]
        if l < len(layers) - 1:
            h = dropout(keys[l], jax.nn.relu(h), rate)
    return h


@pytest.fixture(scope="module")
def data():
    kx, ky = jax.random.split(jax.random.key(11))
    return jax.random.normal(kx, (9, SIZES[0])), jax.random.randint(ky, (9,), 0, SIZES[-1])


@pytest.mark.parametrize("act", ["sigmoid", "tanh", "relu"])
def test_mlp_module_equals_the_hand_forward_and_its_grad_the_hand_backward(data, act):
    x, y = data
    layers = mlp.init(jax.random.key(3), SIZES, "he")
    model = nets.MLP(SIZES[1:], act=act)
    params = nets.from_layers(layers)
    np.testing.assert_array_equal(model.apply({"params": params}, x), mlp.forward(layers, x, act)[0])
    jax.tree.map(np.testing.assert_array_equal, nets.to_layers(params), layers)
    loss = lambda p: mlp.softmax_cross_entropy(model.apply({"params": p}, x), y)[0]
    auto = nets.to_layers(jax.grad(loss)(params))
    _, hand = mlp.loss_and_grad(layers, x, y, act)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), auto, hand)


def test_mlp_dropout_equals_the_hand_dropout_forward_bit_for_bit(data):
    x, _ = data
    layers = mlp.init(jax.random.key(4), SIZES, "he")
    key = jax.random.key(5)
    got = nets.MLP(SIZES[1:], act="relu", rate=0.5).apply({"params": nets.from_layers(layers)}, x, key)
    np.testing.assert_array_equal(got, _hand_dropout_forward(layers, x, key, 0.5))
    plain = nets.MLP(SIZES[1:], act="relu", rate=0.5).apply({"params": nets.from_layers(layers)}, x)
    np.testing.assert_array_equal(plain, mlp.forward(layers, x, "relu")[0])
    assert not np.array_equal(got, plain)


def test_mlp_fp16_compute_with_float32_params_equals_the_cast_hand_forward(data):
    x, _ = data
    layers = mlp.init(jax.random.key(6), SIZES, "he")
    out = nets.MLP(SIZES[1:], act="relu", dtype=jnp.float16).apply({"params": nets.from_layers(layers)}, x)
    ref = mlp.forward(jax.tree.map(lambda a: a.astype(jnp.float16), layers), x.astype(jnp.float16), "relu")[0]
    assert out.dtype == jnp.float16
    np.testing.assert_array_equal(out, ref)


def test_every_parameter_has_logical_names_and_param_dtype_is_storage(data):
    x, _ = data
    variables = nets.MLP(SIZES[1:], param_dtype=jnp.bfloat16).init(jax.random.key(0), x)
    specs = jax.tree.map(tuple, nn.get_partition_spec(variables)["params"],
                         is_leaf=lambda s: isinstance(s, jax.sharding.PartitionSpec))
    assert specs["layer_0"]["kernel"] == ("embed", "mlp") and specs["layer_1"]["kernel"] == ("mlp", "embed")
    assert specs["layer_2"]["kernel"] == ("embed", None) and specs["layer_2"]["bias"] == (None,)
    leaves = jax.tree.leaves(meta.unbox(variables))
    assert leaves and all(a.dtype == jnp.bfloat16 for a in leaves)
    img = jnp.zeros((1, 8, 8, 1))
    cnn = nets.AlexNet(alexnet_lesson.LAYOUT, (4, 4, 4, 4, 8, 8, 10), pool_padding="SAME")
    cnn_vars = jax.eval_shape(cnn.init, jax.random.key(0), img)
    for tree in (variables, cnn_vars):
        boxed = jax.tree.leaves(tree, is_leaf=lambda v: isinstance(v, nn.Partitioned))
        assert all(isinstance(v, nn.Partitioned) for v in boxed)
        for v in boxed:
            check_names(v.names, "foundations.nets")
    assert all(spec[-1] == "mlp" for spec in jax.tree.leaves(nn.get_partition_spec(cnn_vars)["params"],
                                                             is_leaf=lambda s: isinstance(s, jax.sharding.PartitionSpec)))


def test_kernel_init_draws_the_named_variance():
    w = meta.unbox(nets.MLP([256, 256], scheme="he").init(jax.random.key(1), jnp.zeros((1, 128))))["params"]
    np.testing.assert_allclose(float(w["layer_0"]["kernel"].std()), (2 / 128) ** 0.5, rtol=0.03)
    np.testing.assert_allclose(float(w["layer_1"]["kernel"].std()), (2 / 256) ** 0.5, rtol=0.03)
    g = meta.unbox(nets.MLP([256], scheme="glorot").init(jax.random.key(2), jnp.zeros((1, 768))))["params"]
    np.testing.assert_allclose(float(g["layer_0"]["kernel"].std()), (2 / (768 + 256)) ** 0.5, rtol=0.03)
    with pytest.raises(ValueError, match="allowed: glorot, lecun, he"):
        nets.kernel_init("xavier")


def test_alexnet_module_equals_the_towers_function_with_dropout():
    img = jax.random.normal(jax.random.key(7), (3, 8, 8, 1))
    layers = nets.to_layers(alexnet_lesson.init(jax.random.key(8), 4, 8, 8, 4, 16))
    key = jax.random.key(9)
    widths = [p["w"].shape[-1] for p in layers]
    cnn = nets.AlexNet(alexnet_lesson.LAYOUT, widths, rate=0.5, pool_padding="SAME")
    params = nets.from_layers(layers)
    mine = jax.jit(lambda p, k: (cnn.apply({"params": p}, img), cnn.apply({"params": p}, img, k)))
    ref = jax.jit(lambda p, k: tuple(ax.towers(p, img, alexnet_lesson.LAYOUT, key=kk, rate=0.5, pool_padding="SAME")
                                     for kk in (None, k)))
    jax.tree.map(np.testing.assert_array_equal, mine(params, key), ref(layers, key))
    shapes = jax.tree.map(lambda a: a.shape, meta.unbox(jax.eval_shape(cnn.init, jax.random.key(0), img))["params"])
    assert shapes == jax.tree.map(lambda a: a.shape, params)
    with pytest.raises(ValueError, match="not divisible into 2 towers"):
        nets.AlexNet(alexnet_lesson.LAYOUT, (3, 4, 4, 4, 8, 8, 10)).init(jax.random.key(0), img)
