"""The hand-written MLP backward (the generalised delta rule, Rumelhart et al. 1986, eqs. 13–14) equals
jax.grad and central finite differences in float64, for every activation."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lineage_jax.foundations import gradcheck, mlp


def _net(seed, sizes, batch=6):
    kp, kx, ky, kb = jax.random.split(jax.random.key(seed), 4)
    params = mlp.init(kp, sizes, "lecun", jnp.float64)
    params = [{"w": p["w"], "b": 0.3 * jax.random.normal(k, p["b"].shape, jnp.float64)}
              for p, k in zip(params, jax.random.split(kb, len(params)))]
    x = jax.random.normal(kx, (batch, sizes[0]), jnp.float64)
    return params, x, jax.random.randint(ky, (batch,), 0, sizes[-1])


@pytest.mark.parametrize("act", ["tanh", "sigmoid", "relu", "linear"])
@pytest.mark.parametrize("sizes", [[3, 2], [2, 7, 3], [5, 4, 6, 3, 4]])
def test_hand_backward_equals_jax_grad_and_finite_differences(act, sizes):
    with jax.enable_x64(True):
        params, x, y = _net(11 + len(sizes), sizes)
        loss, hand = mlp.loss_and_grad(params, x, y, act)
        np.testing.assert_allclose(loss, mlp.loss(params, x, y, act), rtol=1e-14)
        auto = jax.grad(mlp.loss)(params, x, y, act)
        assert gradcheck.relative_error(hand, auto) < 1e-13
        loss_fn = jax.jit(mlp.loss, static_argnums=3)
        numeric = gradcheck.central_differences(lambda p: loss_fn(p, x, y, act), jax.tree.map(np.asarray, params))
        assert gradcheck.relative_error(hand, numeric) < 1e-7
        assert hand[0]["w"].dtype == jnp.float64


def test_input_deltas_are_the_gradients_of_the_pre_activations():
    """δ_l = ∂E/∂a_l: autodiff through a zero added to each pre-activation gives the same arrays."""
    with jax.enable_x64(True):
        params, x, y = _net(3, [4, 5, 5, 3])
        f = mlp.ACTIVATIONS["sigmoid"][0]

        def loss_with_taps(taps):
            h = x
            for l, (p, t) in enumerate(zip(params, taps)):
                a = h @ p["w"] + p["b"] + t
                h = a if l == len(params) - 1 else f(a)
            return mlp.softmax_cross_entropy(h, y)[0]
        taps = [jnp.zeros((6, p["w"].shape[1]), jnp.float64) for p in params]
        for d, g in zip(mlp.input_deltas(params, x, y, "sigmoid"), jax.grad(loss_with_taps)(taps)):
            np.testing.assert_allclose(d, g, rtol=1e-12, atol=1e-15)


def test_init_scales_and_bad_scheme():
    for scheme, var in (("glorot", 2 / (400 + 300)), ("lecun", 1 / 400), ("he", 2 / 400)):
        w = mlp.init(jax.random.key(0), [400, 300], scheme)[0]["w"]
        assert abs(float(w.var()) / var - 1) < 0.02, scheme
    with pytest.raises(ValueError, match="allowed: glorot, lecun, he"):
        mlp.init(jax.random.key(0), [2, 2], "xavier")


def test_accuracy_is_exactly_one_when_all_are_right():
    params = [{"w": jnp.eye(2, dtype=jnp.float32), "b": jnp.zeros(2)}]
    x = jnp.asarray(np.random.default_rng(0).normal(size=(194, 2)), jnp.float32)
    y = x.argmax(-1)
    assert float(jax.jit(mlp.accuracy, static_argnums=3)(params, x, y, "tanh")) == 1.0
    assert float(mlp.accuracy(params, x, 1 - y, "tanh")) == 0.0
