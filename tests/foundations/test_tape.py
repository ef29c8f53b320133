"""The tape autodiff written here (reverse mode over a graph of primitives, Linnainmaa 1970) equals
jax.grad on every primitive (broadcasting included), on shared subexpressions, and on the MLP."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lineage_jax.foundations import gradcheck, mlp, tape

RNG = np.random.default_rng(7)
A, B, C = RNG.normal(size=(3, 4)), RNG.normal(size=(4,)), RNG.normal(size=(4, 2))
POS = np.abs(RNG.normal(size=(3, 4))) + 0.5


@pytest.mark.parametrize("name,ours,theirs,args", [
    ("add-broadcast", lambda a, b: tape.sum(tape.tanh(a + b)), lambda a, b: jnp.tanh(a + b).sum(), (A, B)),
    ("mul-broadcast", lambda a, b: tape.sum(a * b * a), lambda a, b: (a * b * a).sum(), (A, B)),
    ("div", lambda a, p: tape.mean(a / p), lambda a, p: (a / p).mean(), (A, POS)),
    ("rdiv-rsub", lambda a, p: tape.sum(1.0 / p - a), lambda a, p: (1.0 / p - a).sum(), (A, POS)),
    ("matmul", lambda a, c: tape.sum(tape.sigmoid(a @ c)), lambda a, c: jax.nn.sigmoid(a @ c).sum(), (A, C)),
    ("exp-log", lambda a, p: tape.sum(tape.log(p) * tape.exp(a)), lambda a, p: (jnp.log(p) * jnp.exp(a)).sum(),
     (A, POS)),
    ("relu-neg", lambda a, b: tape.sum(tape.relu(-a) * b), lambda a, b: (jnp.maximum(-a, 0) * b).sum(), (A, B)),
    ("sum-axis", lambda a, b: tape.sum(tape.sum(a, axis=0) * b), lambda a, b: (a.sum(0) * b).sum(), (A, B)),
    ("keepdims", lambda a, p: tape.sum(tape.sum(a, axis=1, keepdims=True) * p),
     lambda a, p: (a.sum(1, keepdims=True) * p).sum(), (A, POS)),
    ("scalar", lambda a, b: tape.sum(a) * tape.sum(a) - tape.sum(b), lambda a, b: a.sum() ** 2 - b.sum(), (A, B)),
])
def test_each_primitive_equals_jax_grad(name, ours, theirs, args):
    with jax.enable_x64(True):
        value, grads = tape.grad(ours, *args)
        np.testing.assert_allclose(value, theirs(*args), rtol=1e-12)
        for g, ref in zip(grads, jax.grad(theirs, argnums=tuple(range(len(args))))(*args)):
            assert g.shape == np.shape(ref)
            np.testing.assert_allclose(g, ref, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("sa,sb", [((4,), (4, 3)), ((3, 4), (4,)), ((4,), (4,)), ((1, 4), (4, 1))])
def test_matmul_with_vectors_equals_jax_grad(sa, sb):
    a, b = RNG.normal(size=sa), RNG.normal(size=sb)
    with jax.enable_x64(True):
        value, (ga, gb) = tape.grad(lambda a, b: tape.sum(tape.tanh(a @ b)), a, b)
        ra, rb = jax.grad(lambda a, b: jnp.tanh(a @ b).sum(), argnums=(0, 1))(a, b)
        np.testing.assert_allclose(value, jnp.tanh(a @ b).sum(), rtol=1e-12)
        np.testing.assert_allclose(ga, ra, rtol=1e-12)
        np.testing.assert_allclose(gb, rb, rtol=1e-12)
    with pytest.raises(ValueError, match="1-D or 2-D operands only"):
        tape.Var(np.ones((2, 2, 2))) @ np.ones((2, 2))


def test_a_shared_node_gets_both_contributions():
    """y = x·x + x uses x three times: dy/dx = 2x + 1, summed over every path (the diamond graph)."""
    value, (g,) = tape.grad(lambda x: x * x + x, np.float64(3.0))
    assert value == 12.0 and float(g) == 7.0
    h = tape.Var(2.0)
    out = tape.tanh(h) * tape.tanh(h)
    order = tape.topological_order(out)
    assert order[-1] is out and order.index(h) < min(i for i, n in enumerate(order) if n is not h)
    tape.backward(out)
    np.testing.assert_allclose(h.grad, 2 * np.tanh(2.0) * (1 - np.tanh(2.0) ** 2), rtol=1e-14)


def test_a_deep_chain_does_not_recurse():
    """A 5,000-node chain: the topological order is iterative, so no RecursionError."""
    def f(x):
        for _ in range(5000):
            x = x * 1.0001
        return x
    _, (g,) = tape.grad(f, np.float64(1.0))
    np.testing.assert_allclose(g, 1.0001 ** 5000, rtol=1e-10)


def test_backward_needs_a_scalar():
    with pytest.raises(ValueError, match="must be a scalar"):
        tape.backward(tape.Var(np.ones(3)) * 2.0)


@pytest.mark.parametrize("act", ["tanh", "sigmoid", "relu"])
def test_mlp_on_the_tape_equals_the_hand_backward_and_finite_differences(act):
    with jax.enable_x64(True):
        k1, k2, k3 = jax.random.split(jax.random.key(5), 3)
        params = jax.tree.map(np.asarray, mlp.init(k1, [3, 6, 4, 3], "lecun", jnp.float64))
        x = np.asarray(jax.random.normal(k2, (7, 3), jnp.float64))
        y = np.asarray(jax.random.randint(k3, (7,), 0, 3))
        value, (taped,) = tape.grad(lambda p: tape.mlp_loss(p, x, y, act), params)
        loss, hand = mlp.loss_and_grad(params, jnp.asarray(x), jnp.asarray(y), act)
        np.testing.assert_allclose(value, loss, rtol=1e-13)
        assert gradcheck.relative_error(taped, hand) < 1e-13
        numeric = gradcheck.central_differences(lambda p: tape.mlp_loss(p, x, y, act).value, params)
        assert gradcheck.relative_error(taped, numeric) < 1e-7
