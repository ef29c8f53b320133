"""CLIP's objective (Radford et al. 2021, Figure 3's pseudocode) as pure functions.

Image and text embeddings I, T [B, E] are L2-normalised; the logits are s · I Tᵀ with a learned
scale s = exp(t) (the inverse temperature), t initialised to log(1/0.07) and clipped so that
s ≤ 100 ("to prevent scaling the logits by more than 100, which we found necessary to prevent
training instability", §2.5). The loss is the mean of the two cross-entropies, image -> text over
the rows and text -> image over the columns, the i-th pair being the positive.

``sharded_contrastive_loss``: each device of a data-parallel axis holds B/n pairs; it all-gathers
the other devices' embeddings (2 · B · E numbers per device), scores its own B/n rows against all B
columns, and the per-device sums are psum-ed. Every negative in the global batch is seen, which is
why CLIP's batch (32,768) spans devices; the gathered gradient flows back by reduce-scatter.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

INIT_TEMPERATURE = 0.07
MAX_LOGIT_SCALE = 100.0


def init_log_scale() -> jax.Array:
    """t₀ = log(1 / 0.07) ≈ 2.659 (transformers' ``logit_scale_init_value``)."""
    return jnp.asarray(math.log(1.0 / INIT_TEMPERATURE), jnp.float32)


def logit_scale(log_scale: jax.Array) -> jax.Array:
    """s = exp(t), t clipped to [0, log 100]: the scale the loss uses is never above 100 (nor below 1)."""
    return jnp.exp(jnp.clip(log_scale, 0.0, math.log(MAX_LOGIT_SCALE)))


def clamp_log_scale(log_scale: jax.Array) -> jax.Array:
    """The clip applied to the parameter after each update (as OpenAI's and open_clip's training loops do)."""
    return jnp.clip(log_scale, 0.0, math.log(MAX_LOGIT_SCALE))


def normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    """x / ‖x‖₂ over the last axis (computed in float32)."""
    x = x.astype(jnp.float32)
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps * eps))


def logits(image_emb: jax.Array, text_emb: jax.Array, log_scale: jax.Array) -> jax.Array:
    """logits_per_image [B_img, B_txt] = s · norm(I) norm(T)ᵀ (its transpose is logits_per_text)."""
    return logit_scale(log_scale) * normalize(image_emb) @ normalize(text_emb).T


def _xent_sum(scores: jax.Array, labels: jax.Array) -> jax.Array:
    """Σ_i -log softmax(scores_i)[labels_i]."""
    lse = jax.nn.logsumexp(scores, axis=-1)
    return jnp.sum(lse - jnp.take_along_axis(scores, labels[:, None], axis=-1)[:, 0])


def contrastive_loss(image_emb: jax.Array, text_emb: jax.Array, log_scale: jax.Array) -> jax.Array:
    """(CE(logits, arange) + CE(logitsᵀ, arange)) / 2 over a batch of B aligned pairs (CLIP Fig. 3)."""
    s = logits(image_emb, text_emb, log_scale)
    labels = jnp.arange(s.shape[0])
    return (_xent_sum(s, labels) + _xent_sum(s.T, labels)) / (2 * s.shape[0])


def sharded_contrastive_loss(mesh: jax.sharding.Mesh, axis: str = "data"):
    """``loss(image_emb, text_emb, log_scale)`` with the batch split over ``axis`` of ``mesh``
    (``jax.shard_map``): all-gather of both embeddings, local rows against global columns, psum.
    Equal to ``contrastive_loss`` on the whole batch (value and gradients)."""
    def body(img, txt, t):                                    # img, txt: this device's [B/n, E]
        n_local = img.shape[0]
        img, txt = normalize(img), normalize(txt)
        all_img = jax.lax.all_gather(img, axis, tiled=True)   # [B, E]: every device's pairs
        all_txt = jax.lax.all_gather(txt, axis, tiled=True)
        labels = jax.lax.axis_index(axis) * n_local + jnp.arange(n_local)   # my pairs' global columns
        s = logit_scale(t)
        local = _xent_sum(s * img @ all_txt.T, labels) + _xent_sum(s * txt @ all_img.T, labels)
        return jax.lax.psum(local, axis) / (2 * all_img.shape[0])

    return jax.shard_map(body, mesh=mesh, in_specs=(P(axis), P(axis), P()), out_specs=P())
