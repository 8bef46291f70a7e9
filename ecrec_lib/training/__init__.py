"""Training of the two-tower model: data assembly, losses, the training loop."""
