"""Models: Flax linen modules used purely, parameters annotated with logical axis names."""
from lineage_jax.config import ModelConfig
from lineage_jax.models import gpt, llama
from lineage_jax.models.gpt import GPT, PipelineParts, count_params
from lineage_jax.models.llama import Llama


def build(cfg: ModelConfig):
    """The decoder named by ``cfg.arch``: ``GPT`` (gpt2, optionally with MoE blocks) or ``Llama``.

    Both take ``(tokens, deterministic=True, cache=None, positions=None)`` and return logits
    [B, T, V] (``(logits, cache)`` with a cache), so training, sampling and parallel/ treat them alike.
    """
    if cfg.arch == "llama":
        return Llama(cfg)
    return GPT(cfg)


def pipeline_parts(cfg: ModelConfig) -> PipelineParts:
    """The decoder of ``cfg.arch`` cut into embedding, one stack unit and head, for the pipeline executor."""
    return (llama if cfg.arch == "llama" else gpt).pipeline_parts(cfg)


__all__ = ["GPT", "Llama", "PipelineParts", "build", "count_params", "pipeline_parts"]
