"""The optimizer lineage: teaching versions (proved equal to optax) and the optax production path.

Teaching versions, pure functions written for a reader:

* ``adam.py``     Adam (Kingma & Ba 2015) and AdamW's decoupled weight decay (Loshchilov & Hutter 2019)
* ``clipping.py`` clipping by global norm (Pascanu et al. 2013)
* ``schedule.py`` linear warmup (Goyal et al. 2017) + cosine decay (Loshchilov & Hutter 2017)

Production path: ``make_optimizer`` builds the same thing from optax, which training uses.
``tests/optim/test_optim.py`` proves the two agree step by step.
"""
from __future__ import annotations

from typing import Any, Callable, Union

import optax

from lineage_jax.config import OptimConfig
from lineage_jax.optim.adam import AdamState, adam_init, adam_update, adamw_init, adamw_update
from lineage_jax.optim.clipping import clip_by_global_norm, global_norm
from lineage_jax.optim.schedule import warmup_cosine

__all__ = [
    "AdamState", "adam_init", "adam_update", "adamw_init", "adamw_update",
    "clip_by_global_norm", "global_norm", "warmup_cosine",
    "make_schedule", "make_optimizer",
]

DecayMask = Union[Any, Callable[[Any], Any]]


def make_schedule(cfg: OptimConfig, total_steps: int) -> optax.Schedule:
    """Warmup from 0 to ``cfg.lr`` over ``cfg.warmup_steps``, cosine to ``cfg.lr * cfg.min_lr_ratio``
    at ``total_steps``.

    A warmup longer than the run is clamped to it (a 10-step smoke run of a preset with 50 warmup
    steps warms up over its 10; the CLI says so). ``warmup_steps == total_steps`` (warm up for the
    whole run) optax rejects (it needs a positive decay length); then the decay is given one step
    past the end of the run, so every step actually taken (``0 .. total_steps - 1``) still sees the
    warmup ramp.
    """
    warmup = min(cfg.warmup_steps, total_steps)
    decay_steps = max(total_steps, warmup + 1)
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=cfg.lr, warmup_steps=warmup,
        decay_steps=decay_steps, end_value=cfg.lr * cfg.min_lr_ratio)


def make_optimizer(cfg: OptimConfig, total_steps: int, decay_mask: DecayMask = None
                   ) -> optax.GradientTransformation:
    """The production optimizer: [clip by global norm] -> AdamW(schedule), from optax.

    ``decay_mask``: a pytree of Python bools shaped like the params (or a prefix of them), or a
    callable ``params -> such a pytree``; True where weight decay applies. The model decides
    (typically: matrices decay; biases, norm scales and embeddings do not). None decays all.
    """
    parts = []
    if cfg.clip_norm > 0:
        parts.append(optax.clip_by_global_norm(cfg.clip_norm))
    parts.append(optax.adamw(make_schedule(cfg, total_steps), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                             weight_decay=cfg.weight_decay, mask=decay_mask))
    return optax.chain(*parts)
