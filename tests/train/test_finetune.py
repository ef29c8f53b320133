"""LoRA / QLoRA fine-tuning steps: only adapters are trained state, the base is never touched,
and the same steps under FSDP (ZeRO-3) and DP × TP on 8 emulated devices equal one device."""
import functools

import jax
import numpy as np
import pytest

from lineage_jax.adapt import lora, quant
from lineage_jax.config import load_config
from lineage_jax.train.finetune import build_finetune
from lineage_jax.train.setup import build

BASE = ["model.arch=llama", "model.layers=2", "model.width=64", "model.heads=4", "model.context=16",
        "train.batch_size=8", "train.steps=10", "optim.warmup_steps=0", "model.vocab_multiple=8"]
LCFG = lora.LoraConfig(rank=4, alpha=8.0, targets=("q", "v", "o", "mlp"))


@functools.lru_cache(maxsize=None)
def base_params():
    """The base model's parameters, built once for every test here (one device)."""
    setup = build(load_config("tiny", BASE + ["mesh.data=1"]), compile_steps=False, devices=jax.devices()[:1])
    return jax.device_get(setup.init_state(jax.random.key(0)).params)


@functools.lru_cache(maxsize=None)
def one_device(quant_kind=None):
    return run(["mesh.data=1"], quant_kind=quant_kind, devices=jax.devices()[:1])


def run(extra, steps=3, quant_kind=None, devices=None):
    cfg = load_config("tiny", BASE + extra)
    params = base_params()
    ft = build_finetune(cfg, LCFG, params, quant_kind=quant_kind, devices=devices, compile_eval=False)
    s = ft.setup
    state = s.init_state(jax.random.key(1))
    tokens = np.random.default_rng(0).integers(0, 257, (8, 17))
    losses = []
    for _ in range(steps):
        state, m = s.train_step(state, s.put_batch(tokens))
        losses.append(float(m["loss"]))
    return ft, params, jax.device_get(state), losses


def test_only_adapters_are_state_and_the_base_is_untouched():
    ft, params, state, losses = one_device()
    assert set(state.params["blocks_0"]["attn"]) == {"query", "value", "out"}
    assert jax.tree.leaves(state.params)[0].shape[-1] in (4, 64)
    moments = [x for x in jax.tree.leaves(state.opt_state) if x.ndim]
    assert sum(x.size for x in moments) == 2 * lora.count(state.params)       # Adam mu, nu: adapters only
    for x, y in zip(jax.tree.leaves(jax.device_get(ft.base)), jax.tree.leaves(params)):
        np.testing.assert_array_equal(x, y)                                      # the base never moves
    assert float(np.abs(state.params["blocks_0"]["attn"]["query"]["lora_b"]).max()) > 0
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("mesh", [["mesh.data=1", "mesh.fsdp=-1", "parallel.zero_stage=3"],     # FSDP over 8
                                  pytest.param(["mesh.data=-1", "mesh.tensor=2"], marks=pytest.mark.slow)])  # DP 4 × TP 2
def test_sharded_lora_equals_one_device(mesh):
    _, _, one, l1 = one_device()
    ft, _, many, l8 = run(mesh)
    np.testing.assert_allclose(l8, l1, rtol=1e-5)
    for x, y in zip(jax.tree.leaves(many.params), jax.tree.leaves(one.params)):
        np.testing.assert_allclose(x, y, atol=2e-6)
    sh = ft.setup.state_sharding.params["blocks_0"]["attn"]["query"]
    assert sh["lora_b"].spec != sh["lora_a"].spec        # each factor sharded as its kernel's side is


@pytest.mark.slow
def test_qlora_step_trains_adapters_over_a_frozen_nf4_base():
    ft, params, state, losses = one_device("nf4")
    k = ft.base["blocks_0"]["attn"]["query"]["kernel"]
    assert quant.is_quantized(k) and k.codes.dtype == np.uint8
    assert losses[-1] < losses[0]


@pytest.mark.slow
def test_offloaded_optimiser_state_rests_in_host_memory_and_changes_nothing():
    """``offload_opt_state``: the Adam moments live in ``pinned_host`` memory between steps; the steps
    are the same numbers (on CPU host and device memory are one RAM: placement only)."""
    _, _, one, l1 = one_device()
    cfg = load_config("tiny", BASE + ["mesh.data=1"])
    ft = build_finetune(cfg, LCFG, base_params(), devices=jax.devices()[:1], offload_opt_state=True,
                        compile_eval=False)
    s = ft.setup
    state = s.init_state(jax.random.key(1))
    tokens = np.random.default_rng(0).integers(0, 257, (8, 17))
    losses = []
    for _ in range(3):
        state, m = s.train_step(state, s.put_batch(tokens))
        losses.append(float(m["loss"]))
    kinds = {x.sharding.memory_kind for x in jax.tree.leaves(state.opt_state) if x.ndim}
    assert kinds == {"pinned_host"}
    assert {x.sharding.memory_kind for x in jax.tree.leaves(state.params)} == {"device"}
    np.testing.assert_allclose(losses, l1, rtol=1e-6)
    for x, y in zip(jax.tree.leaves(jax.device_get(state.params)), jax.tree.leaves(one.params)):
        np.testing.assert_allclose(x, y, atol=1e-7)
