"""Image encoders: the Vision Transformer (``vit``), built from the project's own blocks."""
from lineage_jax.vision.vit import ViT, ViTConfig, patchify

__all__ = ["ViT", "ViTConfig", "patchify"]
