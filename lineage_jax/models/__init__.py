"""Models: Flax linen modules used purely, parameters annotated with logical axis names."""
from lineage_jax.models.gpt import GPT, count_params

__all__ = ["GPT", "count_params"]
