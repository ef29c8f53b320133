"""The digit-diffusion train step: under FSDP on 8 emulated devices (kernels split by output channel at rest)
it equals one device; a bad config is one line, before anything compiles."""
import flax.linen as nn
import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from lineage_jax.config import ConfigError
from lineage_jax.imagegen import setup as S

TINY = S.DiffusionConfig(base=8, mults="1", groups=2, timesteps=100, batch=16, lr=1e-3)   # a short compile


def test_fsdp_train_step_on_8_devices_equals_one_device():
    x = jax.random.uniform(jax.random.key(1), (16, *S.IMAGE), minval=-1, maxval=1)
    digits = np.arange(16) % 10
    results = {}
    for name, devices, how in (("one", jax.devices()[:1], "dp"), ("fsdp8", jax.devices(), "fsdp")):
        mesh = S.mesh_over(devices)
        boxed = S.init_params(TINY, jax.random.key(0))     # fresh buffers: the step donates its state
        step, ss = S.jit_train_step(TINY, boxed, mesh, how)
        state = jax.device_put(S.init_state(TINY, nn.unbox(boxed)), ss)
        if how == "fsdp":   # really split at rest: the first convolution's kernel over its output channels
            assert state.params["conv_in"]["kernel"].sharding.spec == P(None, None, None, "data")
            assert state.opt_state[0].mu["conv_in"]["kernel"].sharding.spec == P(None, None, None, "data")
            assert state.params["conv_out"]["kernel"].sharding.spec == P(None, None, None, None)   # 1 channel
        for s in range(2):
            state, loss = step(state, x, digits, jax.random.key(10 + s))
        results[name] = (jax.device_get(state), float(loss))
    (s1, l1), (s8, l8) = results["one"], results["fsdp8"]
    np.testing.assert_allclose(l8, l1, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(s8), jax.tree.leaves(s1)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


def test_batch_must_split_over_the_devices():
    with pytest.raises(ConfigError, match=r"^batch=12: does not split over the 8 devices; use a multiple of 8$"):
        S.check_batch(12, S.mesh_over())


@pytest.mark.parametrize("kw, msg", [
    (dict(space="pixels"), r"^space='pixels': allowed pixel, latent$"),
    (dict(mults="1,x"), r"^mults=1,x: comma-separated positive integers"),
    (dict(p_uncond=1.0), r"^p_uncond=1.0: must be in \[0, 1\)"),
    (dict(base=12, groups=8), r"groups=8: must divide"),
    (dict(schedule="cos"), r"schedule"),
])
def test_bad_config_is_one_line(kw, msg):
    with pytest.raises(ConfigError, match=msg) as e:
        S.DiffusionConfig(**kw)
    assert "\n" not in str(e.value)
