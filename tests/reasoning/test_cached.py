"""The KV-cached sampler is the recomputing one: its forward is TinyLM's (logits equal, with and without MLPs
and norms), and on a ragged batch it draws the same tokens with the same log-probabilities, masks and lengths,
greedy and sampled (the same key splits)."""
import jax
import numpy as np
import pytest

from lineage_jax.reasoning import arith, cached, sample, tiny

CFG = tiny.TinyConfig(vocab=arith.VOCAB.size, context=20, d=16, heads=2, layers=2)


@pytest.fixture(scope="module")
def model():
    m, params = tiny.init(CFG, jax.random.key(3))
    return m, params


@pytest.mark.parametrize("mlp,norm", [(True, True), (False, False)])
def test_forward_is_tinylms(mlp, norm):
    cfg = tiny.TinyConfig(vocab=arith.VOCAB.size, context=12, d=16, heads=2, layers=2, mlp=mlp, norm=norm)
    m, params = tiny.init(cfg, jax.random.key(1))
    tokens = jax.random.randint(jax.random.key(2), (3, 12), 1, arith.VOCAB.size)
    logits, kv = jax.jit(cached.forward, static_argnums=0)(cfg, params, tokens)
    np.testing.assert_allclose(logits, jax.jit(m.apply)({"params": params}, tokens), rtol=1e-5, atol=1e-5)
    assert kv["k"].shape == (2, 3, 2, 12, 8)


@pytest.mark.parametrize("greedy", [pytest.param(True, marks=pytest.mark.slow), False])   # greedy: the same loop
def test_cached_sampling_equals_recomputing(model, greedy):
    m, params = model
    tokens, lengths = arith.encode_prompts(["7+8=", "57+68=", "1=", "123*4="], CFG.context)
    kw = dict(max_new=12, end_id=arith.VOCAB.end_id, temperature=0.8, greedy=greedy)
    ref = sample.sample(lambda p, t: m.apply({"params": p}, t), params, tokens, lengths, jax.random.key(7), **kw)
    out = cached.sample(CFG, params, tokens, lengths, jax.random.key(7), **kw)
    np.testing.assert_array_equal(out["tokens"], ref["tokens"])
    np.testing.assert_array_equal(out["mask"], ref["mask"])
    np.testing.assert_array_equal(out["lengths"], ref["lengths"])
    np.testing.assert_allclose(out["logprobs"], ref["logprobs"], rtol=1e-5, atol=1e-5)
    assert int(np.asarray(ref["lengths"]).sum()) > 8          # something was generated
