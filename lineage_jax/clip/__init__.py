"""CLIP (Radford et al. 2021): contrastive image-text pretraining on the captioned shapes.

``loss`` (the symmetric contrastive objective, one device and batch-sharded), ``text`` (the word
vocabulary), ``model`` (the two towers), ``train`` (the pure step), ``setup`` (its layout by the
project's strategies), ``zeroshot`` (prompt ensembles, the linear probe), ``filter`` (CLIP-score
filtering), ``infer`` (encoder and scorer), ``store`` / ``run`` (the run directory and its loop),
``settings`` (checked without JAX). The loss's names are re-exported here, imported on first use so
that ``lineage_jax.clip.settings`` can be read before JAX starts.
"""
import importlib

__all__ = ["INIT_TEMPERATURE", "MAX_LOGIT_SCALE", "clamp_log_scale", "contrastive_loss", "init_log_scale",
           "logit_scale", "logits", "normalize", "sharded_contrastive_loss"]


def __getattr__(name):
    if name in __all__:
        return getattr(importlib.import_module("lineage_jax.clip.loss"), name)
    raise AttributeError(f"module 'lineage_jax.clip' has no attribute {name!r}")
