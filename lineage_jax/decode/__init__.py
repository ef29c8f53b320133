"""Decoding: the pure-function half of the inference lineage. Each module's docstring names its paper.

* ``filters``: greedy, temperature, top-k (Fan et al. 2018), top-p / nucleus (Holtzman et al. 2020), ``sample``;
* ``beam``: beam search with a length penalty (Wu et al. 2016; Hugging Face's sum-logprob / len^alpha);
* ``speculative``: speculative decoding (Leviathan et al. 2023; Chen et al. 2023);
* ``self_consistency``: majority vote over sampled reasoning paths (Wang et al. 2023).
"""
from lineage_jax.decode.beam import BeamState, beam_init, beam_search, beam_step
from lineage_jax.decode.filters import greedy, sample, temperature, top_k_filter, top_p_filter
from lineage_jax.decode.self_consistency import (extract_answer, majority_vote, make_arithmetic_problems,
                                                 self_consistency)
from lineage_jax.decode.speculative import (acceptance_rate, expected_tokens_per_call, speculative_generate,
                                            speculative_step)

__all__ = [
    "greedy", "sample", "temperature", "top_k_filter", "top_p_filter",
    "BeamState", "beam_init", "beam_search", "beam_step",
    "speculative_step", "speculative_generate", "acceptance_rate", "expected_tokens_per_call",
    "make_arithmetic_problems", "extract_answer", "majority_vote", "self_consistency",
]
