"""Interop with other ecosystems' checkpoints (no pickle: safetensors and JSON only).

``hf``: Hugging Face ``transformers`` directories (``config.json`` + ``model.safetensors``): GPT-2 in
``hf.py``; the other families in their own modules, dispatched by ``model_type`` (``hf.FAMILIES``):
``hf_llama`` (llama, mistral, mixtral -> ``lineage_jax.models.llama.Llama``), ...
"""
from lineage_jax.interop.hf import InteropError, convert_to_run_dir, load, save

__all__ = ["InteropError", "load", "save", "convert_to_run_dir"]
