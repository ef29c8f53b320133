"""lineage_jax: the innovations behind modern LLMs, each a small pure-functional JAX module."""
__version__ = "0.1.0"
