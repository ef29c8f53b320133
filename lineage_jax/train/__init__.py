"""Training: the pure step, its state, checkpoints, and the loop that drives them."""
