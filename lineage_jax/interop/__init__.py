"""Interop with other ecosystems' checkpoints (no pickle: safetensors and JSON only).

``hf``: Hugging Face ``transformers`` GPT-2 directories (``config.json`` + ``model.safetensors``).
"""
from lineage_jax.interop.hf import InteropError, convert_to_run_dir, load, save

__all__ = ["InteropError", "load", "save", "convert_to_run_dir"]
