"""Image networks: the Vision Transformer (``vit``), built from the project's own blocks, and the
small U-Net ε-model for diffusion (``unet``), sample grids as PNGs (``grid``)."""
from lineage_jax.vision.grid import image_grid, save_png
from lineage_jax.vision.unet import UNet, UNetConfig, eps_model, timestep_embedding
from lineage_jax.vision.vit import ViT, ViTConfig, patchify

__all__ = ["UNet", "UNetConfig", "ViT", "ViTConfig", "eps_model", "image_grid", "patchify", "save_png",
           "timestep_embedding"]
