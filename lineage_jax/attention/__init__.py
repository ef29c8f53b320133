"""The attention lineage: position encodings and multi/grouped/multi-query attention, pure functions."""
from lineage_jax.attention.mha import attention, causal_mask, combine_masks, padding_mask, segment_mask
from lineage_jax.attention.positions import (alibi_bias, alibi_slopes, half_to_interleaved,
                                             interleaved_to_half, rope_frequencies, rope_interleaved,
                                             rope_rotate_half, sinusoidal, t5_bias, t5_relative_bucket)

__all__ = ["attention", "causal_mask", "combine_masks", "padding_mask", "segment_mask",
           "alibi_bias", "alibi_slopes", "half_to_interleaved", "interleaved_to_half",
           "rope_frequencies", "rope_interleaved", "rope_rotate_half", "sinusoidal",
           "t5_bias", "t5_relative_bucket"]
