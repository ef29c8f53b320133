"""Batch normalisation (Ioffe & Szegedy 2015, Alg. 1–2): flax.linen.BatchNorm with batch_stats threaded
through a pure step = the formula by hand = torch.nn.BatchNorm1d/2d with the same weights (values and
running statistics, momentum m_torch = 1 − m_flax, torch's running variance unbiased); cross-replica
statistics over 8 devices = one device."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import parallel

from lineage_jax.foundations import batchnorm as bn

EPS = 1e-5


def _flax_bn(momentum, axis_name=None):
    return nn.BatchNorm(momentum=momentum, epsilon=EPS, axis_name=axis_name, use_fast_variance=False)


def _weights(C, seed=0):
    kg, kb = jax.random.split(jax.random.key(seed))
    return 1.0 + 0.3 * jax.random.normal(kg, (C,)), 0.2 * jax.random.normal(kb, (C,))


def _threaded(module, variables, xs):
    """A pure, jitted train step (x, params, batch_stats) -> (y, batch_stats), called once per batch."""
    step = jax.jit(lambda params, stats, x: module.apply({"params": params, "batch_stats": stats}, x,
                                                          use_running_average=False, mutable=["batch_stats"]))
    stats, ys = variables["batch_stats"], []
    for x in xs:
        y, upd = step(variables["params"], stats, x)
        stats, ys = upd["batch_stats"], ys + [y]
    return ys, stats


@pytest.mark.parametrize("shape", [(16, 5), (4, 3, 3, 6)])   # [B, C] and NHWC [B, H, W, C]
def test_flax_batchnorm_threaded_equals_the_formula(shape):
    C, axes, momentum = shape[-1], tuple(range(len(shape) - 1)), 0.8
    gamma, beta = _weights(C)
    xs = [2.0 + 3.0 * jax.random.normal(jax.random.key(i), shape) for i in range(3)]
    module = _flax_bn(momentum)
    variables = module.init(jax.random.key(0), xs[0], use_running_average=False)
    variables = {"params": {"scale": gamma, "bias": beta}, "batch_stats": variables["batch_stats"]}
    ys, stats = _threaded(module, variables, xs)
    rm, rv = jnp.zeros(C), jnp.ones(C)
    n = int(np.prod(shape[:-1]))
    for x, y in zip(xs, ys):
        hand, mean, var = bn.train(x, gamma, beta, axes, EPS)
        np.testing.assert_allclose(y, hand, rtol=1e-5, atol=1e-5)
        rm, rv = bn.update_running(rm, rv, mean, var, n, momentum, "flax")
    np.testing.assert_allclose(stats["mean"], rm, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats["var"], rv, rtol=1e-5, atol=1e-6)
    # eval mode (Alg. 2): the running statistics, not the batch's
    x = xs[0][:2]
    y_eval = module.apply({"params": variables["params"], "batch_stats": stats}, x, use_running_average=True)
    np.testing.assert_allclose(y_eval, bn.normalize(x, rm, rv, gamma, beta, axes, EPS), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(16, 5), (4, 3, 3, 6)])
def test_flax_equals_torch_batchnorm_with_the_same_weights(shape):
    torch = pytest.importorskip("torch")
    C, axes, n = shape[-1], tuple(range(len(shape) - 1)), int(np.prod(shape[:-1]))
    gamma, beta = _weights(C, seed=1)
    xs = [1.0 - 2.0 * jax.random.normal(jax.random.key(10 + i), shape) for i in range(3)]
    module = _flax_bn(momentum=0.9)                                           # flax m = 0.9 ...
    init = module.init(jax.random.key(0), xs[0], use_running_average=False)
    ys, stats = _threaded(module, {"params": {"scale": gamma, "bias": beta}, "batch_stats": init["batch_stats"]}, xs)
    tbn = (torch.nn.BatchNorm1d if len(shape) == 2 else torch.nn.BatchNorm2d)(C, eps=EPS, momentum=0.1)  # ... torch 0.1
    with torch.no_grad():
        tbn.weight.copy_(torch.tensor(np.asarray(gamma)))
        tbn.bias.copy_(torch.tensor(np.asarray(beta)))
    to_torch = lambda x: torch.tensor(np.asarray(x if len(shape) == 2 else x.transpose(0, 3, 1, 2)))
    from_torch = lambda t: t.detach().numpy() if len(shape) == 2 else t.detach().numpy().transpose(0, 2, 3, 1)
    tbn.train()
    rm, rv = np.zeros(C), np.ones(C)
    for x, y in zip(xs, ys):
        np.testing.assert_allclose(from_torch(tbn(to_torch(x))), y, rtol=1e-4, atol=1e-5)
        _, mean, var = bn.train(x, gamma, beta, axes, EPS)
        rm, rv = bn.update_running(rm, rv, mean, var, n, 0.1, "torch")
    np.testing.assert_allclose(tbn.running_mean.numpy(), stats["mean"], rtol=1e-5, atol=1e-6)   # means agree
    np.testing.assert_allclose(tbn.running_var.numpy(), rv, rtol=1e-5)                         # torch: unbiased
    assert not np.allclose(tbn.running_var.numpy(), stats["var"], rtol=1e-4)                   # flax: biased
    # same running statistics in both -> same eval-mode outputs
    with torch.no_grad():
        tbn.running_var.copy_(torch.tensor(np.asarray(stats["var"])))
    tbn.eval()
    x = xs[1]
    y_eval = module.apply({"params": {"scale": gamma, "bias": beta}, "batch_stats": stats}, x,
                          use_running_average=True)
    np.testing.assert_allclose(from_torch(tbn(to_torch(x))), y_eval, rtol=1e-4, atol=1e-5)


def test_cross_replica_batchnorm_on_8_devices_equals_one_device():
    """Each device holds 4 of 32 examples; pmean over the data axis gives the global batch's statistics."""
    mesh = parallel.make_mesh({"data": -1})          # GSPMD-style (Auto) axes: data = 8
    x = 3.0 + jax.random.normal(jax.random.key(7), (32, 3, 5))     # per-device statistics would differ
    x = x * jnp.arange(1, 33)[:, None, None] / 8
    gamma, beta = _weights(5, seed=2)
    axes = (0, 1)
    one_y, one_mean, one_var = bn.train(x, gamma, beta, axes, EPS)

    def hand_body(xs):
        return bn.train(xs, gamma, beta, axes, EPS, axis_name="data")
    y, mean, var = jax.jit(jax.shard_map(hand_body, mesh=mesh, in_specs=P("data"), out_specs=(P("data"), P(), P()),
                                         check_vma=False))(x)
    np.testing.assert_allclose(y, one_y, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(mean, one_mean, rtol=1e-6)
    np.testing.assert_allclose(var, one_var, rtol=1e-5)

    module, sync = _flax_bn(0.9), _flax_bn(0.9, axis_name="data")
    variables = module.init(jax.random.key(0), x, use_running_average=False)
    apply = lambda m: lambda v, xs: m.apply(v, xs, use_running_average=False, mutable=["batch_stats"])
    ref_y, ref_upd = apply(module)(variables, x)
    sh_y, sh_upd = jax.jit(jax.shard_map(apply(sync), mesh=mesh, in_specs=(P(), P("data")),
                                         out_specs=(P("data"), P()), check_vma=False))(variables, x)
    np.testing.assert_allclose(sh_y, ref_y, rtol=1e-5, atol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), sh_upd, ref_upd)
    # without the cross-replica mean each device normalises by its own shard: not the same
    local = jax.jit(jax.shard_map(apply(module), mesh=mesh, in_specs=(P(), P("data")),
                                  out_specs=(P("data"), P()), check_vma=False))(variables, x)[0]
    assert not np.allclose(local, ref_y, atol=1e-2)


def test_update_running_conventions_by_hand():
    rm, rv = bn.update_running(jnp.array([1.0]), jnp.array([2.0]), jnp.array([3.0]), jnp.array([4.0]), 5, 0.9)
    np.testing.assert_allclose([rm[0], rv[0]], [0.9 * 1 + 0.1 * 3, 0.9 * 2 + 0.1 * 4])
    rm, rv = bn.update_running(jnp.array([1.0]), jnp.array([2.0]), jnp.array([3.0]), jnp.array([4.0]), 5, 0.1, "torch")
    np.testing.assert_allclose([rm[0], rv[0]], [0.9 * 1 + 0.1 * 3, 0.9 * 2 + 0.1 * 4 * 5 / 4])
    with pytest.raises(ValueError, match="allowed: flax, torch"):
        bn.update_running(rm, rv, rm, rv, 5, 0.1, "keras")
