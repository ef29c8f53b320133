"""Every GSPMD strategy computes what one device computes: logits, gradients, an optimizer
step and a 10-step loss trajectory; checkpoints move between meshes bitwise."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from lineage_jax.config import load_config
from lineage_jax.runs import checkpoint as ckpt
from lineage_jax.train.setup import build
from lineage_jax.train.step import make_loss_fn
from parallel import MeshError, strategy_for

MODEL = ["model.layers=2", "model.width=64", "model.heads=8", "model.context=32", "model.attn_chunks=2",
         "model.vocab_multiple=8", "model.scan_layers=true", "train.batch_size=8", "train.steps=20",
         "optim.warmup_steps=2", "optim.lr=3e-3"]
ONE = ["mesh.data=1", "mesh.fsdp=1", "mesh.tensor=1"]
STRATEGIES = {
    "DP":         ["mesh.data=8", "mesh.fsdp=1", "mesh.tensor=1"],
    "ZeRO-1":     ["mesh.data=1", "mesh.fsdp=8", "mesh.tensor=1", "parallel.zero_stage=1"],
    "ZeRO-2":     ["mesh.data=1", "mesh.fsdp=8", "mesh.tensor=1", "parallel.zero_stage=2"],
    "ZeRO-3":     ["mesh.data=1", "mesh.fsdp=8", "mesh.tensor=1", "parallel.zero_stage=3"],
    "TP":         ["mesh.data=1", "mesh.fsdp=1", "mesh.tensor=8"],
    "TP+SP":      ["mesh.data=1", "mesh.fsdp=1", "mesh.tensor=8", "parallel.sequence_parallel=true"],
    "FSDPxTP":    ["mesh.data=1", "mesh.fsdp=2", "mesh.tensor=4", "parallel.zero_stage=3"],
    "DPxFSDPxTP": ["mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2", "parallel.zero_stage=3",
                   "parallel.sequence_parallel=true"],
    # ZeRO partitions over every data-parallel axis (data × fsdp), not over fsdp alone
    "ZeRO-1/data":      ["mesh.data=8", "mesh.fsdp=1", "mesh.tensor=1", "parallel.zero_stage=1"],
    "ZeRO-3/data":      ["mesh.data=8", "mesh.fsdp=1", "mesh.tensor=1", "parallel.zero_stage=3"],
    "ZeRO-2/data×fsdp": ["mesh.data=2", "mesh.fsdp=4", "mesh.tensor=1", "parallel.zero_stage=2"],
}


def rel_err(a, b) -> float:
    """Largest leaf-wise ‖a − b‖ / max(‖b‖, 1e-4·‖b‖_tree).

    The floor keeps leaves whose exact value is zero (the key bias's gradient: softmax is
    invariant to a constant added to every key) from dividing rounding noise by noise.
    """
    a, b = (jax.tree.map(lambda x: np.asarray(x, np.float64), jax.device_get(t)) for t in (a, b))
    floor = 1e-4 * float(np.sqrt(sum(np.sum(np.square(y)) for y in jax.tree.leaves(b))))
    errs = jax.tree.map(lambda x, y: float(np.linalg.norm((x - y).ravel()) / max(np.linalg.norm(y.ravel()), floor)), a, b)
    return max(jax.tree.leaves(errs))


def run(overrides, steps=10, precision="fp32"):
    """Logits, gradients, params after one step, and a loss trajectory under one strategy."""
    cfg = load_config("tiny", MODEL + overrides + [f"parallel.precision={precision}"])
    devices = jax.devices()[:1] if overrides is ONE else jax.devices()
    setup = build(cfg, devices=devices)
    state = setup.init_state(jax.random.key(0))
    rng = np.random.default_rng(0)
    batches = [setup.put_batch(rng.integers(0, 257, (8, 33))) for _ in range(steps)]
    loss_fn = make_loss_fn(setup.model, dropout=False)
    with setup.context():
        logits = jax.jit(lambda p, t: setup.model.apply({"params": p}, t[:, :-1])[..., :257],   # real vocab only
                         out_shardings=NamedSharding(setup.mesh, P()))(state.params, batches[0]["tokens"])
        grads = jax.jit(jax.grad(lambda p, t: loss_fn(p, {"tokens": t}, None)[0]),
                        out_shardings=setup.grad_sharding)(state.params, batches[0]["tokens"])
    losses, mu = [], None
    for b in batches:
        state, m = setup.train_step(state, b)
        losses.append(float(m["loss"]))
        mu = jax.device_get(state.opt_state[1][0].mu) if mu is None else mu   # = (1 − b1)·clipped gradient
    return {"logits": logits, "grads": grads, "mu": mu, "final": jax.device_get(state.params),
            "losses": np.array(losses), "setup": setup}


def without_key_bias(params):
    """The key bias's true gradient is exactly zero (softmax ignores a constant added to every
    key): Adam turns each run's rounding noise there into ±lr steps, so it is left out."""
    flat = jax.tree_util.tree_leaves_with_path(params)
    return {jax.tree_util.keystr(p): x for p, x in flat if "'key']['bias'" not in jax.tree_util.keystr(p)}


@pytest.fixture(scope="module")
def reference():
    return run(ONE)


# The default suite runs one strategy of each kind (data parallel, ZeRO over data, ZeRO-3 over fsdp, the
# 3-D mesh with TP+SP); ``-m slow`` runs them all.
FAST = ("DP", "ZeRO-1/data", "ZeRO-3", "DPxFSDPxTP")


def matrix(names, fast=FAST):
    return [pytest.param(n, marks=() if n in fast else pytest.mark.slow) for n in names]


@pytest.mark.parametrize("name", matrix(STRATEGIES))
def test_strategy_equals_one_device(name, reference):
    out = run(STRATEGIES[name])
    assert rel_err(out["logits"], reference["logits"]) <= 1e-5
    assert rel_err(out["grads"], reference["grads"]) <= 1e-5
    assert rel_err(out["mu"], reference["mu"]) <= 1e-5            # one optimizer step's input
    np.testing.assert_allclose(out["losses"], reference["losses"], rtol=1e-4)
    assert rel_err(without_key_bias(out["final"]), without_key_bias(reference["final"])) <= 1e-4


def test_strategies_really_shard():
    """The matrix above is not vacuous: parameters and optimizer state are laid out as the tables say."""
    def spec(overrides, tree, *path):
        setup = build(load_config("tiny", MODEL + overrides), compile_steps=False)
        node = getattr(setup.state_sharding, tree) if tree != "grads" else setup.grad_sharding
        node = node if tree != "opt_state" else node[1][0].mu   # chain(clip, adamw): adam's first moment
        for key in path:
            node = node[key]
        return node.spec

    q = ("blocks", "attn", "query", "kernel")   # logical (layers, embed, heads, kv)
    assert spec(STRATEGIES["DP"], "params", *q) == P(None, None, None, None)
    assert spec(STRATEGIES["ZeRO-1"], "params", *q) == P(None, None, None, None)
    assert spec(STRATEGIES["ZeRO-1"], "opt_state", *q) == P(None, "fsdp", None, None)
    assert spec(STRATEGIES["ZeRO-1"], "grads", *q) == P(None, None, None, None)
    assert spec(STRATEGIES["ZeRO-2"], "grads", *q) == P(None, "fsdp", None, None)
    assert spec(STRATEGIES["ZeRO-3"], "params", *q) == P(None, "fsdp", None, None)
    assert spec(STRATEGIES["TP"], "params", *q) == P(None, None, "tensor", None)
    assert spec(STRATEGIES["FSDPxTP"], "params", *q) == P(None, "fsdp", "tensor", None)
    assert spec(STRATEGIES["TP"], "params", "wte") == P("tensor", None)
    # data=8: ZeRO shards over data as it would over fsdp (a stage never silently does nothing)
    assert spec(STRATEGIES["ZeRO-1/data"], "opt_state", *q) == P(None, "data", None, None)
    assert spec(STRATEGIES["ZeRO-1/data"], "params", *q) == P(None, None, None, None)
    assert spec(STRATEGIES["ZeRO-3/data"], "params", *q) == P(None, "data", None, None)
    assert spec(STRATEGIES["ZeRO-3/data"], "grads", *q) == P(None, "data", None, None)
    mixed = ("data", "fsdp")                    # data=2 × fsdp=4: one dimension over all 8 devices
    assert spec(STRATEGIES["ZeRO-2/data×fsdp"], "grads", *q) == P(None, mixed, None, None)
    assert spec(STRATEGIES["ZeRO-2/data×fsdp"], "opt_state", *q) == P(None, mixed, None, None)
    assert spec(STRATEGIES["ZeRO-2/data×fsdp"], "params", *q) == P(None, None, None, None)
    assert spec(STRATEGIES["DPxFSDPxTP"], "params", *q) == P(None, mixed, "tensor", None)


def test_zero_without_a_data_parallel_axis_is_refused():
    """Nothing to partition over on a multi-device mesh: an error naming the fix, not a no-op."""
    refused = r"zero_stage=1 partitions over .*mesh\.data × mesh\.fsdp.*mesh\.fsdp=-1"
    with pytest.raises(MeshError, match=refused):
        build(load_config("tiny", MODEL + ["mesh.data=1", "mesh.fsdp=1", "mesh.tensor=8", "parallel.zero_stage=1"]),
              compile_steps=False)
    with pytest.raises(MeshError, match=refused):        # expert is a batch axis, but expert weights use it
        strategy_for({"data": 1, "fsdp": 1, "expert": 8, "tensor": 1}, zero_stage=1)
    assert strategy_for({"data": 1, "fsdp": 1, "expert": 1, "tensor": 1}, zero_stage=3).zero_stage == 3   # 1 device


@pytest.mark.slow   # the explicit form's bf16 test runs by default
def test_bf16_policy_tracks_one_device_within_a_looser_bound(reference):
    """bf16 compute with f32 master weights: sharded bf16 equals single-device bf16 to bf16's
    precision (2e-2 on the loss), and stays near the f32 run (5e-2)."""
    one = run(ONE, precision="bf16")
    dp = run(STRATEGIES["DPxFSDPxTP"], precision="bf16")
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(dp["final"]))
    np.testing.assert_allclose(dp["losses"], one["losses"], rtol=2e-2)
    np.testing.assert_allclose(one["losses"], reference["losses"], rtol=5e-2)


@pytest.mark.parametrize("target", [["mesh.data=1", "mesh.fsdp=4", "mesh.tensor=2", "parallel.zero_stage=3"],
                                    ["mesh.data=4", "mesh.fsdp=1", "mesh.tensor=1"]])
def test_checkpoint_reshards_bitwise(tmp_path, target):
    """Written under fsdp=8 (ZeRO-3), restored under tensor=2 × fsdp=4, or on 4 devices."""
    source = build(load_config("tiny", MODEL + STRATEGIES["ZeRO-3"]), compile_steps=False)
    state = source.init_state(jax.random.key(3))
    with ckpt.manager(tmp_path, async_save=False) as m:
        ckpt.save(m, 1, state, {"data_position": 8})
    devices = jax.devices()[:4] if "mesh.data=4" in target else jax.devices()
    dest = build(load_config("tiny", MODEL + target), compile_steps=False, devices=devices)
    with ckpt.manager(tmp_path, create=False, async_save=False) as m:
        restored, meta = ckpt.restore(m, 1, dest.abstract_state())
    chex.assert_trees_all_equal(jax.device_get(restored), jax.device_get(state))
    for leaf, sharding in zip(jax.tree.leaves(restored), jax.tree.leaves(dest.state_sharding)):
        assert leaf.sharding.is_equivalent_to(sharding, leaf.ndim)
    assert meta["data_position"] == 8
