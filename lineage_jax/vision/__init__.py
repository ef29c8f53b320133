"""Image networks: the Vision Transformer (``vit``), built from the project's own blocks, the small U-Net
ε-model for diffusion (``unet``), latent diffusion's KL autoencoder (``autoencoder``), the digit classifier
that scores samples (``classifier``), sample grids as PNGs (``grid``)."""
from lineage_jax.vision.autoencoder import Autoencoder, AutoencoderConfig
from lineage_jax.vision.classifier import ClassifierConfig, DigitClassifier
from lineage_jax.vision.grid import image_grid, save_png
from lineage_jax.vision.unet import UNet, UNetConfig, eps_model, timestep_embedding
from lineage_jax.vision.vit import ViT, ViTConfig, patchify

__all__ = ["Autoencoder", "AutoencoderConfig", "ClassifierConfig", "DigitClassifier", "UNet", "UNetConfig", "ViT",
           "ViTConfig", "eps_model", "image_grid", "patchify", "save_png", "timestep_embedding"]
