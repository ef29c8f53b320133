"""The models reach every attention kernel through one interface (``layers.attend_causal``):
``model.attn_impl`` switches GPT-2 and Llama from query-chunked attention to blockwise
(Flash) attention or a backend kernel without changing the function computed."""
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lineage_jax.config import ConfigError, ModelConfig, load_config
from lineage_jax.models import build

GPT2 = ModelConfig(vocab_size=50, context=32, layers=2, width=32, heads=4, attn_chunks=2)
LLAMA = dataclasses.replace(GPT2, arch="llama", kv_heads=2, tied=False, mlp_dim=40)


def loss_and_grads(cfg, params, tokens):
    """Logits and the gradient of a loss through attention, jitted (one compile instead of an eager
    dispatch per op, most of this file's time); each base model's reference computed once."""
    key = (cfg, id(params), id(tokens))
    if key not in _DONE:
        model = build(cfg)
        loss = lambda p: jnp.mean(jax.nn.log_softmax(model.apply({"params": p}, tokens[:, :-1]))[..., 0] ** 2)
        _DONE[key] = jax.jit(lambda p: (model.apply({"params": p}, tokens), jax.grad(loss)(p)))(params)
    return _DONE[key]


_DONE: dict = {}
_BASE: dict = {}


def base_inputs(base):
    """Tokens and initial parameters of a base model, made once per model (the reference reuses them)."""
    if base not in _BASE:
        tokens = jax.random.randint(jax.random.key(0), (2, 32), 0, 50)
        _BASE[base] = tokens, nn.unbox(jax.jit(build(base).init)(jax.random.key(1), tokens))["params"]
    return _BASE[base]


# flash on GPT-2 runs with -m slow: flash-llama-gqa (the same kernel, with grouped KV heads) stays default.
_slow = pytest.mark.slow
@pytest.mark.parametrize("impl, base", [
    pytest.param("flash", GPT2, id="flash-gpt2", marks=_slow), pytest.param("flash", LLAMA, id="flash-llama-gqa"),
    pytest.param("xla", GPT2, id="xla-gpt2"), pytest.param("xla", LLAMA, id="xla-llama-gqa"),
    pytest.param("auto", GPT2, id="auto-gpt2", marks=_slow), pytest.param("auto", LLAMA, id="auto-llama-gqa", marks=_slow)])
def test_kernels_compute_the_same_model(impl, base):
    tokens, params = base_inputs(base)
    ref_logits, ref_grads = loss_and_grads(base, params, tokens)
    logits, grads = loss_and_grads(dataclasses.replace(base, attn_impl=impl), params, tokens)
    np.testing.assert_allclose(logits, ref_logits, rtol=1e-5, atol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), grads, ref_grads)


@pytest.mark.slow   # flash = chunks on one device stays default (test_kernels_compute_the_same_model)
def test_flash_trains_data_parallel_like_chunks():
    from lineage_jax.train.setup import build as setup_build
    over = ["model.context=32", "model.width=32", "model.heads=2", "model.layers=2", "train.batch_size=8"]
    rng = np.random.default_rng(0)
    batches = [rng.integers(0, 257, (8, 33)) for _ in range(3)]
    losses = {}
    for impl in ("chunks", "flash"):
        s = setup_build(load_config("tiny", over + [f"model.attn_impl={impl}"]))
        state = s.init_state(jax.random.key(0))
        out = []
        for b in batches:
            state, m = s.train_step(state, s.put_batch(b))
            out.append(float(m["loss"]))
        losses[impl] = out
    np.testing.assert_allclose(losses["flash"], losses["chunks"], rtol=1e-5)


def test_bad_attn_impl_is_one_line():
    with pytest.raises(ConfigError, match="allowed chunks, auto"):
        load_config("tiny", ["model.attn_impl=fast"])
    with pytest.raises(ConfigError, match="no attention dropout"):
        load_config("tiny", ["model.attn_impl=flash", "model.dropout=0.1"])
