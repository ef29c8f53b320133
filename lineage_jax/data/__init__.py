"""The data layer: documents from a source (text files, a TFDS dataset, or the embedded
``stdlib_docs`` corpus), tokenized into cached streams, served by a resumable ``Sampler``."""
from lineage_jax.data.loader import Sampler, TokenSplits, load_splits
from lineage_jax.data.stdlib_docs import StdlibDocs

__all__ = ["load_splits", "TokenSplits", "Sampler", "StdlibDocs"]
