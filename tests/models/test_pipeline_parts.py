"""``models.pipeline_parts``: a decoder cut where a pipeline cuts it (embedding, one scanned unit,
head) composes back into the model. For GPT-2 with MoE groups and for Llama (GQA, untied head),
on plain and on packed rows: embed → every unit of the stack → head gives the model's logits, and
the units' MoE sums give the model's ``moe_metrics`` (the aux loss the pipeline adds on every
stage; the load and drops it averages). The executor's equality with one device is
tests/train/test_pipeline.py; this is its one-device core, without a compile of the step."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lineage_jax import models
from lineage_jax.config import load_config
from lineage_jax.train.step import forward

BASE = ["model.layers=4", "model.scan_layers=true", "model.width=32", "model.heads=4", "model.context=16",
        "model.attn_chunks=2", "model.vocab_multiple=8"]
CASES = {"gpt2-moe": ["model.moe_every=2", "model.experts=4", "model.moe_k=2", "model.moe_router=gshard",
                      "model.capacity_factor=1.0"],
         "llama": ["model.arch=llama", "model.kv_heads=2", "model.tied=false", "model.layers=2"]}


def composed(parts, params, tokens, segment_ids=None, positions=None):
    shared = {k: v for k, v in params.items() if k != "blocks"}
    x = parts.embed(shared, tokens, positions)
    total = {}
    for i in range(jax.tree.leaves(params["blocks"])[0].shape[0]):
        x, st = parts.layer(jax.tree.map(lambda w: w[i], params["blocks"]), x, segment_ids, positions)
        total = jax.tree.map(jnp.add, total, st) if total else st
    return parts.head(shared, x), total


@pytest.mark.parametrize("name", CASES)
def test_parts_compose_into_the_model(name):
    cfg = load_config("tiny", BASE + CASES[name]).model
    model = models.build(cfg)
    tokens = jax.random.randint(jax.random.key(1), (2, 16), 0, 257)
    params = nn.unbox(jax.jit(model.init)(jax.random.key(0), tokens)["params"])   # jitted: one compile, not a dispatch per op
    parts = models.pipeline_parts(cfg)
    cut = jax.jit(functools.partial(composed, parts))
    want, moe = jax.jit(functools.partial(forward, model))(params, tokens)
    got, sums = cut(params, tokens)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    if name == "gpt2-moe":
        n = cfg.layers // cfg.moe_every
        assert parts.moe_layers == 1 and float(moe["moe_dropped"]) > 0      # capacity 1.0 drops tokens
        np.testing.assert_allclose(sums["aux"], moe["moe_aux_loss"], rtol=1e-6)
        np.testing.assert_allclose(sums["load"] / n, moe["moe_load"], rtol=1e-6)
        np.testing.assert_allclose(sums["dropped"] / n, moe["moe_dropped"], rtol=1e-6)
    else:
        assert sums == {} and parts.moe_layers == 0
    # packed rows: two documents per row, positions restarting at the second
    seg = jnp.asarray([[1] * 6 + [2] * 10] * 2)
    pos = jnp.asarray([list(range(6)) + list(range(10))] * 2)
    apply = jax.jit(lambda p, t, s, q: model.apply({"params": p}, t, segment_ids=s, positions=q))
    want = apply(params, tokens, seg, pos)
    packed, _ = cut(params, tokens, seg, pos)
    np.testing.assert_allclose(packed, want, rtol=1e-5, atol=1e-5)
    assert np.abs(np.asarray(packed) - np.asarray(got)).max() > 1e-3   # the segments matter
