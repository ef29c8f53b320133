"""CLIP's training step as a pure function of (state, batch), and its optimiser.

The step computes both towers on the whole batch, the symmetric contrastive loss over all B × B
pairs (``clip.loss.contrastive_loss``), one AdamW update (decoupled weight decay on matmul kernels
only, as the language models here), and then clips the temperature parameter so that the scale
stays ≤ 100 (Radford et al. 2021 §2.5; open_clip clamps after each step the same way). Under a
data-parallel mesh GSPMD inserts the all-gather of the embeddings that the explicit
``sharded_contrastive_loss`` writes out, so the step on 8 devices is the step on one.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from lineage_jax.clip.loss import clamp_log_scale, contrastive_loss, logit_scale
from lineage_jax.clip.model import CLIP
from lineage_jax.train.step import decay_mask


class ClipState(NamedTuple):
    step: jax.Array
    params: Any
    opt_state: Any


def to_unit_range(images: jax.Array) -> jax.Array:
    """uint8 pixels [0, 255] -> floats in [-1, 1] (what the towers take)."""
    return images.astype(jnp.float32) / 127.5 - 1.0


def make_optimizer(lr: float = 1e-3, steps: int = 1000, warmup: int = 50, weight_decay: float = 0.1,
                   b2: float = 0.98, eps: float = 1e-6) -> optax.GradientTransformation:
    """AdamW with linear warm-up and cosine decay (CLIP: β₂ = 0.98, ε = 1e-6, decay 0.2 on weights); clipped at norm 1."""
    schedule = optax.warmup_cosine_decay_schedule(0.0, lr, min(warmup, max(steps - 1, 0)), max(steps, 1), lr * 0.1)
    return optax.chain(optax.clip_by_global_norm(1.0),
                       optax.adamw(schedule, b1=0.9, b2=b2, eps=eps, weight_decay=weight_decay, mask=decay_mask))


def loss_fn(model: CLIP, params, batch: dict) -> tuple[jax.Array, dict]:
    img, txt, t = model.apply({"params": params}, to_unit_range(batch["image"]), batch["tokens"])
    loss = contrastive_loss(img, txt, t)
    sims = img @ txt.T
    return loss, {"loss": loss, "logit_scale": logit_scale(t),
                  "pair_cos": jnp.mean(jnp.diagonal(sims)), "batch_acc": jnp.mean(jnp.argmax(sims, 1) == jnp.arange(len(sims)))}


def make_train_step(model: CLIP, tx: optax.GradientTransformation):
    """``step(state, batch{"image": uint8 [B, H, W, C], "tokens": int32 [B, T]}) -> (state, metrics)``."""
    def step(state: ClipState, batch: dict):
        (_, metrics), grads = jax.value_and_grad(lambda p: loss_fn(model, p, batch), has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        params = {**params, "log_scale": clamp_log_scale(params["log_scale"])}
        metrics["grad_norm"] = optax.global_norm(grads)
        return ClipState(state.step + 1, params, opt_state), metrics
    return step


def init_state(params, tx: optax.GradientTransformation) -> ClipState:
    return ClipState(jnp.zeros((), jnp.int32), params, tx.init(params))
