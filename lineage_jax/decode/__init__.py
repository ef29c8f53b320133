"""Decoding: the pure-function half of the inference lineage (filters, beam search, speculative
decoding, self-consistency). Each module's docstring names its paper."""
from lineage_jax.decode.filters import greedy, sample, temperature, top_k_filter, top_p_filter

__all__ = ["greedy", "sample", "temperature", "top_k_filter", "top_p_filter"]
