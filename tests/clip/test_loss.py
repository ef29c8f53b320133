"""CLIP's loss equals a written-out reference and transformers' CLIP loss on identical embeddings;
the temperature starts at 0.07 and the scale never exceeds 100; the batch-sharded loss over a
data-parallel mesh of 8 devices equals one device, value and gradients."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lineage_jax import clip


def embeddings(B=16, E=8, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((B, E)).astype(np.float32), rng.standard_normal((B, E)).astype(np.float32)


def reference(img, txt, t):
    """Written out in float64: normalise, cosine similarities, two cross-entropies, averaged."""
    img = img / np.linalg.norm(img, axis=1, keepdims=True)
    txt = txt / np.linalg.norm(txt, axis=1, keepdims=True)
    s = min(math.exp(t), 100.0) * img.astype(np.float64) @ txt.astype(np.float64).T
    def xent(m):
        return np.mean([np.log(np.exp(m[i]).sum()) - m[i, i] for i in range(len(m))])
    return (xent(s) + xent(s.T)) / 2


@pytest.mark.parametrize("t", [math.log(1 / 0.07), 0.5, math.log(100.0)])
def test_loss_equals_written_out_reference(t):
    img, txt = embeddings()
    np.testing.assert_allclose(float(clip.contrastive_loss(img, txt, jnp.float32(t))), reference(img, txt, t),
                               rtol=1e-5)


def test_loss_equals_transformers_clip_loss():
    torch = pytest.importorskip("torch")
    modeling = pytest.importorskip("transformers.models.clip.modeling_clip")
    transformers = pytest.importorskip("transformers")
    hf_loss = getattr(modeling, "image_text_contrastive_loss", None) or modeling.clip_loss
    t0 = transformers.CLIPConfig().logit_scale_init_value
    np.testing.assert_allclose(float(clip.init_log_scale()), t0, rtol=1e-4)   # both: log(1/0.07)
    img, txt = embeddings(B=12, E=6, seed=3)
    i, x = torch.from_numpy(img), torch.from_numpy(txt)
    i, x = i / i.norm(dim=-1, keepdim=True), x / x.norm(dim=-1, keepdim=True)
    logits_per_text = x @ i.T * torch.tensor(t0).exp()                         # as CLIPModel.forward
    theirs = float(hf_loss(logits_per_text))
    np.testing.assert_allclose(float(clip.contrastive_loss(img, txt, jnp.float32(t0))), theirs, rtol=1e-5)


def test_temperature_clip_holds():
    assert np.isclose(1 / float(clip.logit_scale(clip.init_log_scale())), 0.07, rtol=1e-6)
    assert float(clip.logit_scale(jnp.float32(10.0))) == pytest.approx(100.0, rel=1e-5)   # e^10 clipped to 100
    assert float(clip.clamp_log_scale(jnp.float32(10.0))) == pytest.approx(math.log(100), rel=1e-6)
    img, txt = embeddings()
    # beyond the clip the loss no longer moves with t, and its gradient in t is zero
    assert float(clip.contrastive_loss(img, txt, jnp.float32(8.0))) == float(clip.contrastive_loss(img, txt, jnp.float32(9.0)))
    assert float(jax.grad(clip.contrastive_loss, argnums=2)(img, txt, jnp.float32(8.0))) == 0.0
    assert float(jax.grad(clip.contrastive_loss, argnums=2)(img, txt, clip.init_log_scale())) != 0.0


def test_aligned_pairs_have_low_loss():
    img, _ = embeddings()
    noisy = img + 0.01 * embeddings(seed=9)[0]
    assert float(clip.contrastive_loss(img, noisy, clip.init_log_scale())) < 0.1 < \
        float(clip.contrastive_loss(img, embeddings(seed=5)[1], clip.init_log_scale()))


def test_sharded_loss_over_8_devices_equals_one_device():
    assert jax.device_count() == 8
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
    img, txt = embeddings(B=32, E=8, seed=1)
    t = jnp.float32(3.0)
    sharded = jax.jit(jax.value_and_grad(clip.sharded_contrastive_loss(mesh), argnums=(0, 1, 2)))
    single = jax.jit(jax.value_and_grad(clip.contrastive_loss, argnums=(0, 1, 2)))
    (v8, g8), (v1, g1) = sharded(img, txt, t), single(img, txt, t)
    np.testing.assert_allclose(float(v8), float(v1), rtol=1e-6)
    for a, b in zip(g8, g1):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)
    # a per-device loss (negatives from its own shard only) is a different, easier objective
    local = np.mean([float(clip.contrastive_loss(img[i:i + 4], txt[i:i + 4], t)) for i in range(0, 32, 4)])
    assert local < float(v1)
