"""The data layer: documents from a source (text files, a TFDS dataset, or the embedded
``stdlib_docs`` corpus), tokenized into cached streams, served by a resumable ``Sampler``;
datasets written by ``lineage data prepare`` are served by ``PackedSampler``."""
from lineage_jax.data.loader import PackedSampler, Sampler, TokenSplits, load_prepared, load_splits
from lineage_jax.data.stdlib_docs import StdlibDocs

__all__ = ["load_splits", "load_prepared", "TokenSplits", "Sampler", "PackedSampler", "StdlibDocs"]
