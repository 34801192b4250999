"""Training stack: the Mask2Former architecture, checkpoints, data, losses, trainer and evaluation."""
