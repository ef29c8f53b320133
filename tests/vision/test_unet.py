"""The U-Net ε-model: shapes, logical names, ε̂ = 0 at init; its DDPM train step (L_simple, Adam)
lowers the loss, and data parallel over 8 emulated devices equals one device."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from lineage_jax import diffusion as D
from lineage_jax.config import ConfigError
from lineage_jax.vision import UNet, UNetConfig, eps_model, timestep_embedding

CFG = UNetConfig(image_size=8, channels=1, base=16, mults=(1, 2), groups=4, num_classes=3)
ONE_LEVEL = UNetConfig(image_size=8, channels=1, base=8, mults=(1,), groups=2, num_classes=3)   # a cheaper compile
SCHED = D.make_schedule("linear", 100)


def setup(batch=16, cfg=CFG):
    x = jax.random.uniform(jax.random.key(0), (batch, 8, 8, 1), minval=-1, maxval=1)
    labels = jnp.arange(batch) % 3 + 1
    boxed = jax.jit(UNet(cfg).init)(jax.random.key(1), x, jnp.zeros((batch,), jnp.int32), labels)["params"]
    return x, labels, boxed


def make_step(tx, cfg=CFG):
    eps = eps_model(cfg)

    def step(params, opt, x, labels, key):
        loss, g = jax.value_and_grad(D.ddpm_loss, argnums=1)(eps, params, SCHED, x, key, labels, 0, 0.1)
        updates, opt = tx.update(g, opt, params)
        return optax.apply_updates(params, updates), opt, loss
    return step


def test_shapes_names_and_zero_output_at_init():
    x, labels, boxed = setup(4)
    specs = jax.tree.leaves(nn.get_partition_spec(boxed), is_leaf=lambda s: isinstance(s, P))
    leaves = jax.tree.leaves(nn.unbox(boxed))
    assert len(specs) == len(leaves) and all(len(s) == leaf.ndim for s, leaf in zip(specs, leaves))
    out = jax.jit(eps_model(CFG))(nn.unbox(boxed), x, jnp.array([0, 5, 50, 99]), labels)
    assert out.shape == x.shape and float(jnp.abs(out).max()) == 0.0    # conv_out starts at zero
    e = timestep_embedding(jnp.array([0, 7]), 16)
    assert e.shape == (2, 16) and np.allclose(np.asarray(e[0, 8:]), 1.0)   # cos(0) = 1


def test_dp_train_step_on_8_devices_equals_one_device():
    """On the one-level U-Net (the same blocks, mid attention included; the default suite's compile budget)."""
    x, labels, boxed = setup(16, ONE_LEVEL)
    params = nn.unbox(boxed)
    tx = optax.adam(2e-3)
    step = make_step(tx, ONE_LEVEL)
    # one device
    p1, o1, l1 = jax.jit(step)(params, tx.init(params), x, labels, jax.random.key(2))
    # data parallel: the batch split over 8 devices, parameters replicated (GSPMD inserts the gradient all-reduce)
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
    rep, shard = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    put = lambda tree, s: jax.device_put(tree, s)
    p8, o8, l8 = jax.jit(step)(put(params, rep), put(tx.init(params), rep), put(x, shard), put(labels, shard),
                               jax.random.key(2))
    np.testing.assert_allclose(float(l8), float(l1), rtol=1e-5)
    for a, b in zip(jax.tree.leaves(p8), jax.tree.leaves(p1)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_train_steps_lower_the_loss():
    x, labels, boxed = setup(16)
    params, tx = nn.unbox(boxed), optax.adam(2e-3)
    jstep, opt, losses = jax.jit(make_step(tx)), tx.init(params), []
    for i in range(25):
        params, opt, loss = jstep(params, opt, x, labels, jax.random.key(100 + i))
        losses.append(float(loss))
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])


def test_bad_config_is_one_line():
    with pytest.raises(ConfigError, match="groups=8: must divide"):
        UNetConfig(base=12, groups=8)
    with pytest.raises(ConfigError, match="image_size=6"):
        UNetConfig(image_size=6, mults=(1, 2, 2))
