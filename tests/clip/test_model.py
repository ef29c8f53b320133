"""CLIP's towers: logical axis names on every parameter, unit-norm embeddings, the temperature's
initial value, EOS pooling that padding cannot reach, and dtype / param_dtype kept apart."""
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import parallel
from lineage_jax.clip.model import CLIP, CLIPConfig, init_params
from lineage_jax.config import ConfigError
from lineage_jax.vision import ViTConfig

CFG = CLIPConfig(vocab_size=12, context=6, text_width=32, text_layers=1, text_heads=2, embed_dim=16,
                 image=ViTConfig(image_size=16, patch_size=8, width=32, depth=1, heads=2, mlp_dim=64))


@pytest.fixture(scope="module")
def params():
    return jax.jit(lambda k: init_params(CFG, k))(jax.random.key(0))


def images(n=3):
    return jax.random.uniform(jax.random.key(1), (n, 16, 16, 3), minval=-1, maxval=1)


def test_every_param_has_logical_names(params):
    leaves = jax.tree.leaves(params, is_leaf=lambda x: isinstance(x, nn.Partitioned))
    assert leaves and all(isinstance(x, nn.Partitioned) for x in leaves)
    for x in leaves:
        parallel.check_names(x.names, "clip param")
        assert len(x.names) == x.value.ndim
    assert nn.unbox(params)["log_scale"].shape == ()


def test_embeddings_unit_norm_and_temperature(params):
    tokens = jnp.array([[3, 4, 1, 0, 0, 0], [5, 6, 7, 1, 0, 0], [8, 1, 0, 0, 0, 0]])
    img, txt, t = jax.jit(CLIP(CFG).apply)({"params": nn.unbox(params)}, images(), tokens)
    assert img.shape == txt.shape == (3, 16)
    np.testing.assert_allclose(np.linalg.norm(img, axis=1), 1, rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(txt, axis=1), 1, rtol=1e-5)
    assert 1 / float(jnp.exp(t)) == pytest.approx(0.07, rel=1e-6)


def test_eos_pooling_ignores_what_follows_eos(params):
    p = nn.unbox(params)
    enc = jax.jit(lambda tok: CLIP(CFG).apply({"params": p}, tok, method=CLIP.encode_text))
    out = enc(jnp.array([[3, 4, 1, 0, 0, 0], [3, 4, 1, 9, 9, 2], [5, 4, 1, 0, 0, 0]]))
    np.testing.assert_allclose(out[1], out[0], atol=1e-6)           # after <eos>: unseen (causal mask)
    assert float(jnp.abs(out[2] - out[0]).max()) > 1e-4              # before <eos>: seen


def test_dtype_and_param_dtype_are_separate():
    cfg = dataclasses.replace(CFG, dtype="bfloat16", param_dtype="float32")
    p = jax.eval_shape(lambda: nn.unbox(init_params(cfg, jax.random.key(0))))
    assert {x.dtype for x in jax.tree.leaves(p)} == {jnp.dtype("float32")}
    feats = jax.eval_shape(lambda p, i, t: CLIP(cfg).apply({"params": p}, i, t,
                                                           method=lambda m, i, t: (m.visual(i), m.text(t))),
                           p, images(1), jnp.array([[3, 1, 0, 0, 0, 0]]))
    assert all(f.dtype == jnp.bfloat16 for f in feats)


def test_bad_config_is_one_line():
    with pytest.raises(ConfigError, match="text_heads=3: must divide text_width=32"):
        dataclasses.replace(CFG, text_heads=3)
    with pytest.raises(ConfigError, match="clip.dtype='float8': allowed"):
        dataclasses.replace(CFG, dtype="float8")
