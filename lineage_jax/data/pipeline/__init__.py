"""The data pipeline's stages as pure functions over documents: deduplication (exact and
MinHash/LSH), Gopher/C4 quality heuristics, and packing with segment ids, BERT masking and
T5 span corruption. Each module names its papers."""
from lineage_jax.data.pipeline.dedup import exact_dedup, minhash_signature, lsh_candidates, near_dedup
from lineage_jax.data.pipeline.packing import (bert_mask, pack, packed_targets, sentinel_span_corrupt,
                                               sentinel_span_restore, tokenize_and_pack)
from lineage_jax.data.pipeline.quality import QualityConfig, quality_filter, quality_reasons

__all__ = ["exact_dedup", "minhash_signature", "lsh_candidates", "near_dedup", "QualityConfig",
           "quality_reasons", "quality_filter", "pack", "tokenize_and_pack", "packed_targets", "bert_mask",
           "sentinel_span_corrupt", "sentinel_span_restore"]
