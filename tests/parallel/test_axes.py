"""Logical axis names are a checked vocabulary (parallel/axes.py): a misspelt name on a
parameter, in a rules table or in an activation constraint is an error naming it, and every
model's every parameter resolves under every named strategy."""
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest
from jax.sharding import PartitionSpec as P

import parallel
from lineage_jax.attention.xl import RelativeMultiHeadAttention
from lineage_jax.config import ModelConfig, load_config
from lineage_jax.models import build
from lineage_jax.models.bert import Bert, BertConfig
from lineage_jax.models.t5 import T5, T5Config
from lineage_jax.models.transformer import Transformer, TransformerConfig
from parallel.strategies import NAMED, strategy_named

X = jnp.zeros((2, 8), jnp.int32)
GPT = ModelConfig(vocab_size=61, context=16, layers=2, width=32, heads=4, attn_chunks=4)
LLAMA = ModelConfig(arch="llama", vocab_size=61, context=16, layers=2, width=48, heads=6, kv_heads=2, mlp_dim=72)
MODELS = {
    "gpt": lambda: (build(GPT), (X,)),
    "gpt_moe": lambda: (build(load_config("moe_tiny", []).model), (X,)),
    "llama": lambda: (build(LLAMA), (X,)),
    "mixtral": lambda: (build(dataclasses.replace(LLAMA, moe_every=1, experts=4, moe_k=2, moe_backend="dropless")),
                        (X,)),
    "bert": lambda: (Bert(BertConfig(vocab_size=77, width=36, heads=3, layers=2, mlp_dim=52, max_positions=24,
                                     type_vocab_size=3)), (X,)),
    "t5": lambda: (T5(T5Config(vocab_size=77, d_model=36, d_kv=10, d_ff=52, num_heads=3, num_layers=2,
                               num_decoder_layers=2, relative_attention_num_buckets=8,
                               relative_attention_max_distance=20)), (X, X[:, :5])),
    "transformer": lambda: (Transformer(TransformerConfig(vocab_size=23, d_model=32, heads=4, d_ff=48,
                                                          encoder_layers=2, decoder_layers=2, max_len=16)),
                            (X, X[:, :5])),
    "transformer_xl_layer": lambda: (RelativeMultiHeadAttention(heads=2, head_dim=4), (jnp.zeros((1, 3, 8)),)),
}


def logical_specs(name):
    model, args = MODELS[name]()
    return nn.get_partition_spec(jax.eval_shape(lambda: model.init(jax.random.key(0), *args)))["params"]


@pytest.mark.parametrize("model", list(MODELS))
def test_every_parameter_of_every_model_resolves_under_every_named_strategy(model):
    specs = logical_specs(model)
    leaves = jax.tree_util.tree_leaves_with_path(specs, is_leaf=lambda s: isinstance(s, P))
    assert leaves
    for path, spec in leaves:
        parallel.check_names(tuple(spec), jax.tree_util.keystr(path))
    mesh = parallel.make_mesh({"data": -1})
    for name in NAMED:
        shape, strategy = strategy_named(name, len(jax.devices()))
        for table in strategy.tables().values():
            shardings = parallel.logical_to_sharding(specs, mesh, table)
            assert len(jax.tree.leaves(shardings)) == len(leaves), name


def test_a_misspelt_parameter_axis_names_the_parameter_and_the_nearest_name():
    specs = {"blocks": {"mlp": {"fc": {"kernel": P("layers", "embd", "mlp")}}}}
    _, strategy = strategy_named("ZeRO-3", 8)
    with pytest.raises(parallel.AxisNameError, match=r"\['blocks'\]\['mlp'\]\['fc'\]\['kernel'\].*'embd'.*'embed'"):
        parallel.logical_to_sharding(specs, parallel.make_mesh({"fsdp": -1}), strategy.params)


def test_a_rules_table_with_an_unknown_name_is_refused():
    with pytest.raises(parallel.AxisNameError, match="'head'.*did you mean 'heads'"):
        parallel.complete((("head", "tensor"),))
    table = parallel.complete(parallel.DATA_PARALLEL)
    with pytest.raises(parallel.AxisNameError, match="strategy table 'grads'.*'mpl'"):
        parallel.Strategy(compute=table, params=table, opt_state=table, grads=table + (("mpl", "tensor"),))


def test_every_table_lists_every_name():
    for name in NAMED:
        _, strategy = strategy_named(name, 8)
        for table in strategy.tables().values():
            assert [n for n, _ in table if n in parallel.LOGICAL_AXES] == [n for n, _ in table]
            assert {n for n, _ in table} == set(parallel.LOGICAL_AXES)
    with pytest.raises(parallel.MeshError, match="no rule for logical axes .*seq"):
        parallel.Strategy(*(parallel.DATA_PARALLEL,) * 4)


def test_an_unknown_activation_name_raises_where_the_rules_are_installed():
    mesh = parallel.make_mesh({"data": -1})
    strategy = parallel.strategy_for(dict(mesh.shape))
    with jax.set_mesh(mesh), parallel.axis_rules(strategy.compute):
        jax.jit(lambda x: nn.with_logical_constraint(x, ("batch", "length"))).lower(jnp.zeros((8, 4)))
        with pytest.raises(parallel.AxisNameError, match="activation.*'lenght'.*did you mean 'length'"):
            jax.jit(lambda x: nn.with_logical_constraint(x, ("batch", "lenght"))).lower(jnp.zeros((8, 4)))
