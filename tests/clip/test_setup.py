"""CLIP's train step laid out by the project's strategies: under DP and under FSDP (ZeRO-3: parameters
and optimiser state split over 8 emulated devices) two steps equal the same steps on one device;
a strategy, batch or width that does not fit is one line before compilation."""
import jax
import numpy as np
import pytest

from lineage_jax.clip import setup, train
from lineage_jax.clip.model import CLIPConfig
from lineage_jax.config import ConfigError
from lineage_jax.vision import ViTConfig
import parallel

CFG = CLIPConfig(vocab_size=12, context=6, text_width=32, text_layers=1, text_heads=2, embed_dim=16,
                 image=ViTConfig(image_size=16, patch_size=8, width=32, depth=1, heads=2, mlp_dim=64))
B = 16


def batch():
    rng = np.random.default_rng(0)
    tokens = np.zeros((B, 6), np.int32)
    tokens[:, :3] = rng.integers(3, 12, (B, 3))
    tokens[:, 3] = 1
    return {"image": rng.integers(0, 256, (B, 16, 16, 3), dtype=np.uint8), "tokens": tokens}


def run(strategy, devices):
    # ε large enough that Adam's g/√v does not blow float32 rounding of near-zero gradients up to ±lr
    tx = train.make_optimizer(lr=1e-3, steps=10, warmup=0, eps=1e-3)
    s = setup.build(CFG, tx, strategy=strategy, batch_size=B, devices=devices)
    state = s.init_state(jax.random.key(0))
    step = s.jit_step(train.make_train_step(s.model, tx))
    losses = []
    for _ in range(2):
        state, m = step(state, s.put_batch(batch()))
        losses.append(float(m["loss"]))
    return s, state, losses


@pytest.fixture(scope="module")
def one_device():
    return run("DP", jax.devices()[:1])


def check_equal(sharded, one):
    (_, s8, l8), (_, s1, l1) = sharded, one
    np.testing.assert_allclose(l8, l1, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(jax.device_get(s8.params)), jax.tree.leaves(jax.device_get(s1.params))):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-5)


def test_dp_step_on_8_devices_equals_one_device(one_device):
    sharded = run("DP", None)
    assert sharded[0].mesh.shape["data"] == 8
    assert sharded[1].params["text"]["wte"].sharding.is_fully_replicated
    check_equal(sharded, one_device)
    assert one_device[2][1] < one_device[2][0]          # and it learns


@pytest.mark.slow
def test_fsdp_step_on_8_devices_equals_one_device(one_device):
    sharded = run("FSDP", None)
    wte = sharded[1].params["text"]["wte"]
    assert wte.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp")    # embed split over 8: at rest
    assert wte.addressable_shards[0].data.shape == (12, 4)
    check_equal(sharded, one_device)


def test_fsdp_layout_and_errors_before_compiling():
    tx = train.make_optimizer()
    s = setup.build(CFG, tx, strategy="FSDP", batch_size=B)
    assert s.state_sharding.params["visual"]["cls"].spec == jax.sharding.PartitionSpec("fsdp")
    with pytest.raises(ConfigError, match="strategy='ZeRO-9': allowed"):
        setup.build(CFG, tx, strategy="ZeRO-9", batch_size=B)
    with pytest.raises(parallel.MeshError, match="batch_size"):
        setup.build(CFG, tx, strategy="DP", batch_size=12)
    with pytest.raises(parallel.MeshError):
        setup.build(CLIPConfig(text_width=36, text_heads=4), tx, strategy="FSDP", batch_size=B)
