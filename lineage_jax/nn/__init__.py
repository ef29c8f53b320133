"""The building blocks every network here shares, importing nothing else of lineage_jax:

    hooks      logical-axis parameters and activations, the collective seams (``CollectiveHooks``)
    linear     backprop by hand for x·w (``linear``), the logically named ``Dense``
    norms      LayerNorm (hand-written backward), RMSNorm
    attention  causal attention in query chunks, attention over a KV cache
    mlp        the GELU and SwiGLU feed-forward networks
"""
from lineage_jax.nn.attention import cached_attention, causal_attention
from lineage_jax.nn.hooks import Axes, CollectiveHooks, collective_hooks, constrain, hooks, param
from lineage_jax.nn.linear import Dense, linear
from lineage_jax.nn.mlp import GeluMLP, SwiGLU
from lineage_jax.nn.norms import LayerNorm, RMSNorm, layer_norm

__all__ = ["Axes", "CollectiveHooks", "Dense", "GeluMLP", "LayerNorm", "RMSNorm", "SwiGLU", "cached_attention",
           "causal_attention", "collective_hooks", "constrain", "hooks", "layer_norm", "linear", "param"]
