"""Inverted dropout (Srivastava et al. 2014) equals flax.linen.Dropout given the same key, keeps E[x], and
the step key is a pure function of (key, step, device)."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from lineage_jax.foundations import dropout as dr


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.8])
@pytest.mark.parametrize("shape", [(7,), (3, 33), (2, 5, 9)])
def test_equals_flax_dropout_with_the_same_key(rate, shape):
    x = jax.random.normal(jax.random.key(1), shape)
    for seed in (0, 17):
        key = jax.random.key(seed)
        ours = dr.dropout(key, x, rate)
        theirs = nn.Dropout(rate).apply({}, x, deterministic=False, rng=key)
        np.testing.assert_array_equal(ours, theirs)
    np.testing.assert_array_equal(dr.dropout(key, x, rate, deterministic=True), x)
    np.testing.assert_array_equal(nn.Dropout(rate).apply({}, x, deterministic=True), x)


def test_inverted_scaling_keeps_the_mean_and_the_keep_fraction():
    x = jnp.ones((200_000,))
    y = dr.dropout(jax.random.key(3), x, 0.3)
    kept = y != 0
    assert abs(float(kept.mean()) - 0.7) < 0.005
    np.testing.assert_allclose(y[kept], 1 / 0.7, rtol=1e-6)       # survivors scaled by 1/p
    assert abs(float(y.mean()) - 1.0) < 0.01                        # E[ỹ] = x
    np.testing.assert_array_equal(dr.dropout(jax.random.key(3), x, 0.0), x)
    np.testing.assert_array_equal(dr.dropout(jax.random.key(3), x, 1.0), jnp.zeros_like(x))
    with pytest.raises(ValueError, match=r"must be in \[0, 1\]"):
        dr.dropout(jax.random.key(3), x, 1.5)


def test_step_key_is_fold_in_of_step_then_device():
    key = jax.random.key(9)
    data = lambda k: np.asarray(jax.random.key_data(k))
    np.testing.assert_array_equal(data(dr.step_key(key, 5)), data(jax.random.fold_in(key, 5)))
    assert not np.array_equal(data(dr.step_key(key, 5)), data(dr.step_key(key, 6)))
    mesh = jax.make_mesh((8,), ("data",))
    per_device = jax.jit(jax.shard_map(lambda k: jax.random.key_data(dr.step_key(k, 5, "data"))[None],
                                       mesh=mesh, in_specs=P(), out_specs=P("data"), check_vma=False))(key)
    per_device = np.asarray(per_device)
    for d in range(8):
        np.testing.assert_array_equal(per_device[d], data(jax.random.fold_in(jax.random.fold_in(key, 5), d)))
    assert len({tuple(np.asarray(r).tolist()) for r in per_device}) == 8
