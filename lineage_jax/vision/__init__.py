"""Image networks: the Vision Transformer (``vit``), built from the project's own blocks, and the
small U-Net ε-model for diffusion (``unet``)."""
from lineage_jax.vision.unet import UNet, UNetConfig, eps_model, timestep_embedding
from lineage_jax.vision.vit import ViT, ViTConfig, patchify

__all__ = ["UNet", "UNetConfig", "eps_model", "ViT", "ViTConfig", "patchify", "timestep_embedding"]
