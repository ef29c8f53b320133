"""Decoding: the inference lineage, from logits filters to serving a trained run. Each module's docstring
names its paper.

* ``args``: the one set of rules for sampling arguments (``check``, ``SamplingError``);
* ``filters``: greedy, temperature, top-k (Fan et al. 2018), top-p / nucleus (Holtzman et al. 2020), the one
  filter chain ``filter_logits`` and ``sample``;
* ``beam``: beam search with a length penalty (Wu et al. 2016; Hugging Face's sum-logprob / len^alpha);
* ``kv_cache``, ``paged``, ``batching``: the KV cache, PagedAttention and continuous batching;
* ``speculative``, ``cached_lm``: speculative decoding (Leviathan et al. 2023; Chen et al. 2023), with KV caches;
* ``self_consistency``: majority vote over sampled reasoning paths (Wang et al. 2023);
* ``load``, ``generation``, ``prompts``: a run loaded for inference only; generating from it, one prompt or many
  (each result says why it stopped and how much of its prompt it kept: ``prompts``' docstring).

Every path draws only ids below ``vocab_limit`` (the tokenizer's vocabulary size, passed explicitly),
so a model whose ``vocab_size`` is padded past the tokenizer's never emits an id the tokenizer cannot decode.

The names below load their module on first use, so ``lineage_jax.decode.args`` imports without JAX
(the CLI checks its flags before JAX starts).
"""
import importlib

_MODULE = {
    "SamplingError": "args",
    "BeamState": "beam", "beam_init": "beam", "beam_search": "beam", "beam_step": "beam",
    "CachedLM": "cached_lm", "speculative_sample": "cached_lm",
    "filter_logits": "filters", "greedy": "filters", "sample": "filters", "temperature": "filters",
    "top_k_filter": "filters", "top_p_filter": "filters", "vocab_mask": "filters",
    "extend_sliding": "generation", "generate": "generation", "generate_beam": "generation",
    "generate_recompute": "generation", "generate_text": "generation", "stop_reason": "generation",
    "load_for_inference": "load",
    "sample_prompts": "prompts", "serve_prompts": "prompts", "speculative_prompts": "prompts",
    "extract_answer": "self_consistency", "majority_vote": "self_consistency",
    "make_arithmetic_problems": "self_consistency",
    "acceptance_rate": "speculative", "expected_tokens_per_call": "speculative",
    "speculative_generate": "speculative", "speculative_step": "speculative",
}
__all__ = list(_MODULE)


def __getattr__(name: str):
    if name not in _MODULE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_MODULE[name]}"), name)
