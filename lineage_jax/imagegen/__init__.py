"""Digit diffusion end to end: data, the judge (classifier + FID), a run (train, resume, sample), latent space."""
