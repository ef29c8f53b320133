"""LoRA as a parameter transform: selection by path and logical axes, B = 0 start equals the base
bit for bit, merge/unmerge, adapters' logical axes follow their kernels, optimiser state only for
adapters (multi_transform), QLoRA's merge over quantised kernels."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from lineage_jax import models
from lineage_jax.adapt import lora, quant
from lineage_jax.config import ConfigError, load_config


@functools.lru_cache(maxsize=None)
def tiny(arch="llama"):
    over = [f"model.arch={arch}", "model.layers=2", "model.width=64", "model.heads=4", "model.context=16",
            "model.scan_layers=true"]
    model = models.build(load_config("tiny", over).model)
    boxed = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 16), jnp.int32))
    return model, nn.unbox(boxed)["params"], nn.get_partition_spec(boxed)["params"]


def test_targets_select_by_name_and_axes_follow_the_kernel():
    _, params, specs = tiny()
    cfg = lora.LoraConfig(rank=4, targets=("q", "o", "mlp"))
    found = lora.targets(params, specs, cfg)
    assert sorted("/".join(p[1:-1]) for p in found) == ["attn/out", "attn/query", "mlp/down", "mlp/gate", "mlp/up"]
    ad_specs = lora.logical_specs(params, specs, cfg)["blocks"]
    # stacked layers lead; A keeps the input names, B the output names; the rank axis is unnamed
    assert ad_specs["attn"]["query"] == {"lora_a": P("layers", "embed", None), "lora_b": P("layers", None, "heads", "kv")}
    assert ad_specs["attn"]["out"] == {"lora_a": P("layers", "heads", "kv", None), "lora_b": P("layers", None, "embed")}
    assert ad_specs["mlp"]["down"] == {"lora_a": P("layers", "mlp", None), "lora_b": P("layers", None, "embed")}
    ad = lora.init(jax.random.key(1), params, specs, cfg)
    assert ad["blocks"]["attn"]["out"]["lora_a"].shape == (2, 4, 16, 4)
    assert ad["blocks"]["attn"]["out"]["lora_b"].shape == (2, 4, 64)


def test_bad_targets_are_one_line():
    with pytest.raises(ConfigError, match="allowed a comma list of q, k, v, o, mlp"):
        lora.parse_targets("q,attn")
    with pytest.raises(ConfigError, match="rank=0"):
        lora.LoraConfig(rank=0)
    _, params, specs = tiny()
    with pytest.raises(ConfigError, match="match no kernel"):
        lora.targets({"wte": params["wte"]}, {"wte": specs["wte"]}, lora.LoraConfig())


@pytest.mark.parametrize("arch", ["llama", pytest.param("gpt2", marks=pytest.mark.slow)])
def test_at_init_the_adapted_model_is_the_base_exactly(arch):
    model, params, specs = tiny(arch)
    ad = lora.init(jax.random.key(1), params, specs, lora.LoraConfig(rank=4))
    assert all(float(jnp.abs(x).max()) > 0 for x in jax.tree.leaves(ad) if x.ndim and x.shape[-1] == 4)
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 257, (2, 16)))
    apply = jax.jit(lambda p: model.apply({"params": p}, tokens))
    base, adapted = apply(params), apply(lora.merge(params, ad, lora.LoraConfig(rank=4)))
    np.testing.assert_array_equal(adapted, base)


def test_delta_is_the_papers_BA_and_merge_unmerge():
    _, params, specs = tiny()
    cfg = lora.LoraConfig(rank=4, alpha=8.0)
    ad = lora.init(jax.random.key(1), params, specs, cfg)
    ad = jax.tree.map(lambda x: x + 0.01 * jax.random.normal(jax.random.key(2), x.shape), ad)   # B ≠ 0
    a, b = ad["blocks"]["attn"]["out"]["lora_a"][1], ad["blocks"]["attn"]["out"]["lora_b"][1]
    A, B = a.reshape(-1, 4).T, b.reshape(4, -1).T            # the paper's A [r, in], B [out, r]
    merged = lora.merge(params, ad, cfg)
    W0 = params["blocks"]["attn"]["out"]["kernel"][1].reshape(-1, 64)
    W = merged["blocks"]["attn"]["out"]["kernel"][1].reshape(-1, 64)
    np.testing.assert_allclose(W - W0, (cfg.alpha / cfg.rank) * (B @ A).T, atol=1e-6)
    back = lora.unmerge(merged, ad, cfg)
    for x, y in zip(jax.tree.leaves(back), jax.tree.leaves(params)):
        np.testing.assert_allclose(x, y, atol=1e-6, rtol=0)
    # untouched leaves are the same arrays; with B = 0 the round trip is bit for bit
    assert merged["wte"] is params["wte"]
    zero = lora.init(jax.random.key(1), params, specs, cfg)
    for x, y in zip(jax.tree.leaves(lora.unmerge(lora.merge(params, zero, cfg), zero, cfg)), jax.tree.leaves(params)):
        np.testing.assert_array_equal(x, y)


@pytest.mark.slow   # the default suite's proof: tests/train/test_finetune.py::test_only_adapters_are_state_...
def test_only_adapters_get_optimiser_state_and_change():
    """multi_transform over {base, lora}: Adam moments exist for adapter leaves only; one step moves
    the adapters (B first: with B = 0 the gradient of A is zero) and leaves the base bit for bit."""
    model, params, specs = tiny()
    cfg = lora.LoraConfig(rank=4)
    tree = {"base": params, "lora": lora.init(jax.random.key(1), params, specs, cfg)}
    tx = lora.freeze_base(optax.adam(1e-2))
    opt = tx.init(tree)
    moments = [x for x in jax.tree.leaves(opt) if x.ndim]
    assert sum(x.size for x in moments) == 2 * lora.count(tree["lora"])
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 257, (2, 17)))

    def loss(t):
        logits = model.apply({"params": lora.merge(t["base"], t["lora"], cfg)}, tokens[:, :-1])
        return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()

    grads = jax.jit(jax.grad(loss))(tree)
    upd, _ = tx.update(grads, opt, tree)
    new = optax.apply_updates(tree, upd)
    for x, y in zip(jax.tree.leaves(new["base"]), jax.tree.leaves(tree["base"])):
        np.testing.assert_array_equal(x, y)
    q = new["lora"]["blocks"]["attn"]["query"]
    assert float(jnp.abs(q["lora_b"]).max()) > 0
    np.testing.assert_array_equal(q["lora_a"], tree["lora"]["blocks"]["attn"]["query"]["lora_a"])


def test_qlora_merge_dequantises_then_adds():
    _, params, specs = tiny()
    cfg = lora.LoraConfig(rank=4, targets=("q", "v"))
    base = quant.quantize_tree(params, lambda p, _: cfg.matches(p), "nf4")
    assert quant.is_quantized(base["blocks"]["attn"]["query"]["kernel"])
    assert not quant.is_quantized(base["blocks"]["attn"]["key"]["kernel"])
    ad = lora.init(jax.random.key(1), params, specs, cfg)
    merged = lora.merge(base, ad, cfg)
    np.testing.assert_array_equal(merged["blocks"]["attn"]["query"]["kernel"],
                                  quant.dequantize(base["blocks"]["attn"]["query"]["kernel"]))
    assert lora.count(base) == lora.count(params)
