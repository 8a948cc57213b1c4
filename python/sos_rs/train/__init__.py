"""Training as a product: configuration, the loop, checkpoints, evaluation and metrics."""
