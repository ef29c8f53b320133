"""CLIP (Radford et al. 2021): the symmetric contrastive objective with a learned temperature,
on one device and batch-sharded across a data-parallel mesh (``loss``)."""
from lineage_jax.clip.loss import (
    INIT_TEMPERATURE, MAX_LOGIT_SCALE, clamp_log_scale, contrastive_loss, init_log_scale, logit_scale,
    logits, normalize, sharded_contrastive_loss)

__all__ = ["INIT_TEMPERATURE", "MAX_LOGIT_SCALE", "clamp_log_scale", "contrastive_loss", "init_log_scale",
           "logit_scale", "logits", "normalize", "sharded_contrastive_loss"]
