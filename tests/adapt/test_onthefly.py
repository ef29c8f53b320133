"""LoRA on the fly (x·W + ((x·A)·B)·α/r at each adapted Dense, W frozen) equals the merged form W + ΔW:
logits and adapter gradients on GPT-2 (unscanned, biases) and Llama (scanned stack) shapes, over a base
whose adapted kernels are partly NF4 (QLoRA's qmatmul path) and partly plain (the intercepted Dense)."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lineage_jax import models
from lineage_jax.adapt import lora, onthefly, quant
from lineage_jax.config import ConfigError, load_config
from lineage_jax.train.finetune import Adapted

T = 8
CFG = lora.LoraConfig(rank=3, alpha=5.0)
QUANTISED = ("query", "fc", "gate")     # these adapted kernels NF4, the others plain


@functools.lru_cache(maxsize=None)
def tiny(arch):
    over = [f"model.arch={arch}", "model.layers=2", "model.width=32", "model.heads=2", f"model.context={T}",
            f"model.scan_layers={str(arch == 'llama').lower()}", "model.vocab_size=40", "model.vocab_multiple=8"]
    model = models.build(load_config("tiny", over).model)
    boxed = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, T), jnp.int32))
    params, specs = nn.unbox(boxed)["params"], nn.get_partition_spec(boxed)["params"]
    ad = lora.init(jax.random.key(1), params, specs, CFG)
    ad = jax.tree.map(lambda x: x + 0.1 * jax.random.normal(jax.random.key(2), x.shape), ad)   # B ≠ 0
    base = quant.quantize_tree(params, lambda p, _: CFG.matches(p) and p[-2] in QUANTISED, "nf4")
    return model, params, base, ad


def both_forms(model, base, ad):
    """(loss, logits, adapter gradients) of the merged and the on-the-fly forms, from one compiled program."""
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 40, (2, T + 1)))

    def one(mode):
        def loss(a):
            logits = Adapted(model, base, CFG, mode).apply({"params": a}, tokens[:, :-1])
            nll = jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, tokens[:, 1:, None], -1)[..., 0]
            return nll.mean(), logits
        (value, logits), grads = jax.value_and_grad(loss, has_aux=True)(ad)
        return value, logits, grads
    return jax.jit(lambda: (one("merged"), one("onthefly")))()


# GPT-2 (unscanned blocks, biases through the quantised path) under -m slow; Llama (scanned) is the default case
@pytest.mark.parametrize("arch", [pytest.param("gpt2", marks=pytest.mark.slow), "llama"])
def test_onthefly_equals_merged_logits_and_grads(arch):
    model, params, base, ad = tiny(arch)
    kernels = [x for x in jax.tree.leaves(base, is_leaf=quant.is_quantized) if quant.is_quantized(x)]
    n_adapted = sum(1 for p, _ in jax.tree_util.tree_leaves_with_path(ad) if p[-1].key == "lora_a")
    assert 0 < len(kernels) < n_adapted                          # both paths: qmatmul and the intercepted Dense
    (l_m, logits_m, g_m), (l_o, logits_o, g_o) = both_forms(model, base, ad)
    assert np.abs(np.asarray(logits_m) - np.asarray(model.apply({"params": params}, np.zeros((2, T), int)))).max() > 0
    np.testing.assert_allclose(logits_o, logits_m, atol=2e-6, rtol=0)
    np.testing.assert_allclose(l_o, l_m, rtol=1e-6)
    leaves_m, leaves_o = jax.tree.leaves(g_m), jax.tree.leaves(g_o)
    assert jax.tree.structure(g_m) == jax.tree.structure(g_o) == jax.tree.structure(ad)
    for x, y in zip(leaves_o, leaves_m):
        assert float(jnp.abs(y).max()) > 0                       # every adapter gets a gradient (B ≠ 0)
        np.testing.assert_allclose(x, y, atol=1e-5 * float(jnp.abs(y).max()), rtol=0)


def test_lora_term_is_the_papers_BAx_and_bad_mode_is_one_line():
    rng = np.random.default_rng(0)
    x, a, b = rng.normal(size=(2, 5, 3, 4)), rng.normal(size=(3, 4, 2)), rng.normal(size=(2, 6))  # in [H=3, K=4]
    got = onthefly.lora_term(jnp.asarray(x), jnp.asarray(a), jnp.asarray(b), 2, 0.5, jnp.float32)
    A, B = a.reshape(12, 2).T, b.T                              # the paper's A [r, in], B [out, r]
    want = 0.5 * np.einsum("or,ri,bti->bto", B, A, x.reshape(2, 5, 12))
    np.testing.assert_allclose(got, want, rtol=1e-5)
    with pytest.raises(ConfigError, match="allowed onthefly, merged"):
        Adapted(None, None, CFG, "fused")
