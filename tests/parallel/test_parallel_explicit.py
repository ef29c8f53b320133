"""The explicit form (``parallel.form=shard_map``): the same GPT inside one ``jax.shard_map``,
every collective one of parallel/collectives.py's, computes what one device computes; and its
compiled HLO holds exactly the collectives the papers draw."""
import collections
import math

import jax
import numpy as np
import pytest

from lineage_jax.config import load_config
from lineage_jax.train.setup import build
from parallel.report.collectives import collectives_by_op
from tests.parallel.test_parallel_gspmd import MODEL, ONE, STRATEGIES, matrix, rel_err, without_key_bias

STEPS = 10
_RUNS: dict = {}


def run(name, precision="fp32", extra=()):
    """Grad proxy (Adam's first moment after one step = 0.1·g), params after all steps, the loss
    trajectory, and the setup; single device = the ordinary (GSPMD-form) step."""
    key = (name, precision, tuple(extra))
    if key in _RUNS:
        return _RUNS[key]
    one = name == "one"
    overrides = (ONE if one else STRATEGIES[name] + ["parallel.form=shard_map"]) + list(extra)
    cfg = load_config("tiny", MODEL + overrides + [f"parallel.precision={precision}"])
    setup = build(cfg, devices=jax.devices()[:1] if one else jax.devices())   # form=shard_map: explicit step
    state = setup.init_state(jax.random.key(0))
    rng = np.random.default_rng(0)
    losses, norms, first = [], [], None
    for _ in range(STEPS):
        state, m = setup.train_step(state, setup.put_batch(rng.integers(0, 257, (8, 33))))
        losses.append(float(m["loss"]))
        norms.append(float(m["grad_norm"]))
        if first is None:
            first = jax.device_get(state.opt_state[1][0].mu)
    _RUNS[key] = out = {"mu": first, "final": jax.device_get(state.params),
                        "losses": np.array(losses), "norms": np.array(norms), "setup": setup}
    return out


# plain DP's explicit form (a psum of gradients) is in the default suite through the packed and
# pipeline tests; its own case here runs with -m slow
@pytest.mark.parametrize("name", matrix(STRATEGIES, fast=("ZeRO-1/data", "ZeRO-3", "DPxFSDPxTP")))
def test_explicit_equals_one_device(name):
    ref, out = run("one"), run(name)
    assert rel_err(out["mu"], ref["mu"]) <= 1e-5                 # the reduced, clipped gradient
    np.testing.assert_allclose(out["norms"][0], ref["norms"][0], rtol=1e-5)   # global norm of shards
    np.testing.assert_allclose(out["losses"], ref["losses"], rtol=1e-4)
    assert rel_err(without_key_bias(out["final"]), without_key_bias(ref["final"])) <= 1e-4


def test_explicit_bf16_tracks_one_device_bf16():
    one, dp = run("one", "bf16"), run("DPxFSDPxTP", "bf16")
    assert all(p.dtype == np.float32 for p in jax.tree.leaves(dp["final"]))
    np.testing.assert_allclose(dp["losses"], one["losses"], rtol=2e-2)


@pytest.mark.slow   # tests/train/test_train.py proves accumulation = the full batch
def test_explicit_grad_accum_equals_one_device():
    """Micro-batches are split per device (each device's rows r mod A): the same mean gradient."""
    ref, out = run("one", extra=("train.grad_accum=2",)), run("TP+SP", extra=("train.grad_accum=2",))
    assert rel_err(out["mu"], ref["mu"]) <= 1e-5
    np.testing.assert_allclose(out["losses"], ref["losses"], rtol=1e-4)


# --------------------------------------------------------------------------- collective budget

def ops(name, extra=()):
    return collectives_by_op(run(name, extra=extra)["setup"].train_step.as_text())


def count(o, kind, in_loop):
    return sum(1 for x in o if x["kind"] == kind and x["in_loop"] == in_loop)


def test_tp_four_all_reduces_per_layer():
    """Megatron: g after attention and after the MLP forward, f's all-reduce before each backward."""
    o = ops("TP")
    assert count(o, "all-reduce", True) == 4
    assert all(x["kind"] == "all-reduce" for x in o)
    assert {x["trip_count"] for x in o if x["in_loop"]} == {2}


def test_sp_gathers_and_scatters_no_all_reduce_in_layer():
    """Korthikanti: each f/g becomes an all-gather + reduce-scatter pair over the sequence."""
    o = ops("TP+SP")
    assert count(o, "all-reduce", True) == 0
    assert count(o, "all-gather", True) == 4 and count(o, "reduce-scatter", True) == 4


def test_zero3_gathers_per_layer_inside_the_loop():
    """ZeRO-3: each layer's fsdp-sharded parameters are all-gathered inside the scan forward and
    their gradients reduce-scattered inside the backward scan; with remat the backward gathers anew."""
    setup = run("ZeRO-3")["setup"]
    specs = jax.tree.leaves(setup.logical_specs["blocks"], is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
    n = sum("embed" in tuple(s) for s in specs)        # 12: q, k, v, out (+bias), fc, proj (+bias), 2 LayerNorms × 2
    o = ops("ZeRO-3")
    assert count(o, "all-gather", True) == n and count(o, "reduce-scatter", True) == n
    assert count(o, "all-reduce", True) == 0
    r = ops("ZeRO-3", extra=("model.remat=full",))
    assert n < count(r, "all-gather", True) <= 2 * n and count(r, "reduce-scatter", True) == n


def test_dp_gradient_all_reduce_is_the_parameter_bytes_once():
    """One flat bucket: the tied embedding's gradient (lookup + logits) is reduced once."""
    setup = run("DP")["setup"]
    param_bytes = sum(math.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(setup.abstract_state().params))
    o = ops("DP")
    big = [x for x in o if x["bytes"] > 64]
    assert [x["kind"] for x in big] == ["all-reduce"] and big[0]["bytes"] == param_bytes
    assert collections.Counter(x["kind"] for x in o) == {"all-reduce": len(o)}
