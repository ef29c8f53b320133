"""Profiles and HLO dumps read by block: every op of a train step's gradient carries its module
path (Flax's named scopes) and the named part it belongs to (attention kernel, MoE routing/experts)."""
import dataclasses
import re

import jax
import jax.numpy as jnp
import pytest

from lineage_jax.config import ModelConfig
from lineage_jax.models import build

BASE = ModelConfig(vocab_size=64, context=16, layers=2, width=32, heads=4, attn_chunks=2, scan_layers=False)


def op_names(cfg: ModelConfig) -> set[str]:
    model, tokens = build(cfg), jnp.zeros((2, cfg.context), jnp.int32)
    params = jax.eval_shape(model.init, jax.random.key(0), tokens)["params"]   # shapes suffice to lower
    loss = lambda p: jnp.mean(model.apply({"params": p}, tokens).astype(jnp.float32))
    text = jax.jit(jax.grad(loss)).lower(params).compile().as_text()
    return set(re.findall(r'op_name="([^"]+)"', text))


def cfg_name(arch: str) -> str:
    return {"gpt2": "GPT", "llama": "Llama"}[arch]


@pytest.mark.parametrize("arch,mlp", [("gpt2", "mlp/fc"), ("llama", "mlp/gate")])
def test_compiled_ops_name_their_block_and_part(arch, mlp):
    names = op_names(dataclasses.replace(BASE, arch=arch))
    for i in range(BASE.layers):
        for part in ("attn/attention_chunks", mlp):
            forward = [n for n in names if f"jvp({cfg_name(arch)})/blocks_{i}/{part}/" in n]
            backward = [n for n in names if f"transpose(jvp({cfg_name(arch)}))/blocks_{i}/{part}/" in n]
            assert forward and backward, (i, part, sorted(names)[:20])


def test_moe_ops_name_routing_and_experts():
    names = op_names(dataclasses.replace(BASE, experts=4, moe_every=2, moe_router="switch"))
    assert any("/moe/route_switch/" in n for n in names)
    assert any("/moe/experts_capacity/" in n for n in names)
