"""One config system: YAML presets + ``section.key=value`` overrides into frozen dataclasses.

Everything here is plain Python (no JAX import), so the CLI can validate a config and report a bad
key in one line before JAX initialises or anything compiles.

    errors.py    UserError (the one line a user sees, exit 2) and its kinds: ConfigError, MissingFileError, …
    models.py    every model's config (GPT/Llama/MoE ``ModelConfig``, BERT, T5, Transformer)
    sections.py  data, optim, train, mesh, parallel and the whole ``Config``; each validates itself
    checks.py    ``validate``: the sections' own checks, then the cross-section ones, in one place
    load.py      presets, YAML, overrides, type coercion
"""
from lineage_jax.config.checks import cross_section, validate
from lineage_jax.config.errors import ConfigError, MissingFileError, MissingPackageError, UserError
from lineage_jax.config.load import REPO_CONFIGS, load_config, resolve_preset
from lineage_jax.config.models import (ARCHS, ATTN_IMPLS, BERT_ACTIVATIONS, DTYPES, MOE_BACKENDS, MOE_ROUTERS, REMAT,
                                       T5_FEED_FORWARD, BertConfig, ModelConfig, T5Config, TransformerConfig, ffn_dim)
from lineage_jax.config.sections import (FORMS, PRECISIONS, Config, DataConfig, MeshConfig, OptimConfig,
                                         ParallelConfig, TrainConfig)

__all__ = ["ARCHS", "ATTN_IMPLS", "BERT_ACTIVATIONS", "DTYPES", "FORMS", "MOE_BACKENDS", "MOE_ROUTERS", "PRECISIONS",
           "REMAT", "REPO_CONFIGS", "T5_FEED_FORWARD", "BertConfig", "Config", "ConfigError", "DataConfig",
           "MeshConfig", "MissingFileError", "MissingPackageError", "ModelConfig", "OptimConfig", "ParallelConfig", "T5Config", "TrainConfig",
           "TransformerConfig", "UserError", "cross_section", "ffn_dim", "load_config", "resolve_preset", "validate"]
