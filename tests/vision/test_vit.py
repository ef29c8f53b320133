"""ViT: the patch embedding equals transformers' ViTEmbeddings with the same weights; every
parameter has logical axis names; the class token sees every patch (attention is bidirectional)."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lineage_jax.config import ConfigError
from lineage_jax.vision import ViT, ViTConfig

CFG = ViTConfig(image_size=16, patch_size=4, channels=3, width=32, depth=1, heads=4, mlp_dim=64)


def init(cfg=CFG, batch=2):
    images = jax.random.normal(jax.random.key(0), (batch, cfg.image_size, cfg.image_size, cfg.channels))
    return images, jax.jit(ViT(cfg).init)(jax.random.key(1), images)["params"]   # jitted: one compile, not one per op


def test_patch_embedding_equals_transformers_vit_embeddings():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    hf_cfg = transformers.ViTConfig(image_size=16, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=1,
                                    num_attention_heads=4, intermediate_size=64)
    torch.manual_seed(0)
    emb = transformers.ViTModel(hf_cfg, add_pooling_layer=False).eval().embeddings
    with torch.no_grad():   # random non-zero class token and positions (HF initialises some to zero)
        emb.cls_token.normal_()
        emb.position_embeddings.normal_()
    images, params = init()
    sd = {k: v.detach().numpy() for k, v in emb.state_dict().items()}
    params = dict(params, cls=jnp.asarray(sd["cls_token"][0, 0]), pos=jnp.asarray(sd["position_embeddings"][0]),
                  patch={"kernel": jnp.asarray(sd["patch_embeddings.projection.weight"].transpose(2, 3, 1, 0)),
                         "bias": jnp.asarray(sd["patch_embeddings.projection.bias"])})
    ours = ViT(CFG).apply({"params": params}, images, method=ViT.embed)
    with torch.no_grad():
        theirs = emb(torch.from_numpy(np.asarray(images).transpose(0, 3, 1, 2).copy())).numpy()
    assert ours.shape == theirs.shape == (2, 17, 32)
    np.testing.assert_allclose(np.asarray(ours), theirs, rtol=1e-5, atol=1e-5)


def test_every_parameter_has_logical_axis_names_and_shapes_follow_the_config():
    images = jnp.zeros((2, 16, 16, 3))
    boxed = jax.jit(ViT(CFG).init)(jax.random.key(0), images)["params"]
    specs = jax.tree.leaves(nn.get_partition_spec(boxed), is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
    leaves = jax.tree.leaves(nn.unbox(boxed))
    assert len(specs) == len(leaves) and all(len(s) == leaf.ndim for s, leaf in zip(specs, leaves))
    p = nn.unbox(boxed)
    assert p["pos"].shape == (CFG.num_patches + 1, 32) and p["patch"]["kernel"].shape == (4, 4, 3, 32)
    assert jax.eval_shape(ViT(CFG).apply, {"params": p}, images).shape == (2, 32)
    head = ViTConfig(image_size=16, patch_size=4, width=32, depth=1, heads=4, mlp_dim=64, num_classes=10)
    _, hp = init(head)
    assert jax.eval_shape(ViT(head).apply, {"params": nn.unbox(hp)}, images).shape == (2, 10)


def test_class_token_sees_every_patch():
    images, params = init()
    params = nn.unbox(params)
    grad = jax.jit(jax.grad(lambda x: ViT(CFG).apply({"params": params}, x).sum()))(images)   # d(cls features)/d(pixels)
    per_patch = np.abs(np.asarray(grad)).reshape(2, 4, 4, 4, 4, 3).sum(axis=(2, 4, 5))
    assert (per_patch > 0).all()


@pytest.mark.parametrize("kw, msg", [(dict(image_size=30, patch_size=4), "patch_size=4: must divide"),
                                     (dict(width=30, heads=4), "heads=4: must divide"),
                                     (dict(pool="max"), "allowed cls, mean")])
def test_bad_config_is_one_line(kw, msg):
    with pytest.raises(ConfigError, match=msg):
        ViTConfig(**kw)
